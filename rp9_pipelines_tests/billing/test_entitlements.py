"""Stripe → quotas and plan: a customer's active entitlements become the tenant's `stripe`
quotas (visible in its effective limits) and its subscription's prices its plan, both by the
schedule's sync and by `POST /stripe/webhook`, which the project's Stripe-compatible server
calls with signed events. A webhook that is not Stripe's changes nothing."""

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import stripe

from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.catalog.billing import stripe_id
from rp9_pipelines.catalog.tables import idempotency_keys, quotas
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.services.billing import ensure_customer, sync_all, sync_catalog, sync_customer
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.billing.conftest import StripeDouble, catalog_tenant, forget
from rp9_pipelines_tests.conftest import BIN, Served, free_port, serve
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module", autouse=True)
def catalog_in_stripe(stripe_double: StripeDouble, catalog_engine: sa.Engine) -> None:
    sync_catalog(stripe_double.client(), catalog_engine, print)


@pytest.fixture(scope="module")
def webhook_api(
    settings: Settings, stripe_double: StripeDouble, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The API under uvicorn (the webhook needs no Dagster), registered as the Stripe
    server's webhook endpoint for subscription and entitlement events."""
    port = free_port()
    log = tmp_path_factory.mktemp("webhook_api") / "api.log"
    command = [
        str(BIN / "uvicorn"),
        "rp9_pipelines.api.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with serve(
        command,
        url=f"http://127.0.0.1:{port}",
        ready_path="/healthz",
        log=log,
        env=dict(os.environ),
        timeout_s=60,
    ) as served:
        client = stripe_double.client()
        endpoint = client.v1.webhook_endpoints.create(
            params={
                "url": f"{served.url}/stripe/webhook",
                "enabled_events": [
                    "customer.subscription.created",
                    "customer.subscription.updated",
                    "customer.subscription.deleted",
                    "entitlements.active_entitlement_summary.updated",
                ],
            }
        )
        try:
            yield served
        finally:
            client.v1.webhook_endpoints.delete(endpoint.id)


def price(engine: sa.Engine, lookup_key: str) -> str:
    with engine.connect() as connection:
        ident = stripe_id(connection, "price", lookup_key)
    assert ident, lookup_key
    return ident


def subscribe(double: StripeDouble, engine: sa.Engine, customer: str, plan: str) -> Any:
    return double.client().v1.subscriptions.create(
        params={
            "customer": customer,
            "items": [
                {"price": price(engine, f"plan:{plan}:base")},
                {"price": price(engine, f"plan:{plan}:executions")},
            ],
        }
    )


def state(engine: sa.Engine, tenant: Tenant) -> dict[str, Any]:
    """Everything a webhook may change for a tenant."""
    with engine.connect() as connection:
        row = tenant_catalog.get_tenant(connection, tenant.id)
        quota_rows = connection.execute(
            sa.select(quotas).where(quotas.c.tenant_id == tenant.id).order_by(quotas.c.source)
        ).all()
        limits = tenant_catalog.limits_for(connection, tenant.id)
    assert row is not None
    return {
        "plan": row.plan,
        "quotas": [{k: v for k, v in r._mapping.items() if k != "id"} for r in quota_rows],
        "limits": limits,
    }


def test_active_entitlements_become_stripe_quotas_and_the_subscription_the_plan(
    stripe_double: StripeDouble, catalog_engine: sa.Engine, billing_tenant: Tenant
) -> None:
    customer = ensure_customer(stripe_double.client(), catalog_engine, billing_tenant)
    subscribe(stripe_double, catalog_engine, customer, "pro")
    synced = sync_customer(stripe_double.client(), catalog_engine, customer, print)
    assert synced is not None
    assert synced.plan_before == "starter"
    assert synced.plan_after == "pro"
    assert synced.features == [
        "quota:concurrency:20",
        "quota:executions_per_month:100000",
        "quota:max_workers:4",
    ]
    now = state(catalog_engine, billing_tenant)
    assert now["plan"] == "pro"
    stripe_row = next(q for q in now["quotas"] if q["source"] == "stripe")
    granted = ("executions_per_month", "concurrency", "max_workers", "overage_allowed")
    assert [stripe_row[name] for name in granted] == [100_000, 20, 4, False]
    limits = now["limits"]
    assert (limits.executions_per_month, limits.concurrency, limits.max_workers) == (100_000, 20, 4)
    # A manual override still wins over Stripe.
    with catalog_engine.begin() as connection:
        tenant_catalog.set_quota(
            connection, billing_tenant.id, "manual", {"executions_per_month": 5}
        )
        assert tenant_catalog.limits_for(connection, billing_tenant.id).executions_per_month == 5


def test_the_scheduled_sync_agrees_with_the_per_customer_sync(
    stripe_double: StripeDouble, catalog_engine: sa.Engine, billing_tenant: Tenant
) -> None:
    """`sync_all` lists every subscription once per run instead of once per customer."""
    customer = ensure_customer(stripe_double.client(), catalog_engine, billing_tenant)
    subscribe(stripe_double, catalog_engine, customer, "pro")
    run = sync_all(stripe_double.client(), catalog_engine, print)
    synced = {s.customer: s for s in run.synced}
    assert synced[customer].plan_before == "starter"
    assert synced[customer].plan_after == "pro"
    assert synced[customer].features == [
        "quota:concurrency:20",
        "quota:executions_per_month:100000",
        "quota:max_workers:4",
    ]
    assert state(catalog_engine, billing_tenant)["plan"] == "pro"
    again = sync_customer(stripe_double.client(), catalog_engine, customer, print)
    assert again is not None
    assert (again.plan_after, again.features) == ("pro", synced[customer].features)


def test_a_customer_gone_at_stripe_is_named_and_the_others_are_still_synced(
    stripe_double: StripeDouble, catalog_engine: sa.Engine, billing_tenant: Tenant
) -> None:
    """A customer deleted at Stripe (or of another account) stopped the whole scheduled sync:
    no tenant's quotas followed their entitlements until an operator found it."""
    customer = ensure_customer(stripe_double.client(), catalog_engine, billing_tenant)
    subscribe(stripe_double, catalog_engine, customer, "pro")
    stale = catalog_tenant(catalog_engine)
    gone = f"cus_gone{uuid.uuid4().hex[:16]}"
    try:
        with catalog_engine.begin() as connection:
            tenant_catalog.update_tenant(connection, stale.id, stripe_customer_id=gone)
        run = sync_all(stripe_double.client(), catalog_engine, print)
        assert run.gone.get(stale.slug) == gone, run.gone
        assert customer in {s.customer for s in run.synced}
        assert state(catalog_engine, billing_tenant)["plan"] == "pro"
        assert state(catalog_engine, stale)["plan"] == "starter"
    finally:
        forget(catalog_engine, stale.id)


def test_a_customer_that_is_no_tenants_is_ignored(
    stripe_double: StripeDouble, catalog_engine: sa.Engine
) -> None:
    stranger = stripe_double.client().v1.customers.create(params={"name": "not ours"})
    assert sync_customer(stripe_double.client(), catalog_engine, stranger.id, print) is None


def test_subscription_webhooks_change_the_plan_and_quotas(
    stripe_double: StripeDouble,
    catalog_engine: sa.Engine,
    billing_tenant: Tenant,
    webhook_api: Served,
) -> None:
    client = stripe_double.client()
    customer = ensure_customer(client, catalog_engine, billing_tenant)
    sub = subscribe(stripe_double, catalog_engine, customer, "pro")

    def plan_is(plan: str, max_workers: int, overage: bool) -> bool:
        now = state(catalog_engine, billing_tenant)
        limits = now["limits"]
        return bool(
            now["plan"] == plan
            and limits.max_workers == max_workers
            and limits.overage_allowed is overage
        )

    wait_until(lambda: plan_is("pro", 4, False), timeout_s=20, what="the webhook to apply pro")

    # Upgrade: swap both items to business's prices.
    upgraded: Any = [
        {
            "id": item.id,
            "price": price(catalog_engine, item.price.lookup_key.replace("pro", "business")),
        }
        for item in sub["items"].data
    ]
    client.v1.subscriptions.update(sub.id, params={"items": upgraded})
    wait_until(lambda: plan_is("business", 8, True), timeout_s=20, what="upgrade to business")
    assert state(catalog_engine, billing_tenant)["limits"].executions_per_month == 1_000_000

    # Cancelled: Stripe grants nothing any more; the plan's own limits apply again.
    client.v1.subscriptions.cancel(sub.id)

    def stripe_quotas_cleared() -> bool:
        rows = state(catalog_engine, billing_tenant)["quotas"]
        stripe_row = next(q for q in rows if q["source"] == "stripe")
        return stripe_row["executions_per_month"] is None and stripe_row["max_workers"] is None

    wait_until(stripe_quotas_cleared, timeout_s=20, what="the cancellation to clear quotas")
    # Every event Stripe raised about this customer was delivered and answered 200.
    wait_until(
        lambda: delivered(stripe_double, customer, webhook_api),
        timeout_s=20,
        what="every event about the customer answered 200",
    )


def delivered(double: StripeDouble, customer: str, api: Served) -> bool:
    """Every event the Stripe server raised about this customer reached the API."""
    events = [
        e
        for e in double.client().v1.events.list(params={"limit": 100}).data
        if e.data.object.to_dict().get("customer") == customer
    ]
    deliveries = httpx.get(f"{double.api_base}/_double/deliveries", timeout=5).json()
    done = {
        d["event_id"]
        for d in deliveries["deliveries"]
        if d["url"].startswith(api.url) and d["status"] == 200
    }
    return bool(events) and all(e.id in done for e in events)


def drift(engine: sa.Engine, tenant: Tenant) -> None:
    """Put the tenant where Stripe does not: a resync would move it back."""
    with engine.begin() as connection:
        tenant_catalog.set_quota(connection, tenant.id, "stripe", {"executions_per_month": 7})
        tenant_catalog.update_tenant(connection, tenant.id, plan="enterprise")


def signed(body: bytes, secret: str, timestamp: int | None = None) -> str:
    at = int(time.time()) if timestamp is None else timestamp
    digest = stripe.WebhookSignature._compute_signature(f"{at}.{body.decode()}", secret)
    return f"t={at},v1={digest}"


def summary_event(customer: str, features: list[str]) -> bytes:
    return json.dumps(
        {
            "id": f"evt_test_{uuid.uuid4().hex}",
            "object": "event",
            "api_version": "2026-10-28.endive",
            "created": int(time.time()),
            "livemode": False,
            "pending_webhooks": 1,
            "type": "entitlements.active_entitlement_summary.updated",
            "data": {
                "object": {
                    "object": "entitlements.active_entitlement_summary",
                    "customer": customer,
                    "livemode": False,
                    "entitlements": {
                        "object": "list",
                        "has_more": False,
                        "url": "/x",
                        "data": [
                            {
                                "id": f"ent_{i}",
                                "object": "entitlements.active_entitlement",
                                "feature": f"feat_{i}",
                                "livemode": False,
                                "lookup_key": key,
                            }
                            for i, key in enumerate(features)
                        ],
                    },
                }
            },
        }
    ).encode()


@pytest.mark.parametrize(
    ("case", "expected_code"),
    [
        ("missing", "signature_required"),
        ("wrong_secret", "invalid_signature"),
        ("tampered", "invalid_signature"),
        ("stale", "stale_timestamp"),
        ("garbage", "invalid_signature"),
    ],
)
def test_a_webhook_that_is_not_stripes_is_refused_and_changes_nothing(
    stripe_double: StripeDouble,
    catalog_engine: sa.Engine,
    billing_tenant: Tenant,
    webhook_api: Served,
    case: str,
    expected_code: str,
) -> None:
    customer = ensure_customer(stripe_double.client(), catalog_engine, billing_tenant)
    subscribe(stripe_double, catalog_engine, customer, "business")  # what a real event would apply
    body = summary_event(customer, ["quota:executions_per_month:10000000", "feature:overage"])
    secret = stripe_double.webhook_secret
    headers = {
        "missing": {},
        "wrong_secret": {"Stripe-Signature": signed(body, "whsec_not_the_secret")},
        "tampered": {"Stripe-Signature": signed(body.replace(b"10000000", b"99999999"), secret)},
        "stale": {"Stripe-Signature": signed(body, secret, int(time.time()) - 301)},
        "garbage": {"Stripe-Signature": "t=abc,v1=zzz"},
    }[case]
    # The subscription's own (genuine) events may still be in flight: wait until they landed,
    # so that "nothing changed" compares against a settled state.
    wait_until(
        lambda: delivered(stripe_double, customer, webhook_api),
        timeout_s=20,
        what="the genuine subscription events",
    )
    # Drift from Stripe on purpose: any event that got through would resync it back.
    drift(catalog_engine, billing_tenant)
    before = state(catalog_engine, billing_tenant)
    response = httpx.post(
        f"{webhook_api.url}/stripe/webhook",
        content=body,
        headers={"Content-Type": "application/json", **headers},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == expected_code
    assert state(catalog_engine, billing_tenant) == before
    event_id = json.loads(body)["id"]
    with catalog_engine.connect() as connection:
        recorded = connection.execute(
            sa.select(idempotency_keys).where(idempotency_keys.c.key == event_id)
        ).first()
    assert recorded is None


def test_a_signed_event_is_applied_once_and_unknown_ones_are_acknowledged(
    stripe_double: StripeDouble,
    catalog_engine: sa.Engine,
    billing_tenant: Tenant,
    webhook_api: Served,
) -> None:
    secret = stripe_double.webhook_secret
    customer = ensure_customer(stripe_double.client(), catalog_engine, billing_tenant)
    body = summary_event(customer, [])

    def post(payload: bytes) -> httpx.Response:
        return httpx.post(
            f"{webhook_api.url}/stripe/webhook",
            content=payload,
            headers={"Stripe-Signature": signed(payload, secret)},
        )

    first = post(body)
    assert first.status_code == 200, first.text
    assert first.json()["outcome"] == "applied"
    assert first.json()["tenant_id"] == str(billing_tenant.id)
    drift(catalog_engine, billing_tenant)
    drifted = state(catalog_engine, billing_tenant)
    replay = post(body)
    assert replay.status_code == 200
    assert replay.json()["outcome"] == "duplicate"
    assert state(catalog_engine, billing_tenant) == drifted  # applied once, not again

    stranger = post(summary_event("cus_nobody_" + uuid.uuid4().hex[:8], []))
    assert stranger.status_code == 200
    assert stranger.json()["outcome"] == "ignored"
    other_type = json.dumps(
        {
            "id": f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "type": "invoice.paid",
            "data": {"object": {}},
        }
    ).encode()
    ignored = post(other_type)
    assert ignored.status_code == 200
    assert ignored.json()["outcome"] == "ignored"
