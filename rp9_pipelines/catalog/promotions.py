"""The catalog as promotions read and write it: the shared tenants the `promotion_candidates`
sensor judges, their usage, and its decisions."""

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from rp9_pipelines.catalog import changes
from rp9_pipelines.catalog.tables import (
    edge_holds,
    promotion_decisions,
    promotions,
    tenants,
    usage,
)
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


# Promotion runs ------------------------------------------------------------------------------


class PromotionRunning(Exception):
    """The tenant has a promotion running already (one at a time: `uq_promotions_one_running`)."""


def start(connection: sa.Connection, tenant_id: uuid.UUID, trigger: str) -> uuid.UUID:
    """Record a requested promotion and mark the tenant `promoting`, in the caller's
    transaction; `PromotionRunning` if one runs already."""
    try:
        with connection.begin_nested():
            promotion_id = connection.execute(
                sa.insert(promotions)
                .values(tenant_id=tenant_id, trigger=trigger)
                .returning(promotions.c.id)
            ).scalar_one()
            assert isinstance(promotion_id, uuid.UUID)
    except sa.exc.IntegrityError:
        raise PromotionRunning(str(tenant_id)) from None
    connection.execute(
        sa.update(tenants).where(tenants.c.id == tenant_id).values(status="promoting")
    )
    return promotion_id


def forget(connection: sa.Connection, promotion_id: uuid.UUID, tenant_status: str) -> None:
    """Undo `start` (its run could not be launched)."""
    row = connection.execute(
        sa.delete(promotions)
        .where(promotions.c.id == promotion_id)
        .returning(promotions.c.tenant_id)
    ).first()
    if row is not None:
        connection.execute(
            sa.update(tenants).where(tenants.c.id == row.tenant_id).values(status=tenant_status)
        )


def get(connection: sa.Connection, promotion_id: uuid.UUID | str) -> dict[str, Any] | None:
    row = connection.execute(sa.select(promotions).where(promotions.c.id == promotion_id)).first()
    return dict(row._mapping) if row else None


def of_tenant(connection: sa.Connection, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    """A tenant's promotions, newest first."""
    query = (
        sa.select(promotions)
        .where(promotions.c.tenant_id == tenant_id)
        .order_by(promotions.c.started_at.desc())
    )
    return [dict(row._mapping) for row in connection.execute(query)]


def running(connection: sa.Connection, tenant_id: uuid.UUID) -> bool:
    query = sa.select(promotions.c.id).where(
        promotions.c.tenant_id == tenant_id, promotions.c.status == "running"
    )
    return connection.execute(query).first() is not None


def advance(
    connection: sa.Connection,
    promotion_id: uuid.UUID,
    phase: str,
    figures: dict[str, Any] | None = None,
    **values: Any,
) -> None:
    """Record that the run reached `phase` (a step with its time) and what it measured."""
    changes.advance(connection, promotions, promotion_id, phase, figures, **values)


def conclude(connection: sa.Connection, promotion_id: uuid.UUID, **values: Any) -> None:
    changes.conclude(connection, promotions, promotion_id, **values)


def to_remove(connection: sa.Connection, now: dt.datetime) -> list[dict[str, Any]]:
    """Succeeded promotions whose rollback window is over and whose shared schema is still
    there."""
    query = sa.select(promotions).where(
        promotions.c.status == "succeeded",
        promotions.c.rollback_until < now,
        promotions.c.shared_removed_at.is_(None),
    )
    return [dict(row._mapping) for row in connection.execute(query)]


def last_switched(connection: sa.Connection, tenant_id: uuid.UUID) -> dict[str, Any] | None:
    """The tenant's latest promotion that switched it to its dedicated database."""
    row = connection.execute(
        sa.select(promotions)
        .where(promotions.c.tenant_id == tenant_id, promotions.c.switched_at.is_not(None))
        .order_by(promotions.c.switched_at.desc())
        .limit(1)
    ).first()
    return dict(row._mapping) if row else None


# Edge holds ----------------------------------------------------------------------------------


def hold(connection: sa.Connection, tenant_id: uuid.UUID, reason: str, token: str) -> None:
    statement = insert(edge_holds).values(tenant_id=tenant_id, reason=reason, token=token)
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=["tenant_id"],
            set_={"reason": reason, "token": token, "held_at": sa.func.now(), "released_at": None},
        )
    )


def release(connection: sa.Connection, tenant_id: uuid.UUID) -> None:
    connection.execute(
        sa.update(edge_holds)
        .where(edge_holds.c.tenant_id == tenant_id, edge_holds.c.released_at.is_(None))
        .values(released_at=sa.func.now())
    )


def hold_token(connection: sa.Connection, tenant_id: uuid.UUID) -> str | None:
    token = connection.execute(
        sa.select(edge_holds.c.token).where(edge_holds.c.tenant_id == tenant_id)
    ).scalar()
    return str(token) if token is not None else None
