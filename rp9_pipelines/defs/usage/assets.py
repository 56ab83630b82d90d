"""Usage as data products: each tenant's day measured into `usage`, its business metrics
upserted into Supabase, and the monthly chargeback (catalog, S3 CSV, Supabase)."""

import datetime as dt
from typing import Any

import dagster as dg

from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.defs.partitions import (
    DAY_DIMENSION,
    monthly_partitions,
    tenant_day,
    tenant_day_partitions,
)
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines.resources.stripe import StripeResource
from rp9_pipelines.resources.supabase import SupabaseResource
from rp9_pipelines.services.chargeback import chargeback_month
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


# A month reads every tenant's days of that month.
month_of_days = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=DAY_DIMENSION)


@dg.asset(
    partitions_def=monthly_partitions,
    deps=[dg.AssetDep(tenant_usage_daily, partition_mapping=month_of_days)],
    group_name=USAGE_GROUP,
    kinds={"pandas", "s3"},
)
def tenant_chargeback(
    context: dg.AssetExecutionContext,
    catalog: CatalogResource,
    s3: S3Resource,
    supabase: SupabaseResource,
    stripe: StripeResource,
    settings: dg.ResourceParam[PlatformSettings],
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """Each tenant's month: executions and duration plus CPU core-hours and memory GB-hours at
    the configured rates (`CHARGEBACK_*`), with the idle capacity shared out in proportion to
    usage cost (OpenCost's model); margin against Stripe list prices where they are known.
    Written to the catalog (`chargeback`), to S3 as CSV and to Supabase (`chargeback_monthly`)."""
    month = context.partition_key[:7]
    outcome = chargeback_month(
        catalog, s3, supabase, stripe.client, settings.chargeback, month, context.log.info
    )
    totals = outcome.result.totals
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(outcome.rows),
            "month": month,
            "capacity_cost": totals.capacity_cost,
            "used_cost": totals.used_cost,
            "idle_cost": totals.idle_cost,
            "total_cost": totals.total_cost,
            **_present(
                {
                    "cpu_utilisation": totals.cpu_utilisation,
                    "memory_utilisation": totals.memory_utilisation,
                    "csv": f"s3://{s3.bucket}/{outcome.csv_key}" if outcome.csv_key else None,
                }
            ),
            "plans_without_prices": ", ".join(outcome.unpriced_plans) or "none",
            "currency": settings.chargeback.currency,
        }
    )


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=[tenant_usage_daily, supabase_business_metrics, tenant_chargeback])
