"""The one settings object, read from the environment only (`.env.example` lists every variable).

`PlatformSettings` is the root: one group per concept (`tenant_stack`, `autoscaling`, `usage`,
`chargeback`, `enforcement`, `stripe`), each read under its own prefix and with working
defaults, so that the Dagster code location can read it when its definitions load, with no
service running and no secret set. `Settings` extends it with the services' addresses and
secrets, which it requires: the API reads it once per process (`get_settings`).

The code location reads `PlatformSettings()` in its `@dg.definitions` functions only, never at
import and never in an op, asset or sensor body: what shapes a definition (a sensor's interval, a
schedule's cron or default status) is read there, and `defs/resources.py` binds the whole object
as the `settings` resource that ops and assets receive. It is read afresh each time definitions
load, so a reloaded code location (or a test that sets a variable first) sees the environment as
it is then.
"""

import re
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rp9_pipelines.domain.autoscaling import Policy
from rp9_pipelines.domain.chargeback import Capacity, Rates

Environment = Literal["development", "test", "production"]

# Values copied from the specification's `.env.example` or obviously unset; never acceptable
# as real secrets.
PLACEHOLDER_MARKERS = ("super_long_token", "changeme", "change-me", "__pass__", "xxx", "...")
MIN_TOKEN_LENGTH = 32


def is_placeholder(value: str) -> bool:
    lowered = value.strip().lower()
    return not lowered or any(marker in lowered for marker in PLACEHOLDER_MARKERS)


def sqlalchemy_url(database_url: str) -> str:
    """`postgres://` and `postgresql://` URLs (the specification's form) → the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    return database_url


class TenantStackSettings(BaseSettings):
    """Tenant containers (`TENANT_*`), with working defaults: read when the code location loads."""

    model_config = SettingsConfigDict(env_prefix="TENANT_", extra="ignore", frozen=True)

    # CPUs a tenant's container may use while n8n starts, before its plan's limit applies
    # (0: no boost); see domain.stack.startup_cpu. The Docker runtime's only.
    startup_cpu: float = 2.0
    # What runs tenants: this host's Docker Engine, or a Docker Swarm (SWARM_*).
    runtime: Literal["docker", "swarm"] = "docker"


class PromotionSettings(BaseSettings):
    """Promotions from the shared tier to a dedicated database (`PROMOTION_*`)."""

    model_config = SettingsConfigDict(env_prefix="PROMOTION_", extra="ignore", frozen=True)

    # How long after a promotion `POST /tenants/{id}/promotion/rollback` may go back; the shared
    # schema is kept until then, and removed by the next `promotion_windows` tick after.
    rollback_window_s: float = 86_400.0
    # "propose": the `promotion_candidates` sensor records its proposals for an operator to
    # approve (`POST /tenants/{id}/promote`, or `promote_tenant` in the Dagster UI); "auto": it
    # requests the promotion run itself.
    mode: Literal["propose", "auto"] = "propose"


class UpgradeSettings(BaseSettings):
    """Blue/green n8n upgrades (`UPGRADE_*`)."""

    model_config = SettingsConfigDict(env_prefix="UPGRADE_", extra="ignore", frozen=True)

    # After a switch: how long readiness, the probe and the error rate are watched before the
    # upgrade succeeds (a failure within it rolls back automatically).
    watch_s: float = 60.0
    # How long after an upgrade `POST /tenants/{id}/upgrade/rollback` may restore its snapshot.
    rollback_window_s: float = 86_400.0


class AutoscalingSettings(BaseSettings):
    """The worker autoscaler (`AUTOSCALE_*`). Every field has a working default, because the
    sensor is defined when the code location loads, where no secret may be required."""

    # An empty variable means "not set" (AUTOSCALE_TARGET_LATENCY_P95_S= turns that vote off).
    model_config = SettingsConfigDict(
        env_prefix="AUTOSCALE_", extra="ignore", frozen=True, env_parse_none_str=""
    )

    # Off by default so that a development or test Dagster never resizes tenants on its own;
    # production turns it on (`.env.example`).
    enabled: bool = False
    interval_s: int = 30
    # Which tenants it manages, by slug (shell-style pattern).
    tenants: str = "*"
    # The sliding window of finished executions behind executions/min and the p95s.
    signal_window_s: int = 120
    stabilisation_window_s: float = 300.0
    tolerance: float = 0.1
    max_step_up: int = 4
    target_utilisation: float = 0.8
    target_oldest_wait_s: float = 10.0
    target_queue_wait_p95_s: float = 10.0
    target_latency_p95_s: float | None = None

    def policy(self) -> Policy:
        return Policy(
            target_utilisation=self.target_utilisation,
            target_oldest_wait_s=self.target_oldest_wait_s,
            target_queue_wait_p95_s=self.target_queue_wait_p95_s,
            target_latency_p95_s=self.target_latency_p95_s,
            tolerance=self.tolerance,
            max_step_up=self.max_step_up,
            stabilisation_window_s=self.stabilisation_window_s,
        )


class UsageSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="USAGE_", extra="ignore", frozen=True, env_parse_none_str=""
    )

    # The container sampler runs every minute; off by default so that a development or test
    # Dagster does not launch a run a minute on its own (production and `make dev` turn it on).
    sampling_enabled: bool = False
    # A silence longer than this between two samples of a container means it was not running:
    # no memory is charged for it (a few missed ticks are not a stop).
    sample_max_gap_s: int = 300
    # Samples older than this are deleted by the sampler (usage keeps the daily figures).
    sample_retention_days: int = 40
    # The daily schedule materialises yesterday's partitions of every active tenant.
    daily_cron: str = "15 0 * * *"


class ChargebackSettings(BaseSettings):
    """Rates in the currency per unit, and the capacity the platform offers its tenants.
    CPU and memory default to OpenCost's on-premises list prices."""

    model_config = SettingsConfigDict(
        env_prefix="CHARGEBACK_", extra="ignore", frozen=True, env_parse_none_str=""
    )

    currency: str = "usd"
    rate_per_execution: float = 0.0002
    rate_per_duration_hour: float = 0.01
    rate_per_cpu_core_hour: float = 0.031611
    rate_per_memory_gb_hour: float = 0.004237
    capacity_cpu_cores: float = 2.0
    capacity_memory_gb: float = 24.0
    # Where the monthly CSV goes in the S3 bucket: <prefix>/<YYYY-MM>.csv
    s3_prefix: str = "chargeback"

    def rates(self) -> Rates:
        return Rates(
            per_execution=self.rate_per_execution,
            per_duration_hour=self.rate_per_duration_hour,
            per_cpu_core_hour=self.rate_per_cpu_core_hour,
            per_memory_gb_hour=self.rate_per_memory_gb_hour,
        )

    def capacity(self) -> Capacity:
        return Capacity(cpu_cores=self.capacity_cpu_cores, memory_gb=self.capacity_memory_gb)


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


