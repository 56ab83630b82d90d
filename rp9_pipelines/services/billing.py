"""Stripe billing shells: the plans table → Stripe's catalog, entitlements → the catalog, and
each tenant's daily executions → the Billing Meter through the `usage_reports` ledger.

Catalog sync is idempotent: every object is found again (by the id remembered in
`stripe_objects`, else by its natural key in Stripe) before anything is created, and every
creation carries an idempotency key derived from what it creates. Both the schedule and the
webhook call `sync_customer`: a webhook is only the signal that a customer changed, and the state
is read back from Stripe, so events arriving late or out of order can never roll a tenant back."""

import datetime as dt
import hashlib
import json
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import stripe

from rp9_pipelines.catalog import billing as billing_catalog
from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.domain.billing import (
    CANCEL_PREFIX,
    CANCEL_SUFFIX,
    CUSTOMER_PAYLOAD_KEY,
    EXECUTIONS_METRIC,
    METER_EVENT_NAME,
    METER_LOOKUP_KEY,
    VALUE_PAYLOAD_KEY,
    Cancel,
    LedgerEntry,
    PlanSpec,
    ReportDecision,
    Send,
    customer_idempotency_key,
    day_window,
    decide_report,
    event_timestamp,
    feature_name,
    plan_catalog,
    plan_of_price_keys,
    quotas_from_entitlements,
)
from rp9_pipelines.resources.stripe import is_duplicate_identifier

LOOKUP_METADATA = "rp9_lookup_key"


@dataclass
class SyncOutcome:
    created: list[str] = field(default_factory=list)
    found: list[str] = field(default_factory=list)
    attached: list[str] = field(default_factory=list)
    plans: dict[str, dict[str, str]] = field(default_factory=dict)


