"""Backups: one job per tenant and kind (tagged with the tenant, so it never overlaps a change
to it), daily and weekly schedules that launch one run per active tenant, and retention."""

import datetime as dt
from typing import Any

import dagster as dg

from rp9_pipelines import launches
from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.domain.backups import RETENTION, SCHEDULED_KINDS, scheduled_runs
from rp9_pipelines.launches import BACKUP_KIND, KIND_TAG
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines.resources.tenant_db import TenantDatabaseResource
from rp9_pipelines.services import tenant_health
from rp9_pipelines.services.backups import apply_retention, take_backup


class BackupRequest(dg.Config):
    tenant_id: str
    kind: str = "on_demand"


class RetentionRequest(dg.Config):
    as_of: str | None = None  # ISO 8601; the retention clock (default: now)


@dg.op
def backup_database(
    context: dg.OpExecutionContext,
    config: BackupRequest,
    catalog: CatalogResource,
    tenant_db: TenantDatabaseResource,
    s3: S3Resource,
) -> dict[str, Any]:
    """pg_dump of the tenant's snapshot streamed into S3 with its manifest; `ok` only once the
    stored object was read back with the recorded size and sha256."""
    if config.kind not in RETENTION:
        raise ValueError(f"unknown backup kind {config.kind!r}; one of {sorted(RETENTION)}")
    with catalog.begin() as connection:
        tenant = tenant_catalog.require_tenant(connection, config.tenant_id)
    outcome = take_backup(
        catalog,
        tenant_db.admin_url,
        s3,
        tenant,
        config.kind,
        context.run_id,
        context.log.info,
    )
    tenant_health.record(
        context,
        catalog,
        tenant_health.BACKUPS,
        tenant.slug,
        backup_id=str(outcome.backup_id),
        kind=config.kind,
        size_bytes=outcome.size,
        sha256=outcome.sha256,
    )
    return {
        "backup_id": str(outcome.backup_id),
        "key": outcome.key,
        "size": outcome.size,
        "sha256": outcome.sha256,
        "manifest": outcome.manifest.as_json(),
    }


# The queue (`dagster.yaml`) runs a few backups at a time across tenants, by this kind.
@dg.job(tags={KIND_TAG: BACKUP_KIND}, executor_def=dg.in_process_executor)
def backup_tenant() -> None:
    """Back up one tenant's n8n data (schema or database) to S3, verified."""
    backup_database()


def backup_schedule(kind: str, cron: str) -> dg.ScheduleDefinition:
    name = f"{kind}_backups"

    @dg.schedule(
        name=name,
        cron_schedule=cron,
        job=backup_tenant,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    def schedule(
        context: dg.ScheduleEvaluationContext, catalog: CatalogResource
    ) -> list[dg.RunRequest] | dg.SkipReason:
        with catalog.begin() as connection:
            tenants = tenant_catalog.list_tenants(connection)
        at = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
        runs = scheduled_runs(
            [(str(t.id), t.slug, t.status) for t in tenants], f"backup-{kind}", at
        )
        if not runs:
            return dg.SkipReason("no active tenant to back up")
        return [
            launches.backup(run.tenant_id, run.slug, kind, requested_by=name).run_request(
                run_key=run.run_key
            )
            for run in runs
        ]

    return schedule


CRONS = {"daily": "0 2 * * *", "weekly": "0 3 * * 0"}
backup_schedules = [backup_schedule(kind, CRONS[kind]) for kind in SCHEDULED_KINDS]


@dg.op
def expire_backups(
    context: dg.OpExecutionContext,
    config: RetentionRequest,
    catalog: CatalogResource,
    s3: S3Resource,
) -> dict[str, int]:
    """Delete every backup past its expiry from S3 and mark it `expired`, except each tenant's
    last `ok` backup."""
    now = dt.datetime.fromisoformat(config.as_of) if config.as_of else dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("as_of needs a timezone (e.g. 2026-12-01T00:00:00+00:00)")
    outcome = apply_retention(catalog, s3, now, context.log.info)
    context.log.info(
        f"retention at {now.isoformat()}: {len(outcome.expired)} expired, "
        f"{len(outcome.kept_last_ok)} kept as their tenant's last ok backup"
    )
    return {"expired": len(outcome.expired), "kept_last_ok": len(outcome.kept_last_ok)}


@dg.job(tags={KIND_TAG: "backup_retention"}, executor_def=dg.in_process_executor)
def backup_retention() -> None:
    """Apply the retention policy (daily 7 d, weekly 30 d) to every tenant's backups."""
    expire_backups()


backup_retention_schedule = dg.ScheduleDefinition(
    name="backup_retention_daily",
    job=backup_retention,
    cron_schedule="30 4 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        jobs=[backup_tenant, backup_retention],
        schedules=[*backup_schedules, backup_retention_schedule],
    )
