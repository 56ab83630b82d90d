"""Catalog queries about backups and restore drills."""

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa

from rp9_pipelines.catalog.tables import backups, restore_drills
from rp9_pipelines.domain.backups import BackupRecord, Check, Manifest


def insert_backup(
    connection: sa.Connection,
    *,
    backup_id: uuid.UUID,
    tenant_id: uuid.UUID,
    kind: str,
    bucket: str,
    key: str,
    run_id: str | None,
    started_at: dt.datetime,
    expires_at: dt.datetime,
) -> None:
    connection.execute(
        sa.insert(backups).values(
            id=backup_id,
            tenant_id=tenant_id,
            kind=kind,
            bucket=bucket,
            key=key,
            status="running",
            run_id=run_id,
            started_at=started_at,
            expires_at=expires_at,
        )
    )


def finish_backup(
    connection: sa.Connection, backup_id: uuid.UUID, *, size: int, sha256: str, manifest: Manifest
) -> None:
    """`ok`: only called once the stored object was read back and matched."""
    connection.execute(
        sa.update(backups)
        .where(backups.c.id == backup_id, backups.c.status == "running")
        .values(
            status="ok",
            size_bytes=size,
            sha256=sha256,
            manifest=manifest.as_json(),
            finished_at=sa.func.now(),
            error=None,
        )
    )


def fail_backup(connection: sa.Connection, backup_id: uuid.UUID, error: str) -> None:
    connection.execute(
        sa.update(backups)
        .where(backups.c.id == backup_id, backups.c.status == "running")
        .values(status="failed", finished_at=sa.func.now(), error=error[:4000])
    )


def mark_expired(connection: sa.Connection, backup_id: uuid.UUID) -> None:
    connection.execute(
        sa.update(backups)
        .where(backups.c.id == backup_id, backups.c.status != "expired")
        .values(status="expired")
    )


def _record(row: sa.Row[Any]) -> BackupRecord:
    return BackupRecord(
        id=row.id,
        tenant_id=row.tenant_id,
        kind=row.kind,
        status=row.status,
        bucket=row.bucket,
        key=row.key,
        started_at=row.started_at,
        finished_at=row.finished_at,
        expires_at=row.expires_at,
    )


def backup_records(
    connection: sa.Connection, tenant_id: uuid.UUID | None = None, *, include_expired: bool = False
) -> list[BackupRecord]:
    """The backups of one tenant (or of all), without the expired ones unless asked."""
    query = sa.select(backups)
    if not include_expired:
        query = query.where(backups.c.status != "expired")
    if tenant_id is not None:
        query = query.where(backups.c.tenant_id == tenant_id)
    return [_record(row) for row in connection.execute(query)]


def _by_id(connection: sa.Connection, table: sa.Table, row_id: uuid.UUID) -> dict[str, Any] | None:
    row = connection.execute(sa.select(table).where(table.c.id == row_id)).first()
    return dict(row._mapping) if row else None


def _newest(
    connection: sa.Connection, table: sa.Table, tenant_id: uuid.UUID, limit: int
) -> list[dict[str, Any]]:
    """The tenant's latest rows of `table`, by when they started."""
    query = (
        sa.select(table)
        .where(table.c.tenant_id == tenant_id)
        .order_by(table.c.started_at.desc())
        .limit(limit)
    )
    return [dict(row._mapping) for row in connection.execute(query)]


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def get_backup(connection: sa.Connection, backup_id: uuid.UUID) -> dict[str, Any] | None:
    return _by_id(connection, backups, backup_id)


def public_backup(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "tenant_id": str(row["tenant_id"]),
        "kind": row["kind"],
        "status": row["status"],
        "bucket": row["bucket"],
        "key": row["key"],
        "size_bytes": row["size_bytes"],
        "sha256": row["sha256"],
        "manifest": row["manifest"],
        "run_id": row["run_id"],
        "started_at": _iso(row["started_at"]),
        "finished_at": _iso(row["finished_at"]),
        "expires_at": _iso(row["expires_at"]),
        "error": row["error"],
    }


def list_backups(
    connection: sa.Connection, tenant_id: uuid.UUID, limit: int = 50
) -> list[dict[str, Any]]:
    return _newest(connection, backups, tenant_id, limit)


# Restore drills ------------------------------------------------------------------------------


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
    return _by_id(connection, restore_drills, drill_id)


def public_drill(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "tenant_id": str(row["tenant_id"]),
        "backup_id": str(row["backup_id"]),
        "sandbox": row["sandbox"],
        "status": row["status"],
        "run_id": row["run_id"],
        "started_at": _iso(row["started_at"]),
        "finished_at": _iso(row["finished_at"]),
        "rto_seconds": row["rto_seconds"],
        "checks": row["checks"],
        "error": row["error"],
    }


def list_drills(
    connection: sa.Connection, tenant_id: uuid.UUID, limit: int = 20
) -> list[dict[str, Any]]:
    return _newest(connection, restore_drills, tenant_id, limit)