def _key(kind: str, lookup_key: str, params: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return f"rp9-{kind}-{lookup_key}-{digest}"


class CatalogSync:
    def __init__(
        self, client: stripe.StripeClient, engine: sa.Engine, log: Callable[[str], None]
    ) -> None:
        self.client, self.engine, self.log = client, engine, log
        self.outcome = SyncOutcome()

    def _remembered(self, kind: str, lookup_key: str, fetch: Callable[[str], Any]) -> Any:
        with self.engine.begin() as connection:
            ident = billing_catalog.stripe_id(connection, kind, lookup_key)
        if ident is None:
            return None
        try:
            return fetch(ident)
        except stripe.InvalidRequestError as error:
            if error.http_status != 404:
                raise
            self.log(f"{kind} {lookup_key} ({ident}) is gone from Stripe; finding or recreating")
            return None

    def _keep(self, kind: str, lookup_key: str, obj: Any, created: bool) -> str:
        with self.engine.begin() as connection:
            billing_catalog.remember(connection, kind, lookup_key, obj.id)
        (self.outcome.created if created else self.outcome.found).append(f"{kind}:{lookup_key}")
        if created:
            self.log(f"created {kind} {lookup_key}: {obj.id}")
        return str(obj.id)

    def meter(self) -> str:
        v1 = self.client.v1
        found = self._remembered("meter", METER_LOOKUP_KEY, v1.billing.meters.retrieve)
        if found is None:
            meters = v1.billing.meters.list(params={"status": "active", "limit": 100})
            found = next(
                (m for m in meters.auto_paging_iter() if m.event_name == METER_EVENT_NAME), None
            )
        if found is not None:
            return self._keep("meter", METER_LOOKUP_KEY, found, created=False)
        params: Any = {
            "display_name": "n8n executions",
            "event_name": METER_EVENT_NAME,
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"event_payload_key": CUSTOMER_PAYLOAD_KEY, "type": "by_id"},
            "value_settings": {"event_payload_key": VALUE_PAYLOAD_KEY},
        }
        created = v1.billing.meters.create(
            params=params, options={"idempotency_key": _key("meter", METER_LOOKUP_KEY, params)}
        )
        return self._keep("meter", METER_LOOKUP_KEY, created, created=True)

    def feature(self, lookup_key: str) -> str:
        v1 = self.client.v1
        found = self._remembered("feature", lookup_key, v1.entitlements.features.retrieve)
        if found is None:
            listed = v1.entitlements.features.list(params={"lookup_key": lookup_key, "limit": 1})
            found = listed.data[0] if listed.data else None
        if found is not None:
            return self._keep("feature", lookup_key, found, created=False)
        params: Any = {"name": feature_name(lookup_key), "lookup_key": lookup_key}
        created = v1.entitlements.features.create(
            params=params, options={"idempotency_key": _key("feature", lookup_key, params)}
        )
        return self._keep("feature", lookup_key, created, created=True)

    def _price_by_lookup(self, lookup_key: str) -> Any:
        found = self._remembered("price", lookup_key, self.client.v1.prices.retrieve)
        if found is not None and found.active and found.lookup_key == lookup_key:
            return found
        listed = self.client.v1.prices.list(
            params={"lookup_keys": [lookup_key], "active": True, "limit": 1}
        )
        return listed.data[0] if listed.data else None

    def product(self, spec: PlanSpec) -> str:
        v1 = self.client.v1
        found = self._remembered("product", spec.product_key, v1.products.retrieve)
        if found is None:
            price = self._price_by_lookup(spec.base_price_key)
            if price is not None:
                found = v1.products.retrieve(price.product)
        if found is None:
            products = v1.products.list(params={"limit": 100})
            found = next(
                (p for p in products.auto_paging_iter() if _lookup_of(p) == spec.product_key),
                None,
            )
        if found is not None:
            return self._keep("product", spec.product_key, found, created=False)
        params: Any = {
            "name": f"rp9 {spec.name}",
            "metadata": {LOOKUP_METADATA: spec.product_key, "rp9_plan": spec.name},
        }
        created = v1.products.create(
            params=params, options={"idempotency_key": _key("product", spec.product_key, params)}
        )
        return self._keep("product", spec.product_key, created, created=True)

    def attach_features(self, product_id: str, feature_ids: dict[str, str]) -> None:
        """Attach the plan's features; detach rp9 features the plan no longer grants."""
        v1 = self.client.v1
        attached = {
            pf.entitlement_feature.id: pf.id
            for pf in v1.products.features.list(
                product_id, params={"limit": 100}
            ).auto_paging_iter()
        }
        wanted = set(feature_ids.values())
        with self.engine.begin() as connection:
            ours = billing_catalog.lookup_keys_of(connection, "feature", list(attached))
        for feature_id, link_id in attached.items():
            if feature_id in ours and feature_id not in wanted:
                v1.products.features.delete(product_id, link_id)
                self.log(f"detached {ours[feature_id]} from {product_id}")
        for lookup_key, feature_id in sorted(feature_ids.items()):
            if feature_id in attached:
                continue
            v1.products.features.create(
                product_id,
                params={"entitlement_feature": feature_id},
                options={"idempotency_key": f"rp9-attach-{product_id}-{feature_id}"},
            )
            self.outcome.attached.append(f"{product_id}:{lookup_key}")

    def price(self, lookup_key: str, params: dict[str, Any]) -> str:
        found = self._price_by_lookup(lookup_key)
        same = (
            found is not None
            and all(
                str(getattr(found, name)) == str(params[name]) for name in ("product", "currency")
            )
            and _amount(found) == str(params.get("unit_amount_decimal", params.get("unit_amount")))
        )
        if found is not None and same:
            return self._keep("price", lookup_key, found, created=False)
        # Prices are immutable in Stripe: a new amount is a new price that takes the lookup key.
        params = {**params, "lookup_key": lookup_key, "transfer_lookup_key": found is not None}
        created = self.client.v1.prices.create(
            params=params,  # type: ignore[arg-type]
            options={"idempotency_key": _key("price", lookup_key, params)},
        )
        return self._keep("price", lookup_key, created, created=True)

    def run(self) -> SyncOutcome:
        with self.engine.begin() as connection:
            specs = plan_catalog(billing_catalog.plan_rows(connection))
        meter_id = self.meter()
        features = {
            key: self.feature(key) for key in sorted({f for s in specs for f in s.features})
        }
        for spec in specs:
            product_id = self.product(spec)
            self.attach_features(product_id, {key: features[key] for key in spec.features})
            base = self.price(
                spec.base_price_key,
                {
                    "product": product_id,
                    "currency": spec.currency,
                    "unit_amount": spec.base_amount,
                    "recurring": {"interval": "month", "usage_type": "licensed"},
                    "nickname": f"{spec.name} monthly",
                },
            )
            metered = self.price(
                spec.metered_price_key,
                {
                    "product": product_id,
                    "currency": spec.currency,
                    "unit_amount_decimal": spec.per_execution_amount,
                    "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
                    "nickname": f"{spec.name} per execution",
                },
            )
            with self.engine.begin() as connection:
                billing_catalog.set_plan_stripe_ids(connection, spec.name, product_id, base)
            self.outcome.plans[spec.name] = {
                "product": product_id,
                "base_price": base,
                "metered_price": metered,
            }
        return self.outcome


