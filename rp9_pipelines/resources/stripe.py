"""The Stripe API as the platform uses it: one `stripe.StripeClient` with a base address,
bounded retries (the SDK retries 409/5xx and connection errors, with an `Idempotency-Key` on
every POST) and a timeout."""

from typing import Any

import dagster as dg
import stripe
from pydantic import PrivateAttr

from rp9_pipelines.resources.health import Health, probe
from rp9_pipelines.settings import STRIPE_API


def make_client(
    api_key: str, api_base: str = STRIPE_API, max_network_retries: int = 2, timeout_s: float = 20
) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key,
        base_addresses={"api": api_base},
        max_network_retries=max_network_retries,
        http_client=stripe.RequestsClient(timeout=timeout_s),
    )


def is_duplicate_identifier(error: stripe.StripeError) -> bool:
    """Stripe's answer to a meter event whose identifier it already holds (rolling 24 h):
    400 `invalid_request_error` on `identifier`, `Stripe-Should-Retry: false`. The identifier
    names the billable fact, so for the caller this means "already delivered"."""
    return (
        isinstance(error, stripe.InvalidRequestError)
        and error.http_status == 400
        and "already exists with identifier" in (error.user_message or str(error))
    )


class StripeResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Stripe (or the project's Stripe-compatible server, by `api_base`)."""

    api_key: str
    api_base: str = STRIPE_API
    max_network_retries: int = 2
    timeout_s: float = 20.0

    _client: stripe.StripeClient | None = PrivateAttr(default=None)

    @property
    def client(self) -> stripe.StripeClient:
        if self._client is None:
            self._client = make_client(
                self.api_key, self.api_base, self.max_network_retries, self.timeout_s
            )
        return self._client

    def ping(self) -> Health:
        def check() -> str:
            meters: Any = self.client.v1.billing.meters.list(params={"limit": 1})
            return f"Stripe API at {self.api_base} ({len(meters.data)} meter(s) on page 1)"

        return probe("stripe", check)
