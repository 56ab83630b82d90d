"""Catalog queries about usage: container samples and the `usage` rows."""

import dataclasses
import datetime as dt
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import distinct_on, insert

from rp9_pipelines.catalog.tables import execution_tally, resource_samples, tenants, usage
from rp9_pipelines.domain.usage import DayUsage, Sample

USAGE_FIELDS = tuple(field.name for field in dataclasses.fields(DayUsage))
# How far back (and ahead) of a window to look for the samples that frame it.
SAMPLE_FRAME = dt.timedelta(days=2)


@dataclass(frozen=True)
class SampleRow:
    tenant_id: uuid.UUID
    container_name: str
    sampled_at: dt.datetime
    cpu_total_ns: int
    memory_bytes: int


def insert_samples(connection: sa.Connection, rows: Sequence[SampleRow]) -> int:
    """Idempotent: a sample already recorded (same container and instant) is left as is."""
    if not rows:
        return 0
    statement = (
        insert(resource_samples)
        .values([row.__dict__ for row in rows])
        .on_conflict_do_nothing(constraint="uq_resource_samples_sample")
        .returning(resource_samples.c.id)
    )
    return len(connection.execute(statement).all())


def prune_samples(connection: sa.Connection, before: dt.datetime) -> int:
    result = connection.execute(
        sa.delete(resource_samples).where(resource_samples.c.sampled_at < before)
    )
    return int(result.rowcount or 0)


def samples_framing(
    connection: sa.Connection, tenant_id: uuid.UUID, start: dt.datetime, end: dt.datetime
) -> list[Sample]:
    """The tenant's samples in [start, end), plus, per container, the last one before and the
    first one after (within two days), so the intervals across the edges count in part."""
    rs = resource_samples.c
    inside = sa.select(rs.container_name, rs.sampled_at, rs.cpu_total_ns, rs.memory_bytes).where(
        rs.tenant_id == tenant_id, rs.sampled_at >= start, rs.sampled_at < end
    )
    before = (
        sa.select(rs.container_name, rs.sampled_at, rs.cpu_total_ns, rs.memory_bytes)
        .where(
            rs.tenant_id == tenant_id, rs.sampled_at < start, rs.sampled_at >= start - SAMPLE_FRAME
        )
        .order_by(rs.container_name, rs.sampled_at.desc())
        .ext(distinct_on(rs.container_name))
    )
    after = (
        sa.select(rs.container_name, rs.sampled_at, rs.cpu_total_ns, rs.memory_bytes)
        .where(rs.tenant_id == tenant_id, rs.sampled_at >= end, rs.sampled_at < end + SAMPLE_FRAME)
        .order_by(rs.container_name, rs.sampled_at)
        .ext(distinct_on(rs.container_name))
    )
    rows = connection.execute(
        sa.union_all(inside, before.subquery().select(), after.subquery().select())
    )
    return [Sample(row[0], row[1], int(row[2]), int(row[3])) for row in rows]


def get_usage(
    connection: sa.Connection, tenant_id: uuid.UUID, day: dt.date
) -> dict[str, Any] | None:
    row = connection.execute(
        sa.select(usage).where(usage.c.tenant_id == tenant_id, usage.c.day == day)
    ).first()
    return dict(row._mapping) if row else None


def upsert_usage(
    connection: sa.Connection, tenant_id: uuid.UUID, day: dt.date, figures: DayUsage
) -> bool:
    """Write the tenant's day; returns whether anything changed (a re-run with the same
    figures leaves the row, its `collected_at` included, as it was)."""
    values = figures.as_row()
    statement = insert(usage).values(tenant_id=tenant_id, day=day, **values)
    changed = sa.or_(
        *(usage.c[name].is_distinct_from(statement.excluded[name]) for name in USAGE_FIELDS)
    )
    statement = statement.on_conflict_do_update(
        constraint="uq_usage_tenant_day",
        set_={
            **{name: statement.excluded[name] for name in USAGE_FIELDS},
            "collected_at": sa.func.now(),
        },
        where=changed,
    )
    return bool(connection.execute(statement).rowcount)


def tally_marks(connection: sa.Connection, tenant_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, int]:
    """The `execution_entity` id each tenant's executions were counted through."""
    query = sa.select(tenants.c.id, tenants.c.executions_seen_through).where(
        tenants.c.id.in_(list(tenant_ids))
    )
    return {row.id: int(row.executions_seen_through) for row in connection.execute(query)}


def add_to_tally(
    connection: sa.Connection,
    tenant_id: uuid.UUID,
    seen_through: int,
    now_through: int,
    by_day: Mapping[dt.date, int],
) -> bool:
    """Count the executions seen between the two ids, once: the mark moves only from where it
    was read (another counter that moved it first wins, and this count is dropped)."""
    moved = connection.execute(
        sa.update(tenants)
        .where(tenants.c.id == tenant_id, tenants.c.executions_seen_through == seen_through)
        .values(executions_seen_through=now_through)
    ).rowcount
    if not moved:
        return False
    for day, executions in by_day.items():
        statement = insert(execution_tally).values(
            tenant_id=tenant_id, day=day, executions=executions
        )
        connection.execute(
            statement.on_conflict_do_update(
                index_elements=["tenant_id", "day"],
                set_={
                    "executions": execution_tally.c.executions + statement.excluded.executions,
                    "updated_at": sa.func.now(),
                },
            )
        )
    return True


def tallied(
    connection: sa.Connection, tenant_ids: Iterable[uuid.UUID], since: dt.date
) -> dict[uuid.UUID, dict[dt.date, int]]:
    """Executions per tenant and day the platform saw appear since `since`."""
    query = sa.select(execution_tally).where(
        execution_tally.c.tenant_id.in_(list(tenant_ids)), execution_tally.c.day >= since
    )
    found: dict[uuid.UUID, dict[dt.date, int]] = {}
    for row in connection.execute(query):
        found.setdefault(row.tenant_id, {})[row.day] = int(row.executions)
    return found