def _lookup_of(product: Any) -> str | None:
    metadata: dict[str, str] = product.to_dict().get("metadata") or {}
    return metadata.get(LOOKUP_METADATA)


def _amount(price: Any) -> str:
    fields = price.to_dict()
    decimal = fields.get("unit_amount_decimal")
    if decimal not in (None, "None"):
        text = str(decimal)
        return text[:-2] if text.endswith(".0") else text
    return str(fields.get("unit_amount"))


def sync_catalog(
    client: stripe.StripeClient, engine: sa.Engine, log: Callable[[str], None]
) -> SyncOutcome:
    """Make Stripe hold the plans' catalog; returns what was created and what was found."""
    return CatalogSync(client, engine, log).run()


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
    client: stripe.StripeClient,
    engine: sa.Engine,
    customer: str,
    log: Callable[[str], None],
    prices: list[str] | None = None,
) -> CustomerSync | None:
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
        str(tenant_id),
        row.slug,
        customer,
        features,
        {k: v for k, v in entitled.values.items() if v is not None},
        row.plan,
        plan_after,
        list(entitled.ignored),
    )
    log(
        f"{row.slug}: entitlements {features or 'none'} → stripe quotas {synced.quotas}"
        + (f"; plan {row.plan} → {plan_after}" if synced.plan_changed else "")
    )
    return synced


@dataclass(frozen=True)
class SyncRun:
    """Every customer's sync: those synced, and the tenants (slug → customer) whose customer
    Stripe no longer has (deleted there, or another Stripe account's): their quotas and plan
    are left as they were."""

    synced: list[CustomerSync]
    gone: dict[str, str]


def sync_all(client: stripe.StripeClient, engine: sa.Engine, log: Callable[[str], None]) -> SyncRun:
    """Sync every tenant's customer; one Stripe no longer has is logged and the others go on
    (it stopped the whole run before)."""
    with engine.begin() as connection:
        customers = billing_catalog.customers_by_slug(connection)
    prices = _subscription_prices(client)
    synced: list[CustomerSync] = []
    gone: dict[str, str] = {}
    for slug, customer in customers.items():
        try:
            found = sync_customer(client, engine, customer, log, prices[customer])
        except stripe.InvalidRequestError as error:
            if error.code != "resource_missing":
                raise
            log(f"{slug}: customer {customer} is gone at Stripe; its quotas and plan unchanged")
            gone[slug] = customer
            continue
        if found is not None:
            synced.append(found)
    return SyncRun(synced, gone)


Log = Callable[[str], None]


