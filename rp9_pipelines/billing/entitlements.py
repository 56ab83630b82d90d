"""Stripe → the catalog, per customer: its active entitlements become the tenant's `stripe`
quota row, and its live subscription's prices name the tenant's plan.

Both the schedule and the webhook call `sync_customer`: a webhook is only the signal that a
customer changed, and the state is read back from Stripe, so events arriving late or out of
order can never roll a tenant back to an older state."""

import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import stripe

from rp9_pipelines.catalog import billing as billing_catalog
from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.domain.billing import plan_of_price_keys, quotas_from_entitlements

LIVE_SUBSCRIPTION = frozenset({"active", "trialing", "past_due"})


@dataclass
class CustomerSync:
    tenant_id: str
    slug: str
    customer: str
    features: list[str]
    quotas: dict[str, Any]
    plan_before: str
    plan_after: str
    ignored: list[str] = field(default_factory=list)

    @property
    def plan_changed(self) -> bool:
        return self.plan_before != self.plan_after


def _features(client: stripe.StripeClient, customer: str) -> list[str]:
    listed = client.v1.entitlements.active_entitlements.list(
        params={"customer": customer, "limit": 100}
    )
    return sorted(e.lookup_key for e in listed.auto_paging_iter())


def _subscription_prices(
    client: stripe.StripeClient, customer: str | None = None
) -> dict[str, list[str]]:
    """The prices of live subscriptions by customer: one customer's, or (one listing for a
    whole run) every customer's."""
    params: Any = {"limit": 100, **({"customer": customer} if customer else {})}
    prices: dict[str, list[str]] = defaultdict(list)
    for sub in client.v1.subscriptions.list(params=params).auto_paging_iter():
        if sub.status in LIVE_SUBSCRIPTION:
            prices[str(sub.customer)].extend(item.price.id for item in sub["items"].data)
    return prices


def sync_customer(
    client: stripe.StripeClient, engine: sa.Engine, customer: str, log: Callable[[str], None],
    prices: list[str] | None = None,
) -> CustomerSync | None:  # fmt: skip
    """None when no tenant has this customer (logged, nothing changed). `prices`: the
    customer's live subscription prices when the caller listed them already."""
    with engine.begin() as connection:
        row = billing_catalog.tenant_by_customer(connection, customer)
    if row is None:
        log(f"customer {customer} belongs to no tenant; ignored")
        return None
    features = _features(client, customer)
    if prices is None:
        prices = _subscription_prices(client, customer)[customer]
    with engine.begin() as connection:
        tenant_id = uuid.UUID(str(row.id))
        ranking = {
            str(plan["name"]): int(plan["executions_per_month"])
            for plan in billing_catalog.plan_rows(connection)
        }
        price_keys = billing_catalog.lookup_keys_of(connection, "price", prices)
        plan_after = plan_of_price_keys(price_keys.values(), ranking) or row.plan
        plan_limits = tenant_catalog.plan_limits(connection, plan_after) or {}
        entitled = quotas_from_entitlements(features, plan_limits.get("min_workers"))
        tenant_catalog.set_quota(connection, tenant_id, "stripe", entitled.values)
        if plan_after != row.plan:
            tenant_catalog.set_quota(connection, tenant_id, "plan", plan_limits)
            tenant_catalog.update_tenant(connection, tenant_id, plan=plan_after)
    synced = CustomerSync(
        str(tenant_id), row.slug, customer, features,
        {k: v for k, v in entitled.values.items() if v is not None}, row.plan, plan_after,
        list(entitled.ignored),
    )  # fmt: skip
    log(
        f"{row.slug}: entitlements {features or 'none'} → stripe quotas {synced.quotas}"
        + (f"; plan {row.plan} → {plan_after}" if synced.plan_changed else "")
    )
    return synced


def sync_all(
    client: stripe.StripeClient, engine: sa.Engine, log: Callable[[str], None]
) -> list[CustomerSync]:
    with engine.begin() as connection:
        customers = billing_catalog.customer_ids(connection)
    prices = _subscription_prices(client)
    synced = (sync_customer(client, engine, c, log, prices[c]) for c in customers)
    return [s for s in synced if s is not None]
