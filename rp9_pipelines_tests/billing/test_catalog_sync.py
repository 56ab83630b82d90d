"""The plans table → Stripe's catalog, on a fresh catalog database and the project's
Stripe-compatible server: everything exists once, a second sync creates nothing, and a catalog
that lost its `stripe_objects` finds the same objects again instead of duplicating them."""

import datetime as dt
import uuid
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog import migrate
from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.catalog.tables import plans, stripe_objects, usage
from rp9_pipelines.defs.billing.stripe import stripe_meter_events, sync_stripe_catalog
from rp9_pipelines.defs.partitions import TENANTS_PARTITION, tenant_day_key
from rp9_pipelines.domain.billing import METER_EVENT_NAME, PLAN_PRICES, plan_catalog
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.stripe import StripeResource
from rp9_pipelines.services.billing import meter_summary, sync_catalog
from rp9_pipelines.settings import sqlalchemy_url
from rp9_pipelines_tests.billing.conftest import StripeDouble

pytestmark = pytest.mark.stack


def migrated(url: str) -> sa.Engine:
    migrate.upgrade(url)
    return sa.create_engine(sqlalchemy_url(url), poolclass=sa.NullPool)


def remembered(engine: sa.Engine) -> dict[tuple[str, str], str]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(stripe_objects)).all()
    return {(row.kind, row.lookup_key): row.stripe_id for row in rows}


def test_sync_creates_the_catalog_once_and_finds_it_again(
    stripe_double: StripeDouble, fresh_database_url: str, admin_engine: sa.Engine
) -> None:
    client = stripe_double.client()
    engine = migrated(fresh_database_url)
    with engine.connect() as connection:
        specs = plan_catalog(dict(r._mapping) for r in connection.execute(sa.select(plans)))
    assert [s.name for s in specs] == sorted(PLAN_PRICES)

    first = sync_catalog(client, engine, print)
    ids = remembered(engine)
    features = {f for s in specs for f in s.features}
    assert len(ids) == 1 + len(features) + 3 * len(specs)  # meter, features, product + 2 prices
    for spec in specs:
        product = ids[("product", spec.product_key)]
        attached = client.v1.products.features.list(product, params={"limit": 100})
        assert sorted(pf.entitlement_feature.lookup_key for pf in attached.data) == sorted(
            spec.features
        )
        base: Any = client.v1.prices.retrieve(ids[("price", spec.base_price_key)])
        metered: Any = client.v1.prices.retrieve(ids[("price", spec.metered_price_key)])
        assert (base.product, base.unit_amount, base.recurring.usage_type) == (
            product,
            spec.base_amount,
            "licensed",
        )
        assert metered.recurring.usage_type == "metered"
        assert metered.recurring.meter == ids[("meter", "executions")]
        assert first.plans[spec.name]["product"] == product
    with engine.connect() as connection:
        plan_ids = {
            r.name: (r.stripe_product_id, r.stripe_price_id)
            for r in connection.execute(sa.select(plans))
        }
    assert plan_ids["pro"] == (ids[("product", "plan:pro")], ids[("price", "plan:pro:base")])

    second = sync_catalog(client, engine, print)
    assert second.created == []
    assert second.attached == []
    assert remembered(engine) == ids

    # A catalog that forgot every id (a new environment on the same Stripe account).
    other_name = f"rp9_test_{uuid.uuid4().hex[:12]}"
    with admin_engine.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{other_name}"'))
    try:
        other_url = (
            sa.make_url(fresh_database_url)
            .set(database=other_name)
            .render_as_string(hide_password=False)
        )
        other = migrated(other_url)
        third = sync_catalog(client, other, print)
        assert third.created == []
        assert remembered(other) == ids
        other.dispose()
    finally:
        with admin_engine.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{other_name}" WITH (FORCE)'))

    # Stripe holds each object once.
    meters = [
        m
        for m in client.v1.billing.meters.list(params={"limit": 100}).auto_paging_iter()
        if m.event_name == METER_EVENT_NAME
    ]
    assert len(meters) == 1
    for spec in specs:
        for key in (spec.base_price_key, spec.metered_price_key):
            prices = client.v1.prices.list(params={"lookup_keys": [key], "limit": 10})
            assert len(prices.data) == 1, key
    engine.dispose()


def test_the_dagster_job_and_asset_run_in_process(
    stripe_double: StripeDouble, fresh_database_url: str
) -> None:
    """`stripe_meter_events` materialised for one (day, tenant) partition on a platform that
    never synced its catalog reports the day (the meter found first), and a second
    materialisation changes nothing; `sync_stripe_catalog` then completes the catalog."""
    engine = migrated(fresh_database_url)
    slug = f"bill-{uuid.uuid4().hex[:8]}"
    day = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=2)
    with engine.begin() as connection:
        tenant_id = tenant_catalog.insert_tenant(
            connection,
            {
                "slug": slug,
                "name": "Job Co",
                "plan": "pro",
                "status": "active",
                "n8n_version": "2.20.12",
            },
        )
        connection.execute(sa.insert(usage).values(tenant_id=tenant_id, day=day, executions=61))
    resources = {
        "catalog": CatalogResource(database_url=fresh_database_url),
        "stripe": StripeResource(api_key=stripe_double.api_key, api_base=stripe_double.api_base),
    }
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(TENANTS_PARTITION, [slug])
    for _ in range(2):
        materialized = dg.materialize(
            [stripe_meter_events],
            partition_key=tenant_day_key(day.isoformat(), slug),
            resources=resources,
            instance=instance,
        )
        assert materialized.success
    events = materialized.asset_materializations_for_node("stripe_meter_events")
    assert events[0].metadata["sent"].value == 0  # the second run: already reported
    assert meter_summary(stripe_double.client(), engine, slug, day) == 61.0

    result = sync_stripe_catalog.execute_in_process(resources=resources)
    assert result.success
    assert result.output_for_node("ensure_customers") == 1
    assert set(result.output_for_node("sync_plans_to_stripe")) == set(PLAN_PRICES)
    engine.dispose()
