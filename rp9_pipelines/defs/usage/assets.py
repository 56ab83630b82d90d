"""Usage as data products: each tenant's day measured into `usage`, and its business metrics
upserted into Supabase (the monthly chargeback that reads them is in `defs/chargeback/`)."""

import datetime as dt
from typing import Any

import dagster as dg

from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.defs.partitions import tenant_day, tenant_day_partitions
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.resources.supabase import SupabaseResource
from rp9_pipelines.services.usage import collect_day, push_business_metrics
from rp9_pipelines.settings import PlatformSettings

USAGE_GROUP = "usage"


def _present(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if value is not None}


@dg.asset(partitions_def=tenant_day_partitions, group_name=USAGE_GROUP, kinds={"postgres"})
def tenant_usage_daily(
    context: dg.AssetExecutionContext,
    catalog: CatalogResource,
    n8n_data: N8nDataResource,
    settings: dg.ResourceParam[PlatformSettings],
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """One tenant's UTC day in `usage`: production executions, failures, duration sum, latency
    p95 (`stoppedAt - startedAt`) and queue-wait p95 (`startedAt - createdAt`) from its n8n's
    `execution_entity`; CPU-seconds and memory GB-hours from the container samples. An upsert:
    materialising the partition again gives the same row."""
    slug, day = tenant_day(context)
    with catalog.begin() as connection:
        tenant = tenant_catalog.require_tenant(connection, slug)
    max_gap = dt.timedelta(seconds=settings.usage.sample_max_gap_s)
    collected = collect_day(catalog, n8n_data, tenant, day, max_gap)
    if collected.kept_existing:
        context.log.warning(
            f"{slug}'s n8n tables are gone; the {day} row measured earlier is kept as it was"
        )
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": 1,
            **_present(collected.usage.as_row()),
            "samples": collected.samples,
            "changed": collected.changed,
            "kept_existing": collected.kept_existing,
        }
    )


@dg.asset(
    partitions_def=tenant_day_partitions,
    deps=[tenant_usage_daily],
    group_name=USAGE_GROUP,
    kinds={"supabase"},
)
def supabase_business_metrics(
    context: dg.AssetExecutionContext, catalog: CatalogResource, supabase: SupabaseResource
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """The tenant's day in Supabase's `business_metrics_daily` (upsert on tenant and day),
    recorded in the `usage_reports` ledger (destination `supabase`)."""
    slug, day = tenant_day(context)
    with catalog.begin() as connection:
        tenant = tenant_catalog.require_tenant(connection, slug)
    pushed = push_business_metrics(catalog, supabase, tenant, day)
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": 1,
            "executions": pushed.row["executions"],
            "failures": pushed.row["failures"],
            "ledger_identifier": pushed.identifier,
        }
    )


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=[tenant_usage_daily, supabase_business_metrics])
