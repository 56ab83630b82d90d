"""Catalog queries about the platform's own backups and its disaster-recovery drills."""

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa

from rp9_pipelines.catalog.backups import iso
from rp9_pipelines.catalog.tables import platform_backups, platform_dr_drills
from rp9_pipelines.domain.platform_backups import PlatformBackupRecord


def insert_backup(
    connection: sa.Connection,
    *,
    backup_id: uuid.UUID,
    set_id: uuid.UUID,
    component: str,
    kind: str,
    bucket: str,
    key: str,
    run_id: str | None,
    started_at: dt.datetime,
    expires_at: dt.datetime,
) -> None:
    connection.execute(
        sa.insert(platform_backups).values(
            id=backup_id,
            set_id=set_id,
            component=component,
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
    connection: sa.Connection,
    backup_id: uuid.UUID,
    *,
    size: int,
    sha256: str,
    manifest: dict[str, Any],
) -> None:
    """`ok`: only called once the stored object was read back and matched."""
    connection.execute(
        sa.update(platform_backups)
        .where(platform_backups.c.id == backup_id, platform_backups.c.status == "running")
        .values(
            status="ok",
            size_bytes=size,
            sha256=sha256,
            manifest=manifest,
            finished_at=sa.func.now(),
            error=None,
        )
    )


def fail_backup(connection: sa.Connection, backup_id: uuid.UUID, error: str) -> None:
    connection.execute(
        sa.update(platform_backups)
        .where(platform_backups.c.id == backup_id, platform_backups.c.status == "running")
        .values(status="failed", finished_at=sa.func.now(), error=error[:4000])
    )


def running_backups(connection: sa.Connection) -> list[dict[str, Any]]:
    query = sa.select(platform_backups).where(platform_backups.c.status == "running")
    return [dict(row._mapping) for row in connection.execute(query)]


def mark_expired(connection: sa.Connection, backup_id: uuid.UUID) -> None:
    connection.execute(
        sa.update(platform_backups)
        .where(platform_backups.c.id == backup_id, platform_backups.c.status != "expired")
        .values(status="expired")
    )


def records(connection: sa.Connection) -> list[PlatformBackupRecord]:
    query = sa.select(platform_backups).where(platform_backups.c.status != "expired")
    return [
        PlatformBackupRecord(
            id=row.id,
            set_id=row.set_id,
            component=row.component,
            kind=row.kind,
            status=row.status,
            bucket=row.bucket,
            key=row.key,
            started_at=row.started_at,
            finished_at=row.finished_at,
            expires_at=row.expires_at,
        )
        for row in connection.execute(query)
    ]


def set_parts(connection: sa.Connection, set_id: uuid.UUID) -> dict[str, dict[str, Any]]:
    query = sa.select(platform_backups).where(platform_backups.c.set_id == set_id)
    return {row.component: dict(row._mapping) for row in connection.execute(query)}


def public_backup(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "set_id": str(row["set_id"]),
        "component": row["component"],
        "kind": row["kind"],
        "status": row["status"],
        "bucket": row["bucket"],
        "key": row["key"],
        "size_bytes": row["size_bytes"],
        "sha256": row["sha256"],
        "manifest": row["manifest"],
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        "expires_at": iso(row["expires_at"]),
        "error": row["error"],
    }


def list_backups(connection: sa.Connection, limit: int = 100) -> list[dict[str, Any]]:
    query = (
        sa.select(platform_backups)
        .order_by(platform_backups.c.started_at.desc(), platform_backups.c.component)
        .limit(limit)
    )
    return [public_backup(dict(row._mapping)) for row in connection.execute(query)]


# DR drills -----------------------------------------------------------------------------------


def insert_drill(
    connection: sa.Connection, *, drill_id: uuid.UUID, run_id: str | None, request_id: str | None
) -> None:
    connection.execute(
        sa.insert(platform_dr_drills).values(
            id=drill_id, status="running", run_id=run_id, request_id=request_id
        )
    )


def finish_drill(
    connection: sa.Connection,
    drill_id: uuid.UUID,
    *,
    set_id: uuid.UUID | None,
    passed: bool,
    rto_seconds: float | None,
    rpo_seconds: float | None,
    tenants: list[dict[str, Any]],
    checks: list[dict[str, Any]],
    error: str | None,
) -> None:
    connection.execute(
        sa.update(platform_dr_drills)
        .where(platform_dr_drills.c.id == drill_id)
        .values(
            set_id=set_id,
            status="passed" if passed else "failed",
            rto_seconds=rto_seconds,
            rpo_seconds=rpo_seconds,
            tenants=tenants,
            checks=checks,
            error=error[:4000] if error else None,
            finished_at=sa.func.now(),
        )
    )


def running_drills(connection: sa.Connection) -> list[dict[str, Any]]:
    query = sa.select(platform_dr_drills).where(platform_dr_drills.c.status == "running")
    return [dict(row._mapping) for row in connection.execute(query)]


def fail_interrupted_drills(connection: sa.Connection, drill_ids: list[uuid.UUID]) -> None:
    if drill_ids:
        connection.execute(
            sa.update(platform_dr_drills)
            .where(platform_dr_drills.c.id.in_(drill_ids), platform_dr_drills.c.status == "running")
            .values(status="failed", error="interrupted: its run ended", finished_at=sa.func.now())
        )


def public_drill(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "status": row["status"],
        "set_id": str(row["set_id"]) if row["set_id"] else None,
        "run_id": row["run_id"],
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        "rto_seconds": row["rto_seconds"],
        "rpo_seconds": row["rpo_seconds"],
        "tenants": row["tenants"],
        "checks": row["checks"],
        "error": row["error"],
    }


def get_drill(connection: sa.Connection, drill_id: uuid.UUID) -> dict[str, Any] | None:
    row = connection.execute(
        sa.select(platform_dr_drills).where(platform_dr_drills.c.id == drill_id)
    ).first()
    return public_drill(dict(row._mapping)) if row else None


def list_drills(connection: sa.Connection, limit: int = 50) -> list[dict[str, Any]]:
    query = (
        sa.select(platform_dr_drills).order_by(platform_dr_drills.c.started_at.desc()).limit(limit)
    )
    return [public_drill(dict(row._mapping)) for row in connection.execute(query)]
