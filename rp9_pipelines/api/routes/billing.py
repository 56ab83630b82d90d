"""`POST /stripe/webhook`: Stripe's events about customers, verified by Stripe's own signature
scheme (`Stripe-Signature: t=...,v1=...`, HMAC-SHA256 with the endpoint's secret, 300 s
tolerance) instead of the platform's Bearer token, which Stripe does not send.

Entitlement summaries and subscription changes resync the customer from Stripe (its active
entitlements → the tenant's `stripe` quotas; its subscription's prices → the tenant's plan).
Every other event type, and customers that are no tenant's, are acknowledged and ignored. Each
event id is applied once: a redelivery is acknowledged without touching anything.
"""

import hashlib
import logging
from functools import lru_cache
from typing import Annotated, Any, Literal

import sqlalchemy as sa
import stripe
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, Field
from sqlalchemy.dialects.postgresql import insert

from rp9_pipelines.api.deps import EngineDep, RawBodyDep, SettingsDep
from rp9_pipelines.api.errors import ApiError, errors
from rp9_pipelines.catalog.tables import idempotency_keys
from rp9_pipelines.resources.stripe import make_client
from rp9_pipelines.services.billing import sync_customer
from rp9_pipelines.settings import StripeSettings, get_stripe_settings, is_placeholder

router = APIRouter(tags=["billing"])
log = logging.getLogger("rp9.stripe_webhook")

ROUTE = "POST /stripe/webhook"
HANDLED = frozenset(
    {
        "entitlements.active_entitlement_summary.updated",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
    }
)

StripeSettingsDep = Annotated[StripeSettings, Depends(get_stripe_settings)]


class WebhookOutcome(BaseModel):
    """What became of the event; the fields after `outcome` are there when they apply."""

    received: bool
    event: str = Field(description="Stripe's event id")
    type: str | None = None
    outcome: Literal["applied", "ignored", "duplicate"]
    reason: str | None = None
    tenant_id: str | None = None
    plan: str | None = Field(default=None, description="the tenant's plan after the resync")
    quotas: dict[str, Any] | None = Field(default=None, description="its `stripe` quotas")


@lru_cache(maxsize=4)
def _client(api_key: str, api_base: str, retries: int, timeout_s: float) -> stripe.StripeClient:
    return make_client(api_key, api_base, retries, timeout_s)


def verify(raw: bytes, header: str | None, secret: str, tolerance_s: int) -> Any:
    """The event, if Stripe signed exactly these bytes recently; a stable 400 code otherwise."""
    if is_placeholder(secret):  # a published placeholder would let anyone sign events
        raise ApiError(503, "webhook_not_configured", "STRIPE_WEBHOOK_SECRET is not set")
    if not header:
        raise ApiError(400, "signature_required", "Stripe-Signature header is missing")
    try:
        return stripe.Webhook.construct_event(raw, header, secret, tolerance=tolerance_s)
    except stripe.SignatureVerificationError as error:
        if "tolerance" in str(error):
            raise ApiError(400, "stale_timestamp", "the signature's timestamp is too old") from None
        raise ApiError(400, "invalid_signature", "the Stripe signature does not match") from None
    except ValueError:
        raise ApiError(400, "invalid_payload", "the body is not a Stripe event") from None


def _already_applied(engine: sa.Engine, event_id: str) -> bool:
    query = sa.select(idempotency_keys.c.key).where(
        idempotency_keys.c.key == event_id, idempotency_keys.c.route == ROUTE
    )
    with engine.connect() as connection:
        return connection.execute(query).first() is not None


def _record(engine: sa.Engine, event_id: str, raw: bytes, response: dict[str, Any]) -> None:
    with engine.begin() as connection:
        connection.execute(
            insert(idempotency_keys)
            .values(
                key=event_id,
                route=ROUTE,
                request_sha256=hashlib.sha256(raw).hexdigest(),
                status_code=200,
                response=response,
            )
            .on_conflict_do_nothing()
        )


@router.post(
    "/stripe/webhook",
    response_model=WebhookOutcome,
    response_model_exclude_unset=True,
    responses=errors(400, 503),
)
def stripe_webhook(
    raw: RawBodyDep,
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    stripe_settings: StripeSettingsDep,
) -> dict[str, Any]:
    """Receive a Stripe event (signature-verified), apply entitlement and subscription changes."""
    event = verify(
        raw,
        request.headers.get("stripe-signature"),
        stripe_settings.webhook_secret.get_secret_value(),
        stripe_settings.webhook_tolerance_s,
    )
    event_id, event_type = str(event.id), str(event.type)
    if _already_applied(engine, event_id):
        return {"received": True, "event": event_id, "outcome": "duplicate"}
    outcome: dict[str, Any] = {"received": True, "event": event_id, "type": event_type}
    if event_type not in HANDLED:
        outcome["outcome"] = "ignored"
    else:
        customer = event.data.object.to_dict().get("customer")
        if isinstance(customer, dict):
            customer = customer.get("id")
        client = _client(
            settings.stripe_secret_key.get_secret_value(),
            stripe_settings.api_base,
            stripe_settings.max_network_retries,
            stripe_settings.timeout_s,
        )
        try:
            synced = sync_customer(client, engine, str(customer), log.info) if customer else None
        except stripe.StripeError as error:
            # Not recorded: Stripe redelivers, and the next delivery resyncs.
            log.warning("event %s: Stripe unreachable while resyncing: %s", event_id, error)
            raise ApiError(
                503, "stripe_unavailable", "could not read the customer from Stripe"
            ) from None
        if synced is None:
            outcome.update(outcome="ignored", reason="customer belongs to no tenant")
        else:
            outcome.update(
                outcome="applied",
                tenant_id=synced.tenant_id,
                plan=synced.plan_after,
                quotas=synced.quotas,
            )
    _record(engine, event_id, raw, outcome)
    log.info("stripe event %s %s: %s", event_id, event_type, outcome["outcome"])
    return outcome
