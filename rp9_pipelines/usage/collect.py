"""The usage shells: gather, call the pure functions of `domain.usage` and
`domain.chargeback`, write the results (catalog, Supabase, S3)."""

import datetime as dt
import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import stripe

from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.catalog import usage as usage_catalog
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.domain import chargeback as chargeback_math
from rp9_pipelines.domain.billing import base_price_key, metered_price_key
from rp9_pipelines.domain.usage import (
    DayUsage,
    ExecutionDay,
    business_metrics_row,
    day_bounds,
    day_usage,
    resource_use,
    supabase_identifier,
)
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.s3 import SERVER_SIDE_ENCRYPTION, S3Resource
from rp9_pipelines.resources.supabase import SupabaseResource
from rp9_pipelines.resources.tenant_db import TenantDatabaseResource
from rp9_pipelines.usage.sampling import read_all, rows_for
from rp9_pipelines.usage.settings import ChargebackSettings

BUSINESS_METRICS_TABLE = "business_metrics_daily"
BUSINESS_METRICS_KEY = "tenant_id,day"
BUSINESS_METRICS_METRIC = "business_metrics"
CHARGEBACK_TABLE = "chargeback_monthly"
CHARGEBACK_KEY = "tenant_id,month"

Log = Callable[[str], None]


# Daily usage ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Collected:
    usage: DayUsage
    changed: bool
    samples: int
    # The tenant's n8n tables are gone (purged) while a row exists: the row was kept.
    kept_existing: bool = False


def collect_day(
    catalog: CatalogResource,
    tenant_db: TenantDatabaseResource,
    tenant: Tenant,
    day: dt.date,
    max_gap: dt.timedelta,
) -> Collected:
    """Measure the tenant's day and upsert it into `usage` (idempotent)."""
    executions = tenant_db.execution_day(tenant.names, day)
    start, end = day_bounds(day)
    with catalog.begin() as connection:
        samples = usage_catalog.samples_framing(connection, tenant.id, start, end)
        existing = usage_catalog.get_usage(connection, tenant.id, day)
        if executions is None and existing is not None:
            # Purged data must not erase what was measured (and billed) while it existed.
            kept = DayUsage(**{name: existing[name] for name in usage_catalog.USAGE_FIELDS})
            return Collected(kept, changed=False, samples=len(samples), kept_existing=True)
        figures = day_usage(
            executions or ExecutionDay(0, 0, 0, None, None),
            resource_use(samples, start, end, max_gap),
        )
        changed = usage_catalog.upsert_usage(connection, tenant.id, day, figures)
    return Collected(figures, changed, len(samples))


# Supabase -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pushed:
    row: dict[str, Any]
    identifier: str


def push_business_metrics(
    catalog: CatalogResource, supabase: SupabaseResource, tenant: Tenant, day: dt.date
) -> Pushed:
    """Upsert the tenant's day into Supabase, with a ledger row (pending → sent | failed)."""
    with catalog.begin() as connection:
        figures = usage_catalog.get_usage(connection, tenant.id, day)
    if figures is None:
        raise LookupError(f"no usage for {tenant.slug} on {day}: materialise tenant_usage_daily")
    row = business_metrics_row(str(tenant.id), tenant.slug, tenant.plan, day, figures)
    row["updated_at"] = dt.datetime.now(dt.UTC).isoformat()
    identifier = supabase_identifier(str(tenant.id), day)
    with catalog.begin() as connection:
        usage_catalog.ledger_pending(
            connection, tenant.id, day, identifier, BUSINESS_METRICS_METRIC, int(row["executions"])
        )
    try:
        supabase.upsert(BUSINESS_METRICS_TABLE, [row], on_conflict=BUSINESS_METRICS_KEY)
    except Exception as error:
        with catalog.begin() as connection:
            usage_catalog.ledger_done(
                connection, identifier, error=f"{type(error).__name__}: {error}"
            )
        raise
    with catalog.begin() as connection:
        usage_catalog.ledger_done(connection, identifier)
    return Pushed(row, identifier)


# Sampling -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sampled:
    containers: int
    recorded: int
    pruned: int
    unknown_tenants: list[str] = field(default_factory=list)


def sample_resources(
    catalog: CatalogResource, docker_client: Any, retention: dt.timedelta, prune: bool
) -> Sampled:
    readings = read_all(docker_client)
    with catalog.begin() as connection:
        known = {t.slug: t.id for t in tenant_catalog.list_tenants(connection)}
        rows = rows_for(readings, known)
        recorded = usage_catalog.insert_samples(connection, rows)
        pruned = (
            usage_catalog.prune_samples(connection, dt.datetime.now(dt.UTC) - retention)
            if prune
            else 0
        )
    unknown = sorted({r.tenant for r in readings if r.tenant not in known})
    return Sampled(len(readings), recorded, pruned, unknown)


