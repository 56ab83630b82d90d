"""Enforcement's settings (`ENFORCEMENT_*`). Every field has a working default, because the
schedule is defined when the code location loads, where no variable may be required."""

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class EnforcementSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ENFORCEMENT_", extra="ignore", frozen=True, env_parse_none_str=""
    )

    # The 5-minute schedule ships stopped, so that a development or test Dagster never suspends
    # tenants on its own; production (and `make dev`) turn it on.
    enabled: bool = False
    # Which tenants it judges, by slug (shell-style pattern).
    tenants: str = "*"
    # Where warnings (and suspensions, overages, resumptions) are POSTed as JSON; empty: nowhere,
    # and events wait undelivered until a URL is set (within `notify_window_days`).
    webhook_url: str = ""
    # Signs each delivery (`X-Rp9-Signature: sha256=<HMAC(secret, "<timestamp>.<body>")>`).
    webhook_secret: SecretStr | None = None
    # Short: a dead receiver must never hold enforcement up.
    webhook_timeout_s: float = 3.0
    # Undelivered events older than this are not retried any more.
    notify_window_days: int = 7
