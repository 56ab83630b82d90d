"""Stripe: the catalog (plans → meter, products, prices, features) and customers, executions
reported to the Billing Meter per tenant and day, and entitlements synced back into quotas."""

import dagster as dg

from rp9_pipelines import launches
from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.defs.partitions import tenant_day, tenant_day_partitions
from rp9_pipelines.launches import KIND_TAG
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.stripe import StripeResource
from rp9_pipelines.services.billing import MeterReporter, ensure_customer, sync_all, sync_catalog

USAGE_ASSET = dg.AssetKey("tenant_usage_daily")
METER_ASSET = dg.AssetKey("stripe_meter_events")
BILLABLE = frozenset({"active", "suspended"})
# How many usage materializations one sensor tick turns into meter runs.
SENSOR_BATCH = 200


@dg.asset(
    key=METER_ASSET,
    partitions_def=tenant_day_partitions,
    deps=[USAGE_ASSET],
    group_name="billing",
    kinds={"stripe"},
)
def stripe_meter_events(
    context: dg.AssetExecutionContext, catalog: CatalogResource, stripe: StripeResource
) -> dg.MaterializeResult:  # type: ignore[type-arg]
    """The tenant's executions of the day as reported to Stripe's `rp9_executions` meter:
    only the difference between `usage` and the `usage_reports` ledger is sent, under
    deterministic identifiers, so a re-materialisation or a retry never bills twice."""
    slug, day = tenant_day(context)
    with catalog.begin() as connection:
        tenant = tenant_catalog.require_tenant(connection, slug)
    report = MeterReporter(stripe.client, catalog.engine, context.log.info).report_day(tenant, day)
    if report.failed:
        raise dg.Failure(
            description=f"{len(report.failed)} report(s) to Stripe failed; a re-run retries them "
            "with the same identifiers",
            metadata={ident: message for ident, message in report.failed.items()},
        )
    return dg.MaterializeResult(metadata=report.metadata())


@dg.op
def sync_plans_to_stripe(
    context: dg.OpExecutionContext, catalog: CatalogResource, stripe: StripeResource
) -> dict[str, dict[str, str]]:
    """Meter, features, a product per plan with its features, base and metered prices."""
    outcome = sync_catalog(stripe.client, catalog.engine, context.log.info)
    context.log.info(
        f"created {len(outcome.created)}, found {len(outcome.found)}, "
        f"attached {len(outcome.attached)} feature(s)"
    )
    return outcome.plans


@dg.op
def ensure_customers(
    context: dg.OpExecutionContext,
    catalog: CatalogResource,
    stripe: StripeResource,
    plans: dict[str, dict[str, str]],
) -> int:
    """A Stripe customer for every billable tenant that has none yet."""
    with catalog.begin() as connection:
        tenants = [t for t in tenant_catalog.list_tenants(connection) if t.status in BILLABLE]
    for tenant in tenants:
        ensure_customer(stripe.client, catalog.engine, tenant)
    context.log.info(f"{len(tenants)} billable tenant(s) have a customer; plans: {sorted(plans)}")
    return len(tenants)


@dg.job(tags={KIND_TAG: "billing"}, executor_def=dg.in_process_executor)
def sync_stripe_catalog() -> None:
    """Create or find the Stripe catalog of the plans, then the tenants' customers."""
    ensure_customers(sync_plans_to_stripe())


@dg.op
def sync_stripe_entitlements(
    context: dg.OpExecutionContext, catalog: CatalogResource, stripe: StripeResource
) -> int:
    """Every customer's active entitlements → its tenant's `stripe` quotas (and plan)."""
    run = sync_all(stripe.client, catalog.engine, context.log.info)
    changed = [s.slug for s in run.synced if s.plan_changed]
    context.log.info(f"{len(run.synced)} customer(s) synced; plan changed: {changed or 'none'}")
    if run.gone:
        # Every other customer is synced; these tenants' quotas wait for an operator.
        raise dg.Failure(
            description=f"customers gone at Stripe, their tenants not synced: {run.gone}",
            metadata={"synced": len(run.synced), "gone": sorted(run.gone)},
        )
    return len(run.synced)


@dg.job(tags={KIND_TAG: "billing"}, executor_def=dg.in_process_executor)
def sync_entitlements() -> None:
    """Read every customer's entitlements and subscription back from Stripe (the webhook's
    safety net: a missed event is caught within one interval)."""
    sync_stripe_entitlements()


entitlements_schedule = dg.ScheduleDefinition(
    name="sync_entitlements_every_15_minutes",
    cron_schedule="*/15 * * * *",
    job=sync_entitlements,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

catalog_schedule = dg.ScheduleDefinition(
    name="sync_stripe_catalog_daily",
    cron_schedule="15 0 * * *",
    job=sync_stripe_catalog,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)

report_usage_job = dg.define_asset_job(
    "report_usage_to_stripe",
    selection=[METER_ASSET],
    tags={KIND_TAG: "billing"},
)


@dg.sensor(
    name="stripe_meter_after_usage",
    job=report_usage_job,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def stripe_meter_after_usage(
    context: dg.SensorEvaluationContext,
) -> dg.SensorResult | dg.SkipReason:
    """Each new materialisation of a tenant's usage day → a meter run for that partition,
    tagged with the tenant (run key: the materialisation's storage id, so never twice)."""
    after = int(context.cursor) if context.cursor else None
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=USAGE_ASSET, after_storage_id=after),
        limit=SENSOR_BATCH,
        ascending=True,
    ).records
    if not records:
        return dg.SkipReason("no new usage materialisation")
    requests = []
    for record in records:
        partition = record.partition_key
        if partition is None:
            continue
        # A multi-partition key is its dimensions' keys in name order: "<day>|<tenant>".
        _, _, slug = partition.partition("|")
        launch = launches.stripe_meter(slug)
        requests.append(
            launch.run_request(run_key=f"stripe-meter:{record.storage_id}", partition_key=partition)
        )
    return dg.SensorResult(run_requests=requests, cursor=str(records[-1].storage_id))
