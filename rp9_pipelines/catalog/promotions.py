"""The catalog as promotions read and write it: the shared tenants the `promotion_candidates`
sensor judges, their usage, and its decisions."""

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from rp9_pipelines.catalog.tables import promotion_decisions, tenants, usage
from rp9_pipelines.catalog.tenants import limits_of
from rp9_pipelines.domain.promotion import Judgement, UsageDay


@dataclass(frozen=True)
class SharedTenant:
    id: uuid.UUID
    slug: str
    requires_dedicated: bool
    executions_per_month: int | None
    days: list[UsageDay]


def shared_tenants(connection: sa.Connection, since: dt.date) -> list[SharedTenant]:
    """Every active shared tenant with its plan's monthly executions and its usage from `since`:
    three queries whatever the number of tenants."""
    rows = connection.execute(
        sa.select(tenants.c.id, tenants.c.slug, tenants.c.compliance)
        .where(tenants.c.status == "active", tenants.c.tier == "shared")
        .order_by(tenants.c.slug)
    ).all()
    if not rows:
        return []
    ids = [row.id for row in rows]
    limits = limits_of(connection, ids)
    days: dict[uuid.UUID, list[UsageDay]] = {}
    for day in connection.execute(
        sa.select(usage)
        .where(usage.c.tenant_id.in_(ids), usage.c.day >= since)
        .order_by(usage.c.day)
    ):
        days.setdefault(day.tenant_id, []).append(
            UsageDay(
                day.day,
                day.executions,
                day.latency_p95_ms,
                day.queue_wait_p95_ms,
                day.cpu_seconds,
            )
        )
    return [
        SharedTenant(
            row.id,
            row.slug,
            bool((row.compliance or {}).get("requires_dedicated")),
            limits[row.id].executions_per_month,
            days.get(row.id, []),
        )
        for row in rows
        if row.id in limits  # no plan quota yet (a row still being created)
    ]


def record_decisions(
    connection: sa.Connection, day: dt.date, judged: list[tuple[uuid.UUID, Judgement]]
) -> None:
    """Each tenant's decision for `day`; judged again the same day, the latest stands."""
    if not judged:
        return
    values = [
        {
            "tenant_id": tenant_id,
            "day": day,
            "propose": judgement.propose,
            "trigger": judgement.trigger,
            "reasons": list(judgement.reasons),
        }
        for tenant_id, judgement in judged
    ]
    statement = insert(promotion_decisions).values(values)
    connection.execute(
        statement.on_conflict_do_update(
            constraint="uq_promotion_decisions_tenant_day",
            set_={
                "propose": statement.excluded.propose,
                "trigger": statement.excluded.trigger,
                "reasons": statement.excluded.reasons,
                "judged_at": sa.func.now(),
            },
        )
    )


def decisions(connection: sa.Connection, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    """A tenant's decisions, newest first."""
    query = (
        sa.select(promotion_decisions)
        .where(promotion_decisions.c.tenant_id == tenant_id)
        .order_by(promotion_decisions.c.day.desc())
    )
    return [dict(row._mapping) for row in connection.execute(query)]
