"""The plans table → Stripe: the executions meter, a product per plan with its features, a flat
monthly price and a metered price on the meter. Idempotent: every object is found again (by the
id remembered in `stripe_objects`, else by its natural key in Stripe: a meter's event name, a
price's or a feature's lookup key, a product's metadata) before anything is created, and every
creation carries an idempotency key derived from what it creates."""

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
import stripe

from rp9_pipelines.catalog import billing as billing_catalog
from rp9_pipelines.domain.billing import (
    CUSTOMER_PAYLOAD_KEY,
    METER_EVENT_NAME,
    METER_LOOKUP_KEY,
    VALUE_PAYLOAD_KEY,
    PlanSpec,
    feature_name,
    plan_catalog,
)

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
            "display_name": "n8n executions", "event_name": METER_EVENT_NAME,
            "default_aggregation": {"formula": "sum"},
            "customer_mapping": {"event_payload_key": CUSTOMER_PAYLOAD_KEY, "type": "by_id"},
            "value_settings": {"event_payload_key": VALUE_PAYLOAD_KEY},
        }  # fmt: skip
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
            for pf in v1.products.features.list(product_id, params={"limit": 100})
            .auto_paging_iter()
        }  # fmt: skip
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
                product_id, params={"entitlement_feature": feature_id},
                options={"idempotency_key": f"rp9-attach-{product_id}-{feature_id}"},
            )  # fmt: skip
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
            base = self.price(spec.base_price_key, {
                "product": product_id, "currency": spec.currency, "unit_amount": spec.base_amount,
                "recurring": {"interval": "month", "usage_type": "licensed"},
                "nickname": f"{spec.name} monthly",
            })  # fmt: skip
            metered = self.price(spec.metered_price_key, {
                "product": product_id, "currency": spec.currency,
                "unit_amount_decimal": spec.per_execution_amount,
                "recurring": {"interval": "month", "usage_type": "metered", "meter": meter_id},
                "nickname": f"{spec.name} per execution",
            })  # fmt: skip
            with self.engine.begin() as connection:
                billing_catalog.set_plan_stripe_ids(connection, spec.name, product_id, base)
            self.outcome.plans[spec.name] = {"product": product_id, "base_price": base,
                                             "metered_price": metered}  # fmt: skip
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
