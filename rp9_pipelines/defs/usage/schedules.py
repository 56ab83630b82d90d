"""Usage automation: every tenant gets its partition key, yesterday's usage is materialised
for every billable tenant after midnight UTC, and containers are sampled every minute."""

import datetime as dt
from typing import Any

import dagster as dg

from rp9_pipelines import launches
from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.defs.partitions import (
    TENANTS_PARTITION,
    missing_tenant_keys,
    tenant_day_key,
    tenant_partitions,
)
from rp9_pipelines.launches import KIND_TAG
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.docker_runtime import DockerRuntimeResource
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.services.usage import TALLIED_STATUSES, sample_resources, tally_executions
from rp9_pipelines.settings import PlatformSettings, UsageSettings

# Tenants whose day is measured: suspended ones ran executions before they were suspended.
MEASURED = frozenset({"active", "suspended"})

# The assets (`assets.py`) are selected by key, so that no module of `defs/` imports another.
usage_daily_job = dg.define_asset_job(
    "usage_daily",
    selection=[dg.AssetKey("tenant_usage_daily"), dg.AssetKey("supabase_business_metrics")],
    tags={KIND_TAG: "usage"},
    executor_def=dg.in_process_executor,
)


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def register_tenant_partitions(
    context: dg.SensorEvaluationContext, catalog: CatalogResource
) -> dg.SensorResult | dg.SkipReason:
    """Gives every tenant in the catalog its `tenants` partition key (tenant slugs), so a new
    tenant's usage can be materialised within a minute of its creation."""
    with catalog.begin() as connection:
        slugs = [t.slug for t in tenant_catalog.list_tenants(connection)]
    missing = missing_tenant_keys(context.instance, slugs)
    if not missing:
        return dg.SkipReason(f"all {len(slugs)} tenants have their partition key")
    return dg.SensorResult(
        dynamic_partitions_requests=[tenant_partitions.build_add_request(missing)]
    )


DAILY_SCHEDULE = "usage_daily_schedule"


def build_usage_daily_schedule(settings: UsageSettings) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=DAILY_SCHEDULE,
        cron_schedule=settings.daily_cron,
        job=usage_daily_job,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
    )
    def usage_daily_schedule(
        context: dg.ScheduleEvaluationContext, catalog: CatalogResource
    ) -> list[dg.RunRequest] | dg.SkipReason:
        """Yesterday's (UTC) usage of every active or suspended tenant, one run each."""
        at = context.scheduled_execution_time or dt.datetime.now(dt.UTC)
        day = (at.astimezone(dt.UTC) - dt.timedelta(days=1)).date().isoformat()
        with catalog.begin() as connection:
            slugs = [
                t.slug for t in tenant_catalog.list_tenants(connection) if t.status in MEASURED
            ]
        if not slugs:
            return dg.SkipReason("no active tenant")
        missing = missing_tenant_keys(context.instance, slugs)
        if missing:
            # The sensor adds keys within a minute; a tenant created since still gets its run.
            context.instance.add_dynamic_partitions(TENANTS_PARTITION, missing)
        launch = launches.usage_daily(requested_by=DAILY_SCHEDULE)
        return [
            launch.run_request(
                run_key=f"usage:{day}:{slug}", partition_key=tenant_day_key(day, slug)
            )
            for slug in slugs
        ]

    return usage_daily_schedule


@dg.op
def sample_containers(
    context: dg.OpExecutionContext,
    catalog: CatalogResource,
    docker_runtime: DockerRuntimeResource,
    n8n_data: N8nDataResource,
    settings: dg.ResourceParam[PlatformSettings],
) -> dict[str, Any]:
    """Read cumulative CPU time and memory of every running tenant container into
    `resource_samples`; once an hour, delete samples past their retention. Then tally the
    executions every tenant's n8n recorded since the last minute (`execution_tally`)."""
    now = dt.datetime.now(dt.UTC)
    sampled = sample_resources(
        catalog,
        docker_runtime.engines(),
        dt.timedelta(days=settings.usage.sample_retention_days),
        prune=now.minute == 0,
    )
    unknown = ", ".join(sampled.unknown_tenants)
    context.log.info(
        f"{sampled.recorded} sample(s) of {sampled.containers} container(s) recorded, "
        f"{sampled.pruned} pruned" + (f"; not in the catalog: {unknown}" if unknown else "")
    )
    with catalog.begin() as connection:
        tallied = [
            (t.id, t.names)
            for t in tenant_catalog.list_tenants(connection)
            if t.status in TALLIED_STATUSES
        ]
    unreadable = tally_executions(catalog, n8n_data, tallied)
    for slug, error in unreadable.items():
        context.log.warning(f"executions of {slug} not tallied: {error}")
    return {
        "containers": sampled.containers,
        "recorded": sampled.recorded,
        "pruned": sampled.pruned,
        "tallied": len(tallied) - len(unreadable),
    }


@dg.job(tags={KIND_TAG: "usage_sampling"}, executor_def=dg.in_process_executor)
def sample_resources_job() -> None:
    """Sample CPU and memory of every tenant container (the source of usage's CPU-seconds
    and memory GB-hours)."""
    sample_containers()


def build_sampling_schedule(settings: UsageSettings) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="resource_sampling",
        job=sample_resources_job,
        cron_schedule="* * * * *",
        execution_timezone="UTC",
        default_status=(
            dg.DefaultScheduleStatus.RUNNING
            if settings.sampling_enabled
            else dg.DefaultScheduleStatus.STOPPED
        ),
    )


@dg.definitions
def defs() -> dg.Definitions:
    settings = PlatformSettings().usage
    return dg.Definitions(
        jobs=[usage_daily_job, sample_resources_job],
        schedules=[build_usage_daily_schedule(settings), build_sampling_schedule(settings)],
        sensors=[register_tenant_partitions],
    )
