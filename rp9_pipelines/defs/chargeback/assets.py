"""The monthly chargeback as a data product: each tenant's month costed, written to the catalog,
to S3 as CSV and to Supabase."""

import dagster as dg

from rp9_pipelines.defs.partitions import DAY_DIMENSION, monthly_partitions
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines.resources.stripe import StripeResource
from rp9_pipelines.resources.supabase import SupabaseResource
from rp9_pipelines.services.chargeback import chargeback_month
from rp9_pipelines.settings import PlatformSettings

CHARGEBACK_GROUP = "chargeback"

# A month reads every tenant's days of that month.
month_of_days = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name=DAY_DIMENSION)


# The usage asset (`defs/usage/assets.py`) is named by key, so that no module of `defs/`
# imports another.
@dg.asset(
    partitions_def=monthly_partitions,
    deps=[dg.AssetDep(dg.AssetKey("tenant_usage_daily"), partition_mapping=month_of_days)],
    group_name=CHARGEBACK_GROUP,
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
    optional = {
        "cpu_utilisation": totals.cpu_utilisation,
        "memory_utilisation": totals.memory_utilisation,
        "csv": f"s3://{s3.bucket}/{outcome.csv_key}" if outcome.csv_key else None,
    }
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": len(outcome.rows),
            "month": month,
            "capacity_cost": totals.capacity_cost,
            "used_cost": totals.used_cost,
            "idle_cost": totals.idle_cost,
            "total_cost": totals.total_cost,
            **{name: value for name, value in optional.items() if value is not None},
            "plans_without_prices": ", ".join(outcome.unpriced_plans) or "none",
            "currency": settings.chargeback.currency,
        }
    )


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(assets=[tenant_chargeback])
