"""Restore drills: a job (on demand through the API, or from the quarterly schedule) that
proves a tenant's backup restores into a working n8n. A failed drill fails its run."""

import datetime as dt
import random
import uuid
from typing import Any

import dagster as dg

from rp9_pipelines import launches
from rp9_pipelines.catalog import backups as backup_catalog
from rp9_pipelines.catalog import restore_drills as drill_catalog
from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.domain.backups import scheduled_runs
from rp9_pipelines.domain.restore_drills import SandboxNames, choose_drill_backup
from rp9_pipelines.launches import KIND_TAG, RESTORE_DRILL_KIND
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.stack import DrillResources
from rp9_pipelines.services import tenant_health
from rp9_pipelines.services.backups import describe
from rp9_pipelines.services.restore_drills import run_drill, sweep_sandboxes

SCHEDULE_NAME = "quarterly_restore_drills"


class DrillRequest(dg.Config):
    tenant_id: str
    backup_id: str | None = None  # default: a random ok backup of the last 30 days


@dg.op
def run_restore_drill(
    context: dg.OpExecutionContext, config: DrillRequest, drill: DrillResources
) -> dict[str, Any]:
    """Restore a backup into a sandbox database, boot n8n on it with the tenant's key, check
    workflows, credentials and a canary execution, tear down, and record the RTO."""
    now = dt.datetime.now(dt.UTC)
    sweep_sandboxes(drill, now, context.log.info)
    requested = uuid.UUID(config.backup_id) if config.backup_id else None
    with drill.catalog.begin() as connection:
        tenant = tenant_catalog.require_tenant(connection, config.tenant_id)
        records = backup_catalog.backup_records(connection, tenant.id, include_expired=True)
        chosen = choose_drill_backup(records, tenant.id, now, random.SystemRandom(), requested)
        backup = backup_catalog.get_backup(connection, chosen.id)
        drill_id = uuid.uuid4()
        drill_catalog.insert_drill(
            connection,
            drill_id=drill_id,
            tenant_id=tenant.id,
            backup_id=chosen.id,
            sandbox=SandboxNames.for_drill(drill_id).container,
            run_id=context.run_id,
        )
    assert backup is not None
    context.log.info(
        f"drill {drill_id} of {tenant.slug}: backup {chosen.id} ({chosen.kind}, "
        f"{chosen.started_at:%Y-%m-%d %H:%M} UTC)"
    )
    try:
        outcome = run_drill(drill, tenant, backup, drill_id, context.log.info)
    except BaseException as error:  # interrupted: the teardown ran, the row must not say running
        with drill.catalog.begin() as connection:
            drill_catalog.finish_drill(
                connection,
                drill_id,
                passed=False,
                checks=[],
                rto_seconds=None,
                error=describe(error),
            )
        raise
    with drill.catalog.begin() as connection:
        drill_catalog.finish_drill(
            connection,
            drill_id,
            passed=outcome.passed,
            checks=list(outcome.checks),
            rto_seconds=outcome.rto_seconds,
            error=outcome.error,
        )
    checks = {c.name: ("ok: " if c.ok else "FAILED: ") + c.detail for c in outcome.checks}
    if not outcome.passed:
        failed = ", ".join(c.name for c in outcome.failed_checks()) or "an error"
        raise dg.Failure(
            description=f"restore drill {drill_id} failed: {failed}"
            + (f" ({outcome.error})" if outcome.error else ""),
            metadata=checks,
        )
    context.log.info(f"drill {drill_id} passed; RTO {outcome.rto_seconds:.1f} s")
    tenant_health.record(
        context,
        drill.catalog,
        tenant_health.DRILLS,
        tenant.slug,
        drill_id=str(drill_id),
        backup_id=str(chosen.id),
        rto_seconds=outcome.rto_seconds,
    )
    return {
        "drill_id": str(drill_id),
        "backup_id": str(chosen.id),
        "rto_seconds": outcome.rto_seconds,
        "checks": checks,
    }


# The queue (`dagster.yaml`) runs one drill at a time, by this kind.
@dg.job(tags={KIND_TAG: RESTORE_DRILL_KIND}, executor_def=dg.in_process_executor)
def restore_drill() -> None:
    """Prove a tenant's backup restores: sandbox database and n8n, checks, teardown, RTO."""
    run_restore_drill()


@dg.schedule(
    name=SCHEDULE_NAME,
    cron_schedule="0 5 1 1,4,7,10 *",
    job=restore_drill,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def quarterly_restore_drills(
    context: dg.ScheduleEvaluationContext, catalog: CatalogResource
) -> list[dg.RunRequest] | dg.SkipReason:
    """One drill per active tenant, on a random recent backup; at most one runs at a time."""
    with catalog.begin() as connection:
        tenants = tenant_catalog.list_tenants(connection)
    at = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
    runs = scheduled_runs([(str(t.id), t.slug, t.status) for t in tenants], "drill", at)
    if not runs:
        return dg.SkipReason("no active tenant to drill")
    return [
        launches.restore_drill(run.tenant_id, run.slug, requested_by=SCHEDULE_NAME).run_request(
            run_key=run.run_key
        )
        for run in runs
    ]


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[restore_drill], schedules=[quarterly_restore_drills])
