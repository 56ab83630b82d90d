"""The chargeback shell: gather the month's usage and prices, compute with
`domain.chargeback` (pandas), write the rows to the catalog, the CSV to S3 and Supabase."""

import datetime as dt
import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pandas as pd
import stripe

from rp9_pipelines.catalog import billing as billing_catalog
from rp9_pipelines.catalog import chargeback as chargeback_catalog
from rp9_pipelines.domain import chargeback as chargeback_math
from rp9_pipelines.domain.billing import base_price_key, metered_price_key
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.s3 import SERVER_SIDE_ENCRYPTION, S3Resource
from rp9_pipelines.resources.supabase import SupabaseResource
from rp9_pipelines.settings import ChargebackSettings

CHARGEBACK_TABLE = "chargeback_monthly"
CHARGEBACK_KEY = "tenant_id,month"

Log = Callable[[str], None]


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
        ids = billing_catalog.stripe_ids(
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
        usage = chargeback_catalog.month_usage(connection, month)
    tenants = usage.groupby("tenant_id", sort=True)[["slug", "plan"]].last()
    plans = sorted(set(tenants["plan"]))
    prices = plan_prices(catalog, stripe_client, plans, settings.currency, log)
    by_tenant = {str(tenant_id): prices.get(plan) for tenant_id, plan in tenants["plan"].items()}
    result = chargeback_math.compute(
        usage,
        settings.rates(),
        settings.capacity(),
        chargeback_math.month_hours(month),
        by_tenant,
    )
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
        chargeback_catalog.upsert_chargeback(connection, month, catalog_rows, settings.currency)
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
            Bucket=s3.bucket,
            Key=csv_key,
            Body=body.getvalue().encode(),
            ContentType="text/csv",
            ServerSideEncryption=SERVER_SIDE_ENCRYPTION,
        )
    if supabase is not None and rows:
        now = dt.datetime.now(dt.UTC).isoformat()
        supabase.upsert(
            CHARGEBACK_TABLE,
            [
                {
                    **row,
                    "tenant_slug": tenants.at[row["tenant_id"], "slug"],
                    "plan": tenants.at[row["tenant_id"], "plan"],
                    "month": month,
                    "currency": settings.currency,
                    "computed_at": now,
                }
                for row in rows
            ],
            on_conflict=CHARGEBACK_KEY,
        )
    return MonthlyChargeback(month, result, csv_key, rows, unpriced)
