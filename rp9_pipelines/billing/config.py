"""Stripe settings beyond the specification's `STRIPE_SECRET_KEY` (which stays in
`rp9_pipelines.settings`): where the API is, the webhook signing secret, retries."""

from functools import lru_cache

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

STRIPE_API = "https://api.stripe.com"


class StripeSettings(BaseSettings):
    """`STRIPE_*`. Defaults work without any variable so that definitions load anywhere; a
    webhook without `STRIPE_WEBHOOK_SECRET` is refused, never accepted unsigned."""

    model_config = SettingsConfigDict(
        env_prefix="STRIPE_", extra="ignore", frozen=True, env_parse_none_str=""
    )

    # Stripe itself in production; the project's Stripe-compatible server in development.
    api_base: str = STRIPE_API
    webhook_secret: SecretStr = SecretStr("")
    webhook_tolerance_s: int = 300
    max_network_retries: int = 2
    timeout_s: float = 20.0


@lru_cache(maxsize=1)
def get_stripe_settings() -> StripeSettings:
    return StripeSettings()
