"""Catalog queries of enforcement: the tenants it judges (in bulk) or is asked about, this
period's events and collected usage, the delivery of events to the warnings webhook, and the
events as the API lists them."""

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from rp9_pipelines.catalog.tables import enforcement_events, tenants, usage
from rp9_pipelines.catalog.tenants import quota_overrides
from rp9_pipelines.domain.enforcement import JUDGED_STATUSES, Event, EventKey
from rp9_pipelines.domain.tenants import Limits, TenantNames, Tier, effective_limits


@dataclass(frozen=True)
class Subject:
    """A tenant as enforcement judges it."""

    id: uuid.UUID
    slug: str
    tier: Tier
    status: str
    suspension_reason: str | None
    limits: Limits

    @property
    def names(self) -> TenantNames:
        return TenantNames(self.slug, self.tier)


def _uuid(ref: str) -> str | None:
    try:
        return str(uuid.UUID(ref))
    except ValueError:
        return None


def resolve_tenants(connection: sa.Connection, refs: Sequence[str]) -> tuple[list[str], list[str]]:
    """The ids of the tenants `refs` name (by id or slug, deleted ones excluded), in the order
    given and once each; and the refs that name no tenant."""
    ids = [found for found in map(_uuid, refs) if found is not None]
    query = sa.select(tenants.c.id, tenants.c.slug).where(
        sa.or_(tenants.c.id.in_(ids), tenants.c.slug.in_(refs)), tenants.c.status != "deleted"
    )
    by_ref: dict[str, str] = {}
    for row in connection.execute(query):
        by_ref[str(row.id)] = by_ref[row.slug] = str(row.id)
    keys = [_uuid(ref) or ref for ref in refs]
    missing = [ref for ref, key in zip(refs, keys, strict=True) if key not in by_ref]
    return list(dict.fromkeys(by_ref[key] for key in keys if key in by_ref)), missing


def subjects(connection: sa.Connection, pattern: str, refs: Sequence[str] = ()) -> list[Subject]:
    """Active and suspended tenants whose slug matches `pattern` (and, when `refs` are given,
    whose slug or id is one of them), with their merged quotas: two queries in all."""
    query = (
        sa.select(
            tenants.c.id,
            tenants.c.slug,
            tenants.c.tier,
            tenants.c.status,
            tenants.c.suspension_reason,
        )
        .where(tenants.c.status.in_(sorted(JUDGED_STATUSES)))
        .order_by(tenants.c.slug)
    )
    wanted = set(refs)
    rows = [
        row
        for row in connection.execute(query)
        if fnmatchcase(row.slug, pattern)
        and (not wanted or row.slug in wanted or str(row.id) in wanted)
    ]
    if not rows:
        return []
    overrides = quota_overrides(connection, [row.id for row in rows])
    return [
        Subject(
            id=row.id,
            slug=row.slug,
            tier=row.tier,
            status=row.status,
            suspension_reason=row.suspension_reason,
            limits=effective_limits(overrides.get(row.id, {})),
        )
        for row in rows
        if "plan" in overrides.get(row.id, {})
    ]


def recorded(
    connection: sa.Connection, tenant_ids: Iterable[uuid.UUID], period: str
) -> dict[uuid.UUID, dict[EventKey, dt.datetime]]:
    """This period's events per tenant, and when each was (last) recorded."""
    query = sa.select(enforcement_events).where(
        enforcement_events.c.tenant_id.in_(list(tenant_ids)),
        enforcement_events.c.period == period,
    )
    found: dict[uuid.UUID, dict[EventKey, dt.datetime]] = {}
    for row in connection.execute(query):
        key = EventKey(row.metric, row.threshold, row.action)
        found.setdefault(row.tenant_id, {})[key] = row.created_at
    return found


def collected_usage(
    connection: sa.Connection, tenant_ids: Iterable[uuid.UUID], since: dt.date
) -> dict[uuid.UUID, dict[dt.date, int]]:
    """Executions per day already collected into `usage` (kept after n8n prunes its own)."""
    query = sa.select(usage.c.tenant_id, usage.c.day, usage.c.executions).where(
        usage.c.tenant_id.in_(list(tenant_ids)), usage.c.day >= since
    )
    found: dict[uuid.UUID, dict[dt.date, int]] = {}
    for row in connection.execute(query):
        found.setdefault(row.tenant_id, {})[row.day] = int(row.executions)
    return found


def record(
    connection: sa.Connection, tenant_id: uuid.UUID, period: str, event: Event, run_id: str | None
) -> uuid.UUID | None:
    """Insert the event; a concurrent run that recorded it first wins (None). A replacement
    takes the place of the period's earlier event of that key and is delivered again."""
    values = {
        "tenant_id": tenant_id,
        "period": period,
        "metric": event.key.metric,
        "threshold": event.key.threshold,
        "action": event.key.action,
        "value": event.value,
        "limit_value": event.limit,
        "run_id": run_id,
    }
    statement = insert(enforcement_events).values(**values)
    unique = ["tenant_id", "period", "metric", "threshold", "action"]
    if event.replaces:
        statement = statement.on_conflict_do_update(
            index_elements=unique,
            set_={
                "value": event.value,
                "limit_value": event.limit,
                "run_id": run_id,
                "created_at": sa.func.now(),
                "notified_at": None,
                "notify_error": None,
            },
        )
    else:
        statement = statement.on_conflict_do_nothing(index_elements=unique)
    event_id: uuid.UUID | None = connection.execute(
        statement.returning(enforcement_events.c.id)
    ).scalar()
    return event_id


def undelivered(
    connection: sa.Connection, since: dt.datetime, tenant_ids: Sequence[uuid.UUID] | None = None
) -> list[dict[str, Any]]:
    """Events recorded since `since` (of `tenant_ids`, if given) that the webhook has not
    acknowledged, oldest first."""
    query = (
        sa.select(enforcement_events, tenants.c.slug)
        .join(tenants, tenants.c.id == enforcement_events.c.tenant_id)
        .where(enforcement_events.c.notified_at.is_(None))
        .where(enforcement_events.c.created_at >= since)
        # Events of one run share a timestamp: warnings before the action they announce.
        .order_by(
            enforcement_events.c.created_at,
            enforcement_events.c.threshold,
            sa.case((enforcement_events.c.action == "warn", 0), else_=1),
        )
    )
    if tenant_ids is not None:
        query = query.where(enforcement_events.c.tenant_id.in_(list(tenant_ids)))
    return [dict(row._mapping) for row in connection.execute(query)]


def mark_delivery(connection: sa.Connection, event_id: uuid.UUID, error: str | None) -> None:
    values: dict[str, Any] = (
        {"notified_at": sa.func.now(), "notify_error": None}
        if error is None
        else {"notify_error": error[:2000]}
    )
    connection.execute(
        sa.update(enforcement_events).where(enforcement_events.c.id == event_id).values(**values)
    )


def list_events(
    connection: sa.Connection,
    *,
    tenant_id: uuid.UUID | None = None,
    period: str | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Events, newest first (of one tenant, of one period, if given), with the tenant's slug."""
    query = (
        sa.select(enforcement_events, tenants.c.slug)
        .join(tenants, tenants.c.id == enforcement_events.c.tenant_id)
        .order_by(enforcement_events.c.created_at.desc(), enforcement_events.c.threshold.desc())
        .limit(limit)
    )
    if tenant_id is not None:
        query = query.where(enforcement_events.c.tenant_id == tenant_id)
    if period is not None:
        query = query.where(enforcement_events.c.period == period)
    return [dict(row._mapping) for row in connection.execute(query)]