def ensure_customer(client: stripe.StripeClient, engine: sa.Engine, tenant: Tenant) -> str:
    """The tenant's customer, created once: the idempotency key is the tenant's id, so two
    racing calls (or a retry after a lost answer) get the same customer."""
    with engine.begin() as connection:
        known = billing_catalog.customer_of(connection, tenant.id)
    if known:
        return known
    customer = client.v1.customers.create(
        params={
            "name": tenant.name,
            "metadata": {"rp9_tenant_id": str(tenant.id), "rp9_slug": tenant.slug},
        },
        options={"idempotency_key": customer_idempotency_key(str(tenant.id))},
    )
    with engine.begin() as connection:
        billing_catalog.set_customer(connection, tenant.id, customer.id)
        recorded = billing_catalog.customer_of(connection, tenant.id)
    return recorded or customer.id


@dataclass
class DayReport:
    tenant_id: str
    day: dt.date
    executions: int | None
    decision: ReportDecision | None = None
    sent: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def metadata(self) -> dict[str, Any]:
        decision = self.decision
        return {
            "executions": self.executions,
            "reported_before": decision.reported if decision else None,
            "reason": decision.reason if decision else "no usage row",
            "sent": len(self.sent),
            "duplicates_already_held": len(self.duplicates),
            "cancelled": len(self.cancelled),
            "failed": len(self.failed),
            "over_reported": decision.over_reported if decision else 0,
        }


