"""The platform's own backups: the catalog, the Dagster instance's storage and the secrets, as a
verified set per run, daily and weekly, with the tenants' retention rules."""

import datetime as dt
from typing import Any

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRunStatus

from rp9_pipelines.domain.backups import RETENTION
from rp9_pipelines.launches import KIND_TAG
from rp9_pipelines.resources.stack import PlatformBackupResources
from rp9_pipelines.services.platform_backups import (
    DagsterStorage,
    apply_retention,
    fail_interrupted,
    take_platform_backup,
)

PLATFORM_BACKUP_KIND = "platform_backup"
IN_FLIGHT = {
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
}


class PlatformBackupRequest(dg.Config):
    kind: str = "on_demand"


def dagster_storage(instance: dg.DagsterInstance) -> DagsterStorage:
    """SQLite under the instance's home, or the Postgres database its run storage uses."""
    url = getattr(instance.run_storage, "postgres_url", None)
    if url:
        return DagsterStorage("postgres", str(url))
    return DagsterStorage("sqlite", str(instance.root_directory))


@dg.op
def back_up_platform(
    context: dg.OpExecutionContext,
    config: PlatformBackupRequest,
    platform_backup: PlatformBackupResources,
) -> dict[str, Any]:
    """Fail what dead runs left `running`, take the set (catalog, Dagster, secrets: each read
    back and checked before it is `ok`), then apply retention."""
    if config.kind not in RETENTION:
        raise ValueError(f"unknown backup kind {config.kind!r}; one of {sorted(RETENTION)}")

    def run_alive(run_id: str) -> bool:
        run = context.instance.get_run_by_id(run_id) if run_id else None
        return run is not None and (run.run_id == context.run_id or run.status in IN_FLIGHT)

    fail_interrupted(platform_backup, run_alive, context.log.info)
    outcome = take_platform_backup(
        platform_backup,
        dagster_storage(context.instance),
        config.kind,
        context.run_id,
        context.log.info,
    )
    expired = apply_retention(platform_backup, dt.datetime.now(dt.UTC), context.log.info)
    context.log.info(f"platform backup set {outcome.set_id} ok; {expired} expired")
    return {"set_id": str(outcome.set_id), "parts": [p.key for p in outcome.parts]}


@dg.job(tags={KIND_TAG: PLATFORM_BACKUP_KIND}, executor_def=dg.in_process_executor)
def backup_platform() -> None:
    """Back up the catalog database, the Dagster storage and a sealed secrets snapshot to S3."""
    back_up_platform()


def _schedule(kind: str, cron: str) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=f"platform_{kind}_backup",
        job=backup_platform,
        cron_schedule=cron,
        execution_timezone="UTC",
        run_config={"ops": {"back_up_platform": {"config": {"kind": kind}}}},
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )


platform_backup_schedules = [_schedule("daily", "30 1 * * *"), _schedule("weekly", "45 1 * * 0")]


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[backup_platform], schedules=platform_backup_schedules)