class PlatformSettings(BaseSettings):
    """Every group of settings, nested; none is required (see the module's docstring)."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    tenant_stack: TenantStackSettings = Field(default_factory=TenantStackSettings)
    autoscaling: AutoscalingSettings = Field(default_factory=AutoscalingSettings)
    promotion: PromotionSettings = Field(default_factory=PromotionSettings)
    upgrade: UpgradeSettings = Field(default_factory=UpgradeSettings)
    usage: UsageSettings = Field(default_factory=UsageSettings)
    chargeback: ChargebackSettings = Field(default_factory=ChargebackSettings)
    enforcement: EnforcementSettings = Field(default_factory=EnforcementSettings)
    stripe: StripeSettings = Field(default_factory=StripeSettings)

    @classmethod
    def variables(cls) -> set[str]:
        """The name of every environment variable read, groups with their prefixes."""
        names = set()
        for name, field in cls.model_fields.items():
            group = field.annotation
            if isinstance(group, type) and issubclass(group, BaseSettings):
                prefix = group.model_config.get("env_prefix", "")
                names |= {f"{prefix}{member}".upper() for member in group.model_fields}
            else:
                names.add(name.upper())
        return names


class Settings(PlatformSettings):
    """The platform's settings plus the services' addresses and secrets: every variable of the
    specification's `.env.example` and what the design adds. Required where the API starts (and
    by tools and tests that talk to the services); the groups come with it (`settings.stripe`)."""

    # Production unless said otherwise: a deployment that forgets RP9_ENV still refuses
    # placeholder secrets (the local stack's `.stack/env` says development).
    rp9_env: Environment = "production"

    # The specification's variables.
    orch_port: int = 8080
    orch_token: SecretStr
    orch_hmac_secret: SecretStr | None = None
    base_domain: str = "localhost"
    acme_email: str = ""
    database_url: str
    # The platform's login for the tenants' databases (roles, schemas, databases, backups,
    # reads of n8n's data): CREATEDB and CREATEROLE, not a superuser. Empty: DATABASE_URL's
    # (development only; see `tenant_admin_url`).
    tenant_admin_database_url: str = ""
    redis_url: str
    stripe_secret_key: SecretStr = SecretStr("")
    supabase_url: str = ""
    supabase_service_role_key: SecretStr = SecretStr("")
    vault_addr: str
    vault_token: SecretStr

    # What the design adds.
    n8n_image: str = "rp9/n8n"
    n8n_version: str = "2.20.12"
    docker_host: str = "unix:///var/run/docker.sock"
    # With TENANT_RUNTIME=swarm: the Swarm manager's API, a node's engine by its hostname
    # (`{node}`), and the address at which tasks reach Postgres and Redis.
    swarm_manager_host: str = ""
    swarm_node_engine: str = ""
    swarm_services_ip: str = ""
    # How tenant containers reach the platform's Postgres and Redis (the host, from a container).
    tenant_services_host: str = "host.docker.internal"
    traefik_entrypoint: str = "web"
    traefik_url: str = "http://127.0.0.1:8088"
    traefik_api_url: str = "http://127.0.0.1:8089"
    traefik_cert_resolver: str = ""
    # Traefik's file-provider directory, where the API publishes the tenant fallback router
    # (empty: none), and how Traefik reaches this API (empty: http://127.0.0.1:$ORCH_PORT).
    traefik_dynamic_dir: str = ""
    orch_public_url: str = ""
    # Tenants' secret files, mounted read-only into their containers at /run/secrets.
    secrets_dir: str = "/var/lib/rp9/secrets"
    s3_endpoint_url: str = ""
    s3_region: str = "us-east-1"
    s3_bucket: str = "rp9-backups"
    # Regions whose tenants' backups stay in a bucket of their own: eu-1=bucket,us-1=bucket.
    s3_region_buckets: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr = SecretStr("")
    prometheus_url: str = ""
    # Where Prometheus reads file_sd targets: on a Swarm, the API writes the tasks to scrape
    # there (n8n-swarm.json; empty: not written).
    prometheus_targets_dir: str = ""
    # Seals the platform's secrets snapshot (64 hex characters); the operator keeps a copy away
    # from the backups: without it the snapshot, and so every tenant's key, cannot be restored.
    platform_backup_key: SecretStr = SecretStr("")
    dagster_graphql_url: str = "http://127.0.0.1:3000/graphql"

    @property
    def image(self) -> str:
        return f"{self.n8n_image}:{self.n8n_version}"

    @property
    def tenant_admin_url(self) -> str:
        """TENANT_ADMIN_DATABASE_URL, or in development DATABASE_URL when it is not set."""
        if self.tenant_admin_database_url or self.rp9_env != "development":
            return self.tenant_admin_database_url
        return self.database_url

    @model_validator(mode="after")
    def _swarm_says_where(self) -> "Settings":
        if self.tenant_stack.runtime == "swarm":
            missing = [
                name.upper()
                for name in ("swarm_manager_host", "swarm_node_engine", "swarm_services_ip")
                if not getattr(self, name)
            ]
            if missing:
                raise ValueError(f"TENANT_RUNTIME=swarm needs {', '.join(missing)}")
        return self

    @model_validator(mode="after")
    def _refuse_weak_secrets_outside_development(self) -> "Settings":
        token = self.orch_token.get_secret_value()
        if not token.strip():  # in any environment: an empty token must not match an empty one
            raise ValueError("ORCH_TOKEN is empty; set a real secret")
        if self.rp9_env == "development":
            return self
        if is_placeholder(token) or len(token) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"ORCH_TOKEN must be a real secret of at least {MIN_TOKEN_LENGTH} characters "
                f"when RP9_ENV={self.rp9_env} (generate one with `openssl rand -hex 32`)"
            )
        if is_placeholder(self.vault_token.get_secret_value()):
            raise ValueError("VAULT_TOKEN is a placeholder; set a real value")
        # Optional (empty: requests are not signed), but a real secret when set.
        hmac_secret = self.orch_hmac_secret.get_secret_value() if self.orch_hmac_secret else ""
        if hmac_secret and (is_placeholder(hmac_secret) or len(hmac_secret) < MIN_TOKEN_LENGTH):
            raise ValueError(
                f"ORCH_HMAC_SECRET must be a real secret of at least {MIN_TOKEN_LENGTH} "
                f"characters when RP9_ENV={self.rp9_env}, or empty"
            )
        stripe_key = self.stripe_secret_key.get_secret_value()
        if stripe_key and is_placeholder(stripe_key):
            raise ValueError("STRIPE_SECRET_KEY is a placeholder; set a real key or leave it empty")
        backup_key = self.platform_backup_key.get_secret_value()
        if backup_key and not re.fullmatch(r"[0-9a-fA-F]{64}", backup_key):
            raise ValueError(
                "PLATFORM_BACKUP_KEY must be 64 hexadecimal characters (openssl rand -hex 32)"
            )
        if "__PASS__" in self.database_url:
            raise ValueError("DATABASE_URL still holds the __PASS__ placeholder")
        if "__PASS__" in self.tenant_admin_database_url:
            raise ValueError("TENANT_ADMIN_DATABASE_URL still holds the __PASS__ placeholder")
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()  # fields not given here come from the environment


def get_stripe_settings() -> StripeSettings:
    """The Stripe group of `get_settings()` (the webhook route's dependency)."""
    return get_settings().stripe