# Chargeback -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MonthlyChargeback:
    month: str
    result: chargeback_math.Chargeback
    csv_key: str | None
    rows: list[dict[str, Any]]
    unpriced_plans: list[str]


def plan_prices(
    catalog: CatalogResource,
    stripe_client: stripe.StripeClient | None,
    plans: list[str],
    currency: str,
    log: Log,
) -> dict[str, chargeback_math.Price]:
    """List prices of the plans Stripe knows (by the platform's lookup keys), in currency units.
    A plan without a base price in `stripe_objects`, or whose prices Stripe cannot return, has
    no known revenue."""
    if stripe_client is None:
        return {}
    with catalog.begin() as connection:
        ids = usage_catalog.stripe_ids(
            connection,
            "price",
            [k for p in plans for k in (base_price_key(p), metered_price_key(p))],
        )
    prices: dict[str, chargeback_math.Price] = {}
    for plan in plans:
        base_id, metered_id = ids.get(base_price_key(plan)), ids.get(metered_price_key(plan))
        if base_id is None:
            continue
        try:
            base = stripe_client.v1.prices.retrieve(base_id)
            metered = stripe_client.v1.prices.retrieve(metered_id) if metered_id else None
        except stripe.StripeError as error:
            log(f"prices of plan {plan} unavailable from Stripe ({error}); revenue unknown")
            continue
        if base.currency != currency or (metered is not None and metered.currency != currency):
            log(f"plan {plan} is priced in another currency than {currency}; revenue unknown")
            continue
        prices[plan] = chargeback_math.Price(
            base=_amount(base) / 100,
            per_execution=_amount(metered) / 100 if metered is not None else 0.0,
        )
    return prices


def _amount(price: Any) -> float:
    decimal = getattr(price, "unit_amount_decimal", None)
    if decimal is not None:
        return float(decimal)
    return float(price.unit_amount or 0)


def compute_month(
    catalog: CatalogResource,
    settings: ChargebackSettings,
    month: str,
    stripe_client: stripe.StripeClient | None,
    log: Log,
) -> tuple[chargeback_math.Chargeback, pd.DataFrame, list[str]]:
    with catalog.begin() as connection:
        usage = usage_catalog.month_usage(connection, month)
    tenants = usage.groupby("tenant_id", sort=True)[["slug", "plan"]].last()
    plans = sorted(set(tenants["plan"]))
    prices = plan_prices(catalog, stripe_client, plans, settings.currency, log)
    by_tenant = {str(tenant_id): prices.get(plan) for tenant_id, plan in tenants["plan"].items()}
    result = chargeback_math.compute(
        usage, settings.rates(), settings.capacity(), chargeback_math.month_hours(month),
        by_tenant,
    )  # fmt: skip
    return result, tenants, [p for p in plans if p not in prices]


def _none_if_nan(value: Any) -> Any:
    return None if isinstance(value, float) and value != value else value


def chargeback_month(
    catalog: CatalogResource,
    s3: S3Resource | None,
    supabase: SupabaseResource | None,
    stripe_client: stripe.StripeClient | None,
    settings: ChargebackSettings,
    month: str,
    log: Log,
) -> MonthlyChargeback:
    """Compute the month, then write it: catalog `chargeback`, S3 CSV, Supabase."""
    result, tenants, unpriced = compute_month(catalog, settings, month, stripe_client, log)
    frame = result.tenants
    rows = [
        {str(key): _none_if_nan(value) for key, value in record.items()}
        for record in frame.to_dict(orient="records")
    ]
    catalog_rows = [{**row, "tenant_id": uuid.UUID(str(row["tenant_id"]))} for row in rows]
    with catalog.begin() as connection:
        usage_catalog.upsert_chargeback(connection, month, catalog_rows, settings.currency)
    csv_key = None
    if s3 is not None:
        csv_key = f"{settings.s3_prefix.strip('/')}/{month}.csv"
        export = frame.assign(
            slug=frame["tenant_id"].map(tenants["slug"]),
            plan=frame["tenant_id"].map(tenants["plan"]),
            month=month,
            currency=settings.currency,
        )
        body = io.StringIO()
        export.to_csv(body, index=False, float_format="%.6f")
        s3.ensure_bucket()
        s3.client().put_object(
            Bucket=s3.bucket, Key=csv_key, Body=body.getvalue().encode(),
            ContentType="text/csv", ServerSideEncryption=SERVER_SIDE_ENCRYPTION,
        )  # fmt: skip
    if supabase is not None and rows:
        now = dt.datetime.now(dt.UTC).isoformat()
        supabase.upsert(
            CHARGEBACK_TABLE,
            [
                {**row, "tenant_slug": tenants.at[row["tenant_id"], "slug"],
                 "plan": tenants.at[row["tenant_id"], "plan"], "month": month,
                 "currency": settings.currency, "computed_at": now}
                for row in rows
            ],
            on_conflict=CHARGEBACK_KEY,
        )  # fmt: skip
    return MonthlyChargeback(month, result, csv_key, rows, unpriced)
