"""Catalog queries about backups."""

import datetime as dt
import uuid
from typing import Any

import sqlalchemy as sa

from rp9_pipelines.catalog.tables import backups, tenants
from rp9_pipelines.domain.backups import BackupRecord, Manifest


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


def iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def get_backup(connection: sa.Connection, backup_id: uuid.UUID) -> dict[str, Any] | None:
    row = connection.execute(sa.select(backups).where(backups.c.id == backup_id)).first()
    return dict(row._mapping) if row else None


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
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        "expires_at": iso(row["expires_at"]),
        "error": row["error"],
    }


def list_backups(
    connection: sa.Connection, tenant_id: uuid.UUID, limit: int = 50
) -> list[dict[str, Any]]:
    """The tenant's latest backups, by when they started."""
    query = (
        sa.select(backups)
        .where(backups.c.tenant_id == tenant_id)
        .order_by(backups.c.started_at.desc())
        .limit(limit)
    )
    return [dict(row._mapping) for row in connection.execute(query)]


def expire_purged(connection: sa.Connection, tenant_id: uuid.UUID, at: dt.datetime) -> int:
    """A purged tenant's backups expire at `at` at the latest (sooner ones keep their date);
    how many were given the date."""
    result = connection.execute(
        sa.update(backups)
        .where(backups.c.tenant_id == tenant_id, backups.c.status != "expired")
        .where(sa.or_(backups.c.expires_at.is_(None), backups.c.expires_at > at))
        .values(expires_at=at)
    )
    return result.rowcount


def purged_tenant_ids(connection: sa.Connection) -> set[uuid.UUID]:
    query = sa.select(tenants.c.id).where(tenants.c.purged_at.is_not(None))
    return set(connection.execute(query).scalars())
