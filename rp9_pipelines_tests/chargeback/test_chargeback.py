"""The monthly chargeback asset on the real catalog, S3 (moto server), Supabase (PostgREST) and
the project's Stripe-compatible server (prices read through the real `stripe` SDK)."""

import csv
import datetime as dt
import io
import os
import uuid
from collections.abc import Iterator
from decimal import Decimal

import dagster as dg
import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog import usage as store
from rp9_pipelines.catalog.tables import chargeback, plans, stripe_objects, tenants
from rp9_pipelines.defs.chargeback.assets import tenant_chargeback
from rp9_pipelines.domain.billing import base_price_key, metered_price_key
from rp9_pipelines.domain.usage import DayUsage
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines.resources.stripe import StripeResource
from rp9_pipelines.resources.supabase import SupabaseResource
from rp9_pipelines.services.chargeback import CHARGEBACK_TABLE
from rp9_pipelines.settings import PlatformSettings, Settings
from rp9_pipelines_tests.usage.conftest import forget_usage

pytestmark = pytest.mark.stack

MONTH = "2026-02"  # a month no other test writes usage for
RATES = {
    "CHARGEBACK_RATE_PER_EXECUTION": "0.001",
    "CHARGEBACK_RATE_PER_DURATION_HOUR": "0.5",
    "CHARGEBACK_RATE_PER_CPU_CORE_HOUR": "0.04",
    "CHARGEBACK_RATE_PER_MEMORY_GB_HOUR": "0.005",
    "CHARGEBACK_CAPACITY_CPU_CORES": "2",
    "CHARGEBACK_CAPACITY_MEMORY_GB": "8",
}


@pytest.fixture
def stripe_resource(settings: Settings) -> StripeResource:
    base = os.environ.get("STRIPE_API_BASE", "")
    key = settings.stripe_secret_key.get_secret_value()
    if not (base and key):
        pytest.fail("STRIPE_API_BASE / STRIPE_SECRET_KEY missing: load .stack/env (stack.sh up)")
    return StripeResource(api_key=key, api_base=base)


@pytest.fixture
def s3_bucket(settings: Settings) -> Iterator[S3Resource]:
    s3 = S3Resource(
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        bucket=f"rp9-test-{uuid.uuid4().hex[:12]}",
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key.get_secret_value(),
    )
    yield s3
    client = s3.client()
    for item in client.list_objects_v2(Bucket=s3.bucket).get("Contents", []):
        client.delete_object(Bucket=s3.bucket, Key=item["Key"])
    client.delete_bucket(Bucket=s3.bucket)


@pytest.fixture
def priced_tenants(
    catalog: CatalogResource, supabase: SupabaseResource, stripe_resource: StripeResource
) -> Iterator[dict[str, uuid.UUID]]:
    """Two plans of the test's own (one with Stripe prices, one without) and a tenant on each,
    with usage rows in MONTH; everything removed afterwards (the Stripe double's objects stay:
    prices cannot be deleted in Stripe either)."""
    tag = uuid.uuid4().hex[:8]
    priced, unpriced = f"cb-p-{tag}", f"cb-u-{tag}"
    client = stripe_resource.client
    meter = client.v1.billing.meters.create(
        params={
            "display_name": f"test {tag}",
            "event_name": f"rp9_test_{tag}",
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"type": "by_id", "event_payload_key": "stripe_customer_id"},
            "value_settings": {"event_payload_key": "value"},
        }
    )
    product = client.v1.products.create(params={"name": f"test plan {tag}"})
    base = client.v1.prices.create(
        params={
            "product": product.id,
            "currency": "usd",
            "unit_amount": 2500,
            "recurring": {"interval": "month", "usage_type": "licensed"},
        }
    )
    metered = client.v1.prices.create(
        params={
            "product": product.id,
            "currency": "usd",
            "unit_amount_decimal": Decimal("0.3"),
            "recurring": {"interval": "month", "usage_type": "metered", "meter": meter.id},
        }
    )
    ids: dict[str, uuid.UUID] = {}
    with catalog.begin() as connection:
        for plan in (priced, unpriced):
            connection.execute(
                sa.insert(plans).values(
                    name=plan,
                    executions_per_month=1000,
                    concurrency=2,
                    cpu=1,
                    memory_mb=1024,
                    min_workers=0,
                    max_workers=1,
                )
            )
            ids[plan] = connection.execute(
                sa.insert(tenants)
                .values(
                    slug=f"{plan}-t", name=plan, plan=plan, status="deleted", n8n_version="2.20.12"
                )
                .returning(tenants.c.id)
            ).scalar_one()
        connection.execute(
            sa.insert(stripe_objects).values(
                [
                    {"kind": "price", "lookup_key": base_price_key(priced), "stripe_id": base.id},
                    {
                        "kind": "price",
                        "lookup_key": metered_price_key(priced),
                        "stripe_id": metered.id,
                    },
                ]
            )
        )
        for day in range(1, 29):
            date = dt.date(2026, 2, day)
            # priced: 100 executions of 36 s a day, 0.1 core, 0.5 GB; unpriced: a third of it.
            store.upsert_usage(
                connection, ids[priced], date, DayUsage(100, 1, 3_600_000, None, None, 8640.0, 12.0)
            )
            store.upsert_usage(
                connection, ids[unpriced], date, DayUsage(33, 0, 1_200_000, None, None, 2880.0, 4.0)
            )
    yield {"priced": ids[priced], "unpriced": ids[unpriced]}
    with catalog.begin() as connection:
        connection.execute(
            sa.delete(stripe_objects).where(
                stripe_objects.c.lookup_key.in_([base_price_key(priced), metered_price_key(priced)])
            )
        )
    for tenant_id in ids.values():
        forget_usage(catalog, supabase, tenant_id)
    with catalog.begin() as connection:
        connection.execute(sa.delete(tenants).where(tenants.c.id.in_(list(ids.values()))))
        connection.execute(sa.delete(plans).where(plans.c.name.in_([priced, unpriced])))


