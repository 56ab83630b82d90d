"""Catalog queries of the autoscaler: the tenants it manages, in bulk, and its events."""

import uuid
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

import sqlalchemy as sa

from rp9_pipelines.catalog.tables import autoscaling_events, tenants
from rp9_pipelines.catalog.tenants import limits_of
from rp9_pipelines.domain.tenants import Limits, TenantNames, Tier


@dataclass(frozen=True)
class Candidate:
    """An active tenant as the autoscaler needs it: its size now and its effective limits."""

    id: uuid.UUID
    slug: str
    tier: Tier
    workers: int
    limits: Limits

    @property
    def names(self) -> TenantNames:
        return TenantNames(self.slug, self.tier)


def candidates(connection: sa.Connection, pattern: str = "*") -> list[Candidate]:
    """Every active tenant whose slug matches `pattern`, with its merged quotas: two queries
    whatever the number of tenants."""
    active = (
        sa.select(tenants.c.id, tenants.c.slug, tenants.c.tier, tenants.c.workers)
        .where(tenants.c.status == "active")
        .order_by(tenants.c.slug)
    )
    rows = [row for row in connection.execute(active) if fnmatchcase(row.slug, pattern)]
    if not rows:
        return []
    limits = limits_of(connection, [row.id for row in rows])
    # A row without a plan quota yet (still being created) has nothing to scale.
    return [
        Candidate(row.id, row.slug, row.tier, row.workers, limits[row.id])
        for row in rows
        if row.id in limits
    ]


def record_events(connection: sa.Connection, events: list[dict[str, Any]]) -> None:
    """Insert decisions; an id already present (the same decision again) is left alone."""
    if events:
        statement = sa.dialects.postgresql.insert(autoscaling_events).values(events)
        connection.execute(statement.on_conflict_do_nothing(index_elements=["id"]))


def link_run(connection: sa.Connection, event_id: str, run_id: str) -> None:
    connection.execute(
        sa.update(autoscaling_events)
        .where(autoscaling_events.c.id == uuid.UUID(event_id))
        .values(run_id=run_id)
    )


def events(connection: sa.Connection, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    """A tenant's autoscaling story, oldest first."""
    query = (
        sa.select(autoscaling_events)
        .where(autoscaling_events.c.tenant_id == tenant_id)
        .order_by(autoscaling_events.c.at, autoscaling_events.c.id)
    )
    return [dict(row._mapping) for row in connection.execute(query)]