class MeterReporter:
    def __init__(
        self,
        client: stripe.StripeClient,
        engine: sa.Engine,
        log: Log,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.client, self.engine, self.log, self.now = client, engine, log, now

    def _send(self, report: DayReport, customer: str, identifier: str, quantity: int) -> None:
        timestamp = event_timestamp(report.day, self.now())
        try:
            # The timestamp is in the key: a day still running is stamped "now", and a retry
            # with other parameters under the same key would be an idempotency error.
            self.client.v1.billing.meter_events.create(
                params={
                    "event_name": METER_EVENT_NAME,
                    "identifier": identifier,
                    "timestamp": timestamp,
                    "payload": {CUSTOMER_PAYLOAD_KEY: customer, VALUE_PAYLOAD_KEY: str(quantity)},
                },
                options={"idempotency_key": f"rp9-meter-{identifier}-{timestamp}"},
            )
        except stripe.StripeError as error:
            if not is_duplicate_identifier(error):
                self._failed(report, identifier, error)
                return
            # Stripe holds this identifier: an earlier attempt got through, at a time we do
            # not know (so it is never cancelled later: the window may have passed).
            report.duplicates.append(identifier)
            self.log(f"{identifier}: Stripe already holds it, counted as sent")
            with self.engine.begin() as connection:
                billing_catalog.mark(
                    connection, billing_catalog.STRIPE, identifier, "sent", receipt_known=False
                )
            return
        report.sent.append(identifier)
        with self.engine.begin() as connection:
            billing_catalog.mark(connection, billing_catalog.STRIPE, identifier, "sent")

    def _cancel(self, report: DayReport, ledger_identifier: str, target: str) -> None:
        try:
            self.client.v1.billing.meter_event_adjustments.create(
                params={
                    "event_name": METER_EVENT_NAME,
                    "type": "cancel",
                    "cancel": {"identifier": target},
                },
                options={"idempotency_key": f"rp9-meter-{ledger_identifier}"},
            )
        except stripe.StripeError as error:
            self._failed(report, ledger_identifier, error)
            return
        report.cancelled.append(target)
        with self.engine.begin() as connection:
            billing_catalog.mark(connection, billing_catalog.STRIPE, ledger_identifier, "sent")

    def _failed(self, report: DayReport, identifier: str, error: stripe.StripeError) -> None:
        message = f"{type(error).__name__} {error.http_status}: {error.user_message or error}"
        report.failed[identifier] = message
        self.log(f"{identifier}: {message}")
        with self.engine.begin() as connection:
            billing_catalog.mark(connection, billing_catalog.STRIPE, identifier, "failed", message)

    def _act(self, report: DayReport, customer: str, decision: ReportDecision) -> None:
        tenant_id = uuid.UUID(report.tenant_id)
        for entry in decision.retry:
            self._retry(report, customer, entry)
        for cancel in decision.cancel:
            self._write(tenant_id, report.day, EXECUTIONS_METRIC + CANCEL_SUFFIX, cancel)
            self._cancel(report, cancel.ledger_identifier, cancel.identifier)
            if report.failed:
                return
        for send in decision.send:
            self._write(tenant_id, report.day, EXECUTIONS_METRIC, send)
            self._send(report, customer, send.identifier, send.quantity)

    def _retry(self, report: DayReport, customer: str, entry: LedgerEntry) -> None:
        if entry.is_cancel:
            self._cancel(report, entry.identifier, entry.identifier.removeprefix(CANCEL_PREFIX))
        else:
            self._send(report, customer, entry.identifier, entry.quantity)

    def _write(self, tenant_id: uuid.UUID, day: dt.date, metric: str, what: Send | Cancel) -> None:
        identifier = what.ledger_identifier if isinstance(what, Cancel) else what.identifier
        quantity = -what.quantity if isinstance(what, Cancel) else what.quantity
        with self.engine.begin() as connection:
            billing_catalog.write_pending(
                connection, billing_catalog.STRIPE, tenant_id, day, metric, identifier, quantity
            )

    def report_day(self, tenant: Tenant, day: dt.date) -> DayReport:
        """Bring Stripe's meter in line with `usage` for one tenant and day. Rounds repeat
        while they make progress (a retry, then what is still missing), at most three."""
        with self.engine.begin() as connection:
            executions = billing_catalog.executions_on(connection, tenant.id, day)
        report = DayReport(str(tenant.id), day, executions)
        if executions is None:
            self.log(f"{tenant.slug} {day}: no usage row; nothing to report")
            return report
        customer = ensure_customer(self.client, self.engine, tenant)
        with self.engine.begin() as connection:
            meter = billing_catalog.stripe_id(connection, "meter", METER_LOOKUP_KEY)
        if meter is None:  # a fresh platform: the meter before its first event
            CatalogSync(self.client, self.engine, self.log).meter()
        for _ in range(3):
            with self.engine.begin() as connection:
                entries = billing_catalog.ledger(connection, billing_catalog.STRIPE, tenant.id, day)
            decision = decide_report(str(tenant.id), day, executions, entries, self.now())
            report.decision = decision
            if decision.is_noop or report.failed:
                break
            self.log(
                f"{tenant.slug} {day}: {decision.reason} (target {executions}, "
                f"reported {decision.reported})"
            )
            self._act(report, customer, decision)
        if report.decision and report.decision.over_reported:
            excess = report.decision.over_reported
            self.log(
                f"{tenant.slug} {day}: over-reported by {excess} executions; Stripe can "
                "no longer cancel them: issue a credit note"
            )
        return report


def meter_summary(
    client: stripe.StripeClient, engine: sa.Engine, tenant_ref: str, day: dt.date
) -> float:
    """What Stripe's meter holds for a tenant's day (its event summary over the UTC day)."""
    with engine.begin() as connection:
        tenant = tenant_catalog.get_tenant(connection, tenant_ref)
        meter_id = billing_catalog.stripe_id(connection, "meter", METER_LOOKUP_KEY)
        customer = billing_catalog.customer_of(connection, tenant.id) if tenant else None
    if tenant is None or meter_id is None or customer is None:
        raise LookupError(f"no tenant, meter or customer for {tenant_ref!r}")
    start, end = day_window(day)
    summaries = client.v1.billing.meters.event_summaries.list(
        meter_id, params={"customer": customer, "start_time": start, "end_time": end}
    )
    return float(sum(s.aggregated_value for s in summaries.data))