def test_monthly_chargeback_in_catalog_s3_and_supabase(
    priced_tenants: dict[str, uuid.UUID],
    catalog: CatalogResource,
    supabase: SupabaseResource,
    stripe_resource: StripeResource,
    s3_bucket: S3Resource,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in RATES.items():
        monkeypatch.setenv(name, value)
    resources = {
        "catalog": catalog,
        "s3": s3_bucket,
        "supabase": supabase,
        "stripe": stripe_resource,
        "settings": PlatformSettings(),
    }

    for _ in range(2):  # a re-run rewrites the same rows
        result = dg.materialize(
            [tenant_chargeback], partition_key=f"{MONTH}-01", resources=resources
        )
        assert result.success

    with catalog.begin() as connection:
        rows = {
            row.tenant_id: row
            for row in connection.execute(sa.select(chargeback).where(chargeback.c.month == MONTH))
        }
    priced, unpriced = rows[priced_tenants["priced"]], rows[priced_tenants["unpriced"]]
    # 28 days: 2800 executions, 28 h of duration, 67.2 core-hours, 336 GB-hours.
    assert (priced.executions, priced.duration_hours) == (2800, pytest.approx(28.0))
    assert (priced.cpu_core_hours, priced.memory_gb_hours) == (
        pytest.approx(67.2),
        pytest.approx(336.0),
    )
    assert priced.usage_cost == Decimal("2.8") + Decimal("14") + Decimal("2.688") + Decimal("1.68")
    # Revenue from the Stripe prices: 25.00 + 2800 x 0.3 cents.
    assert priced.revenue == Decimal("33.4000")
    assert priced.margin == priced.revenue - priced.total_cost
    assert (unpriced.revenue, unpriced.margin) == (None, None)
    # The idle capacity is shared in proportion to usage cost (to the last 1/10,000).
    # (Other tenants may have usage in the month too: compare the two shares with each other.)
    assert priced.idle_cost > 0
    skew = priced.idle_cost * unpriced.usage_cost - unpriced.idle_cost * priced.usage_cost
    assert abs(skew) <= Decimal("0.0001") * (priced.usage_cost + unpriced.usage_cost)
    for row in rows.values():
        assert row.total_cost == row.usage_cost + row.idle_cost
    # Conservation over the month: capacity (2 cores, 8 GB for 672 h) = used + idle resources.
    materialization = result.asset_materializations_for_node("tenant_chargeback")[0]
    idle = Decimal(str(materialization.metadata["idle_cost"].value))
    assert sum(r.idle_cost for r in rows.values()) == idle
    assert (
        sum(r.total_cost for r in rows.values()) == sum(r.usage_cost for r in rows.values()) + idle
    )

    body = s3_bucket.client().get_object(Bucket=s3_bucket.bucket, Key=f"chargeback/{MONTH}.csv")
    exported = {
        r["tenant_id"]: r for r in csv.DictReader(io.StringIO(body["Body"].read().decode()))
    }
    assert exported[str(priced_tenants["priced"])]["executions"] == "2800"
    assert Decimal(exported[str(priced_tenants["priced"])]["total_cost"]) == priced.total_cost
    assert exported[str(priced_tenants["unpriced"])]["revenue"] == ""

    remote = supabase.select(CHARGEBACK_TABLE, {"tenant_id": str(priced_tenants["priced"])})
    assert len(remote) == 1
    assert (remote[0]["month"], remote[0]["executions"]) == (MONTH, 2800)
    assert Decimal(str(remote[0]["total_cost"])) == priced.total_cost
    assert Decimal(str(remote[0]["revenue"])) == Decimal("33.4")
