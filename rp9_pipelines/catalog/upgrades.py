"""The catalog as upgrades read and write it: the versions offered and the paths tested
(`domain.upgrades.Offer`), and each upgrade's run: its phase, steps and figures."""

import uuid
from typing import Any

import sqlalchemy as sa

from rp9_pipelines.catalog import changes
from rp9_pipelines.catalog.tables import n8n_versions, tenants, upgrade_paths, upgrades
from rp9_pipelines.domain.upgrades import Offer


def offer(connection: sa.Connection) -> Offer:
    versions = connection.execute(
        sa.select(n8n_versions.c.version).where(n8n_versions.c.offered)
    ).scalars()
    offered = frozenset(str(v) for v in versions)
    paths = connection.execute(sa.select(upgrade_paths.c.from_version, upgrade_paths.c.to_version))
    return Offer(
        offered,
        frozenset((a, b) for a, b in paths if a in offered and b in offered),
    )


class UpgradeRunning(Exception):
    """The tenant has an upgrade running already (`uq_upgrades_one_running`)."""


def start(
    connection: sa.Connection,
    tenant_id: uuid.UUID,
    from_version: str,
    to_version: str,
    rollout: str | None = None,
) -> uuid.UUID:
    """Record a requested upgrade and mark the tenant `upgrading`, in the caller's transaction;
    `UpgradeRunning` if one runs already."""
    try:
        with connection.begin_nested():
            upgrade_id = connection.execute(
                sa.insert(upgrades)
                .values(
                    tenant_id=tenant_id,
                    from_version=from_version,
                    to_version=to_version,
                    rollout=rollout,
                )
                .returning(upgrades.c.id)
            ).scalar_one()
            assert isinstance(upgrade_id, uuid.UUID)
    except sa.exc.IntegrityError:
        raise UpgradeRunning(str(tenant_id)) from None
    connection.execute(
        sa.update(tenants).where(tenants.c.id == tenant_id).values(status="upgrading")
    )
    return upgrade_id


def forget(connection: sa.Connection, upgrade_id: uuid.UUID, tenant_status: str) -> None:
    """Undo `start` (its run could not be launched)."""
    row = connection.execute(
        sa.delete(upgrades).where(upgrades.c.id == upgrade_id).returning(upgrades.c.tenant_id)
    ).first()
    if row is not None:
        connection.execute(
            sa.update(tenants).where(tenants.c.id == row.tenant_id).values(status=tenant_status)
        )


def get(connection: sa.Connection, upgrade_id: uuid.UUID | str) -> dict[str, Any] | None:
    row = connection.execute(sa.select(upgrades).where(upgrades.c.id == upgrade_id)).first()
    return dict(row._mapping) if row else None


def of_tenant(connection: sa.Connection, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
    """A tenant's upgrades, newest first."""
    query = (
        sa.select(upgrades)
        .where(upgrades.c.tenant_id == tenant_id)
        .order_by(upgrades.c.started_at.desc())
    )
    return [dict(row._mapping) for row in connection.execute(query)]


def of_rollout(connection: sa.Connection, rollout: str) -> list[dict[str, Any]]:
    query = sa.select(upgrades).where(upgrades.c.rollout == rollout).order_by(upgrades.c.started_at)
    return [dict(row._mapping) for row in connection.execute(query)]


def running(connection: sa.Connection, tenant_id: uuid.UUID) -> bool:
    query = sa.select(upgrades.c.id).where(
        upgrades.c.tenant_id == tenant_id, upgrades.c.status == "running"
    )
    return connection.execute(query).first() is not None


def running_upgrades(connection: sa.Connection) -> list[dict[str, Any]]:
    query = sa.select(upgrades).where(upgrades.c.status == "running")
    return [dict(row._mapping) for row in connection.execute(query)]


def last(connection: sa.Connection, tenant_id: uuid.UUID) -> dict[str, Any] | None:
    """The tenant's latest upgrade that reached its switch."""
    row = connection.execute(
        sa.select(upgrades)
        .where(upgrades.c.tenant_id == tenant_id, upgrades.c.switched_at.is_not(None))
        .order_by(upgrades.c.switched_at.desc())
        .limit(1)
    ).first()
    return dict(row._mapping) if row else None


def advance(
    connection: sa.Connection,
    upgrade_id: uuid.UUID,
    phase: str,
    figures: dict[str, Any] | None = None,
    **values: Any,
) -> None:
    """Record that the run reached `phase` (a step with its time) and what it measured."""
    changes.advance(connection, upgrades, upgrade_id, phase, figures, **values)


def conclude(connection: sa.Connection, upgrade_id: uuid.UUID, **values: Any) -> None:
    changes.conclude(connection, upgrades, upgrade_id, **values)
