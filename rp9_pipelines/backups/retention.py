"""Retention: delete what the policy says is expired, from S3 first and then in the catalog."""

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

from rp9_pipelines.catalog import backups as catalog
from rp9_pipelines.domain.backups import BackupRecord, plan_retention
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.s3 import S3Resource

Log = Callable[[str], None]


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
        plan = plan_retention(catalog.backup_records(connection), now)
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
