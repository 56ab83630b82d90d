"""The fleet as the catalog exporter publishes it (docs/observability.md): every tenant not
deleted, with its limits, this month's executions, newest verified backup and passed drill,
latest enforcement action and latest promotion and upgrade. A fixed number of queries whatever
the number of tenants."""

import datetime as dt
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import distinct_on

from rp9_pipelines.catalog.tables import (
    backups,
    enforcement_events,
    promotions,
    restore_drills,
    tenants,
    upgrades,
    usage,
)
from rp9_pipelines.catalog.tenants import limits_of
from rp9_pipelines.domain.tenants import Limits, TenantNames, Tier

# A failed change stays on the dashboards and alerts this long unless a later one succeeds.
FAILED_CHANGE_SHOWN = dt.timedelta(days=7)


@dataclass(frozen=True)
class Change:
    """A tenant's latest promotion or upgrade."""

    status: str
    finished_at: dt.datetime | None

    def failed_recently(self, now: dt.datetime) -> bool:
        return (
            self.status == "failed"
            and self.finished_at is not None
            and now - self.finished_at <= FAILED_CHANGE_SHOWN
        )


@dataclass(frozen=True)
class TenantState:
    id: uuid.UUID
    slug: str
    plan: str
    tier: Tier
    region: str
    status: str
    n8n_version: str
    created_at: dt.datetime
    workers: int
    limits: Limits | None
    executions_month: int
    last_verified_backup: dt.datetime | None
    last_passed_drill: dt.datetime | None
    enforcement_action: str | None
    changes: dict[str, Change]

    @property
    def names(self) -> TenantNames:
        return TenantNames(self.slug, self.tier)


def _latest(connection: sa.Connection, query: sa.Select[Any]) -> dict[uuid.UUID, dt.datetime]:
    return {row[0]: row[1] for row in connection.execute(query)}


def _latest_change(
    connection: sa.Connection, table: sa.Table, ids: list[uuid.UUID]
) -> dict[uuid.UUID, Change]:
    query = (
        sa.select(table.c.tenant_id, table.c.status, table.c.finished_at)
        .where(table.c.tenant_id.in_(ids))
        .ext(distinct_on(table.c.tenant_id))
        .order_by(table.c.tenant_id, table.c.started_at.desc())
    )
    return {row.tenant_id: Change(row.status, row.finished_at) for row in connection.execute(query)}


def fleet(
    connection: sa.Connection, now: dt.datetime, slugs: Collection[str] | None = None
) -> list[TenantState]:
    """Every tenant not deleted (or those of `slugs`), by slug, as of `now` (its month is
    `now`'s, UTC)."""
    query = sa.select(tenants).where(tenants.c.status != "deleted").order_by(tenants.c.slug)
    if slugs is not None:
        query = query.where(tenants.c.slug.in_(list(slugs)))
    rows = connection.execute(query).all()
    ids = [row.id for row in rows]
    limits = limits_of(connection, ids)
    month_start = now.date().replace(day=1)
    executions = {
        row.tenant_id: int(row.executions)
        for row in connection.execute(
            sa.select(usage.c.tenant_id, sa.func.sum(usage.c.executions).label("executions"))
            .where(usage.c.day >= month_start, usage.c.tenant_id.in_(ids))
            .group_by(usage.c.tenant_id)
        )
    }
    backed_up = _latest(
        connection,
        sa.select(backups.c.tenant_id, sa.func.max(backups.c.finished_at))
        .where(backups.c.status == "ok", backups.c.tenant_id.in_(ids))
        .group_by(backups.c.tenant_id),
    )
    drilled = _latest(
        connection,
        sa.select(restore_drills.c.tenant_id, sa.func.max(restore_drills.c.finished_at))
        .where(restore_drills.c.status == "passed", restore_drills.c.tenant_id.in_(ids))
        .group_by(restore_drills.c.tenant_id),
    )
    enforced = {
        row.tenant_id: row.action
        for row in connection.execute(
            sa.select(enforcement_events.c.tenant_id, enforcement_events.c.action)
            .where(
                enforcement_events.c.period == now.strftime("%Y-%m"),
                enforcement_events.c.tenant_id.in_(ids),
            )
            .ext(distinct_on(enforcement_events.c.tenant_id))
            .order_by(enforcement_events.c.tenant_id, enforcement_events.c.created_at.desc())
        )
    }
    promoted = _latest_change(connection, promotions, ids)
    upgraded = _latest_change(connection, upgrades, ids)
    return [
        TenantState(
            id=row.id,
            slug=row.slug,
            plan=row.plan,
            tier=row.tier,
            region=row.region,
            status=row.status,
            n8n_version=row.n8n_version,
            created_at=row.created_at,
            workers=row.workers,
            limits=limits.get(row.id),
            executions_month=executions.get(row.id, 0),
            last_verified_backup=backed_up.get(row.id),
            last_passed_drill=drilled.get(row.id),
            enforcement_action=enforced.get(row.id),
            changes={
                kind: change
                for kind, change in (
                    ("promotion", promoted.get(row.id)),
                    ("upgrade", upgraded.get(row.id)),
                )
                if change is not None
            },
        )
        for row in rows
    ]
