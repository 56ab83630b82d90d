"""Take one backup of a tenant: dump its snapshot straight into S3, read the object back, and
only then call it `ok` (any failure leaves the row `failed` with the reason); retention deletes
what the policy says is expired, from S3 first and then in the catalog."""

import datetime as dt
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from typing import IO

from rp9_pipelines.catalog import backups as catalog
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.domain.backups import (
    BackupRecord,
    Manifest,
    expires_at,
    object_key,
    plan_retention,
)
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.postgres_dump import DumpProcess, PgServer, exported_snapshot
from rp9_pipelines.resources.s3 import SERVER_SIDE_ENCRYPTION, S3Resource, StoredObject

Log = Callable[[str], None]


class BackupVerificationError(RuntimeError):
    """The stored object is not what was written."""


@dataclass(frozen=True)
class BackupOutcome:
    backup_id: uuid.UUID
    bucket: str
    key: str
    size: int
    sha256: str
    parts: int
    manifest: Manifest
    dump_seconds: float
    verify_seconds: float


def describe(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:2000]


def verify_object(s3: S3Resource, stored: StoredObject, into: IO[bytes] | None = None) -> None:
    """HEAD for the size and the encryption, then the bytes themselves, re-hashed (and kept in
    `into` when given)."""
    head = s3.head(stored.key)
    if head is None:
        raise BackupVerificationError(f"{stored.key} is missing right after its upload")
    if head.size != stored.size:
        raise BackupVerificationError(f"stored size {head.size} != written size {stored.size}")
    if head.server_side_encryption != SERVER_SIDE_ENCRYPTION:
        raise BackupVerificationError(
            f"server-side encryption was requested, the store reports "
            f"{head.server_side_encryption!r}"
        )
    size, sha256 = s3.read_sha256(stored.key, into=into)
    if (size, sha256) != (stored.size, stored.sha256):
        raise BackupVerificationError(
            f"read back {size} bytes with sha256 {sha256}, wrote {stored.size} with {stored.sha256}"
        )


def take_backup(
    catalog_db: CatalogResource,
    admin_url: str,
    s3: S3Resource,
    tenant: Tenant,
    kind: str,
    run_id: str | None,
    log: Log,
) -> BackupOutcome:
    s3 = s3.for_region(tenant.region)  # a region's tenants are backed up in its own bucket
    backup_id = uuid.uuid4()
    started = dt.datetime.now(dt.UTC)
    key = object_key(tenant.slug, kind, started, backup_id)
    with catalog_db.begin() as connection:
        catalog.insert_backup(
            connection,
            backup_id=backup_id,
            tenant_id=tenant.id,
            kind=kind,
            bucket=s3.bucket,
            key=key,
            run_id=run_id,
            started_at=started,
            expires_at=expires_at(kind, started),
        )
    log(f"backup {backup_id} ({kind}) of {tenant.slug} → s3://{s3.bucket}/{key}")
    try:
        outcome = _dump_and_verify(PgServer.from_url(admin_url), s3, tenant, key, backup_id, kind)
    except BaseException as error:  # a cancelled run is a failed backup too
        with catalog_db.begin() as connection:
            catalog.fail_backup(connection, backup_id, describe(error))
        # An object that failed verification must not outlive its row's `failed`.
        with suppress(Exception):
            s3.delete(key)
        raise
    with catalog_db.begin() as connection:
        catalog.finish_backup(
            connection,
            backup_id,
            size=outcome.size,
            sha256=outcome.sha256,
            manifest=outcome.manifest,
        )
    megabytes = outcome.size / 1e6
    log(
        f"backup {backup_id} ok: {megabytes:.1f} MB in {outcome.parts} part(s), "
        f"{megabytes / max(outcome.dump_seconds, 1e-6):.1f} MB/s dumped and stored, verified in "
        f"{outcome.verify_seconds:.1f} s; sha256 {outcome.sha256}; {outcome.manifest.as_json()}"
    )
    return outcome


def _dump_and_verify(
    server: PgServer, s3: S3Resource, tenant: Tenant, key: str, backup_id: uuid.UUID, kind: str
) -> BackupOutcome:
    s3.ensure_bucket()
    metadata = {"tenant": tenant.slug, "kind": kind, "backup-id": str(backup_id)}
    started = time.monotonic()
    with (
        exported_snapshot(server, tenant.names) as (snapshot, manifest),
        s3.multipart(key, metadata) as upload,
        DumpProcess(server, tenant.names, snapshot) as dump,
    ):
        upload.pump(dump.stdout)
        dump.wait()
        stored = upload.complete()
    dumped = time.monotonic()
    verify_object(s3, stored)
    return BackupOutcome(
        backup_id=backup_id,
        bucket=s3.bucket,
        key=key,
        size=stored.size,
        sha256=stored.sha256,
        parts=stored.parts,
        manifest=manifest,
        dump_seconds=dumped - started,
        verify_seconds=time.monotonic() - dumped,
    )


@dataclass(frozen=True)
class RetentionOutcome:
    expired: tuple[BackupRecord, ...]
    kept_last_ok: tuple[BackupRecord, ...]


def apply_retention(
    catalog_db: CatalogResource, s3: S3Resource, now: dt.datetime, log: Log
) -> RetentionOutcome:
    """The object goes before the row says `expired`: if the run dies in between, the next run
    deletes (idempotently) again, and no row ever claims an object is gone while it is not."""
    with catalog_db.begin() as connection:
        purged = catalog.purged_tenant_ids(connection)
        plan = plan_retention(catalog.backup_records(connection), now, purged)
    for backup in plan.kept_last_ok:
        log(f"keeping {backup.key}: expired, but its tenant's last ok backup")
    for backup in plan.expire:
        s3.delete(backup.key, backup.bucket)
        if s3.head(backup.key, backup.bucket) is not None:
            raise RuntimeError(f"{backup.key} is still stored after its deletion")
        with catalog_db.begin() as connection:
            catalog.mark_expired(connection, backup.id)
        log(f"expired {backup.key} ({backup.kind}, {backup.status}, due {backup.expires_at})")
    return RetentionOutcome(plan.expire, plan.kept_last_ok)
