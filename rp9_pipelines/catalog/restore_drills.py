"""Catalog queries about restore drills."""

import uuid
from typing import Any

import sqlalchemy as sa

from rp9_pipelines.catalog.backups import iso
from rp9_pipelines.catalog.tables import restore_drills
from rp9_pipelines.domain.restore_drills import Check


def insert_drill(
    connection: sa.Connection,
    *,
    drill_id: uuid.UUID,
    tenant_id: uuid.UUID,
    backup_id: uuid.UUID,
    sandbox: str,
    run_id: str | None,
) -> None:
    connection.execute(
        sa.insert(restore_drills).values(
            id=drill_id,
            tenant_id=tenant_id,
            backup_id=backup_id,
            sandbox=sandbox,
            status="running",
            run_id=run_id,
        )
    )


def finish_drill(
    connection: sa.Connection,
    drill_id: uuid.UUID,
    *,
    passed: bool,
    checks: list[Check],
    rto_seconds: float | None,
    error: str | None,
) -> None:
    connection.execute(
        sa.update(restore_drills)
        .where(restore_drills.c.id == drill_id)
        .values(
            status="passed" if passed else "failed",
            checks=[c.as_json() for c in checks],
            rto_seconds=rto_seconds,
            error=error[:4000] if error else None,
            finished_at=sa.func.now(),
        )
    )


def running_drills(connection: sa.Connection) -> list[dict[str, Any]]:
    query = sa.select(restore_drills).where(restore_drills.c.status == "running")
    return [dict(row._mapping) for row in connection.execute(query)]


def fail_interrupted_drills(connection: sa.Connection, drill_ids: list[uuid.UUID]) -> None:
    if not drill_ids:
        return
    connection.execute(
        sa.update(restore_drills)
        .where(restore_drills.c.id.in_(drill_ids), restore_drills.c.status == "running")
        .values(
            status="failed",
            error="interrupted: its run ended before the drill did",
            finished_at=sa.func.now(),
        )
    )


def get_drill(connection: sa.Connection, drill_id: uuid.UUID) -> dict[str, Any] | None:
    query = sa.select(restore_drills).where(restore_drills.c.id == drill_id)
    row = connection.execute(query).first()
    return dict(row._mapping) if row else None


def public_drill(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "tenant_id": str(row["tenant_id"]),
        "backup_id": str(row["backup_id"]),
        "sandbox": row["sandbox"],
        "status": row["status"],
        "run_id": row["run_id"],
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        "rto_seconds": row["rto_seconds"],
        "checks": row["checks"],
        "error": row["error"],
    }


def list_drills(
    connection: sa.Connection, tenant_id: uuid.UUID, limit: int = 20
) -> list[dict[str, Any]]:
    """The tenant's latest drills, by when they started."""
    query = (
        sa.select(restore_drills)
        .where(restore_drills.c.tenant_id == tenant_id)
        .order_by(restore_drills.c.started_at.desc())
        .limit(limit)
    )
    return [dict(row._mapping) for row in connection.execute(query)]
