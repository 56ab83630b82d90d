"""Restore drills: a job (on demand through the API, or from the quarterly schedule) that
proves a tenant's backup restores into a working n8n. A failed drill fails its run."""

import datetime as dt
import random
import uuid
from typing import Any

import dagster as dg

from rp9_pipelines.catalog import backups as backup_catalog
from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.defs.backups.jobs import load_tenant
from rp9_pipelines.domain.backups import SandboxNames, choose_drill_backup, scheduled_runs
from rp9_pipelines.launches import DRILL_TENANT_TAG, KIND_TAG, TENANT_ID_TAG
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.services.backups import describe
from rp9_pipelines.services.restore_drills import DrillResources, run_drill, sweep_sandboxes

DRILL_RUN_KIND = "restore_drill"
RESOURCES = {"catalog", "tenant_db", "s3", "docker_runtime", "platform", "secret_files", "vault"}


class DrillRequest(dg.Config):
    tenant_id: str
    backup_id: str | None = None  # default: a random ok backup of the last 30 days


def _resources(context: dg.OpExecutionContext) -> DrillResources:
    res: Any = context.resources
    return DrillResources(
        catalog=res.catalog,
        admin_url=res.tenant_db.admin_url,
        s3=res.s3,
        docker_runtime=res.docker_runtime,
        platform=res.platform,
        secret_files=res.secret_files,
        vault=res.vault,
    )


@dg.op(required_resource_keys=RESOURCES)
def run_restore_drill(context: dg.OpExecutionContext, config: DrillRequest) -> dict[str, Any]:
    """Restore a backup into a sandbox database, boot n8n on it with the tenant's key, check
    workflows, credentials and a canary execution, tear down, and record the RTO."""
    r = _resources(context)
    now = dt.datetime.now(dt.UTC)
    sweep_sandboxes(r, now, context.log.info)
    tenant = load_tenant(r.catalog, config.tenant_id)
    requested = uuid.UUID(config.backup_id) if config.backup_id else None
    with r.catalog.begin() as connection:
        records = backup_catalog.backup_records(connection, tenant.id, include_expired=True)
        chosen = choose_drill_backup(records, tenant.id, now, random.SystemRandom(), requested)
        backup = backup_catalog.get_backup(connection, chosen.id)
        drill_id = uuid.uuid4()
        backup_catalog.insert_drill(
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
        outcome = run_drill(r, tenant, backup, drill_id, context.log.info)
    except BaseException as error:  # interrupted: the teardown ran, the row must not say running
        with r.catalog.begin() as connection:
            backup_catalog.finish_drill(
                connection,
                drill_id,
                passed=False,
                checks=[],
                rto_seconds=None,
                error=describe(error),
            )
        raise
    with r.catalog.begin() as connection:
        backup_catalog.finish_drill(
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
    return {
        "drill_id": str(drill_id),
        "backup_id": str(chosen.id),
        "rto_seconds": outcome.rto_seconds,
        "checks": checks,
    }


@dg.job(tags={KIND_TAG: DRILL_RUN_KIND}, executor_def=dg.in_process_executor)
def restore_drill() -> None:
    """Prove a tenant's backup restores: sandbox database and n8n, checks, teardown, RTO."""
    run_restore_drill()


@dg.schedule(
    name="quarterly_restore_drills",
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
        dg.RunRequest(
            run_key=run.run_key,
            run_config={"ops": {"run_restore_drill": {"config": {"tenant_id": run.tenant_id}}}},
            tags={DRILL_TENANT_TAG: run.slug, TENANT_ID_TAG: run.tenant_id},
        )
        for run in runs
    ]


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[restore_drill], schedules=[quarterly_restore_drills])
