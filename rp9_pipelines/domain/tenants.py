"""Tenants as plain data: validation of requests, deterministic names, effective quotas."""

import re
from dataclasses import dataclass
from typing import Literal

from rp9_pipelines.domain.routing import is_valid_hostname

Tier = Literal["shared", "dedicated"]
SHARED_DATABASE = "n8n_shared"
# Databases of the platform itself on the tenants' Postgres server, which no tenant database
# may ever be named, created over or dropped as (`rp9_templates` is `domain.template`'s
# TEMPLATE_DATABASE; the catalog's default name is `rp9_platform`).
PLATFORM_DATABASES = frozenset(
    {
        SHARED_DATABASE,
        "rp9_templates",
        "rp9_platform",
        "postgres",
        "supabase",
        "template0",
        "template1",
    }
)
# Matched whole (`fullmatch`): `$` alone would accept a trailing newline.
SLUG_RE = re.compile(r"[a-z0-9][a-z0-9-]{1,38}[a-z0-9]")
# Names the platform itself uses or may route under BASE_DOMAIN (hosts, services, databases).
RESERVED_SLUGS = frozenset(
    {
        "www",
        "api",
        "app",
        "admin",
        "traefik",
        "dagster",
        "grafana",
        "prometheus",
        "loki",
        "status",
        "shared",
        "mail",
        "smtp",
        "imap",
        "pop",
        "mx",
        "ns1",
        "ns2",
        "vault",
        "s3",
        "minio",
        "supabase",
        "postgres",
        "postgrest",
        "redis",
        "stripe",
        "template",
        "templates",
        "rp9",
        "platform",
        "n8n",
        "drill",
        "auth",
        "login",
        "billing",
        "metrics",
        "webhook",
        "webhooks",
        "static",
        "cdn",
        "docs",
        "localhost",
    }
)


class InvalidRequest(ValueError):
    """A request the platform refuses, with a stable machine-readable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_slug(slug: str) -> None:
    if not SLUG_RE.fullmatch(slug) or "--" in slug:
        raise InvalidRequest(
            "invalid_slug",
            f"slug {slug!r} must be 3-40 characters of a-z, 0-9 and inner single hyphens",
        )
    if slug in RESERVED_SLUGS or TenantNames(slug, "dedicated").db_name in PLATFORM_DATABASES:
        raise InvalidRequest("invalid_slug", f"slug {slug!r} is reserved by the platform")


def check_tenant_database(names: "TenantNames") -> None:
    """Refuse a dedicated tenant whose database would be a platform database (slug `shared`
    gives `n8n_shared`) or not one of the platform's `n8n_<slug>` names: nothing is created in,
    reused as or dropped as such a database, whatever the catalog holds."""
    ident = names.db_name.removeprefix("n8n_")
    if names.tier == "dedicated" and (
        names.db_name in PLATFORM_DATABASES
        or not names.db_name.startswith("n8n_")
        or not SLUG_RE.fullmatch(ident.replace("_", "-"))
    ):
        raise InvalidRequest(
            "invalid_slug", f"{names.slug!r} cannot have the database {names.db_name!r}"
        )


def check_custom_domain(domain: str | None, base_domain: str) -> None:
    if domain is None:
        return
    if not is_valid_hostname(domain):
        raise InvalidRequest("invalid_custom_domain", f"{domain!r} is not a valid DNS hostname")
    if domain == base_domain or domain.endswith("." + base_domain):
        raise InvalidRequest(
            "invalid_custom_domain", f"{domain!r} is inside the platform's domain {base_domain!r}"
        )


@dataclass(frozen=True)
class Limits:
    """What a tenant may use: from its plan, overridden by Stripe entitlements, then by hand."""

    executions_per_month: int
    concurrency: int
    cpu: float
    memory_mb: int
    min_workers: int
    max_workers: int
    overage_allowed: bool


QUOTA_PRECEDENCE = ("plan", "stripe", "manual")


def effective_limits(overrides: dict[str, dict[str, object]]) -> Limits:
    """Merge quota rows by source: manual beats stripe beats plan; None means "not set here"."""
    merged: dict[str, object] = {}
    for source in QUOTA_PRECEDENCE:
        for field, value in overrides.get(source, {}).items():
            if value is not None:
                merged[field] = value
    return Limits(
        executions_per_month=int(str(merged["executions_per_month"])),
        concurrency=int(str(merged["concurrency"])),
        cpu=float(str(merged["cpu"])),
        memory_mb=int(str(merged["memory_mb"])),
        min_workers=int(str(merged["min_workers"])),
        max_workers=int(str(merged["max_workers"])),
        overage_allowed=bool(merged["overage_allowed"]),
    )


def check_workers(workers: int, limits: Limits, plan: str) -> None:
    if not limits.min_workers <= workers <= limits.max_workers:
        raise InvalidRequest(
            "workers_out_of_range",
            f"plan {plan!r} allows {limits.min_workers}..{limits.max_workers} workers, "
            f"not {workers}",
        )


def check_resources(cpu: float | None, memory_mb: int | None) -> None:
    if cpu is not None and not 0.1 <= cpu <= 64:
        raise InvalidRequest("invalid_resources", f"cpu {cpu} must be within 0.1..64")
    if memory_mb is not None and not 512 <= memory_mb <= 262_144:
        raise InvalidRequest(
            "invalid_resources", f"memory_mb {memory_mb} must be within 512..262144"
        )


@dataclass(frozen=True)
class RoleLimits:
    """What the tenant's Postgres role may use: its connections (the server refuses more) and
    the default statement timeout of its sessions."""

    connection_limit: int
    statement_timeout_ms: int


# n8n's default DB_POSTGRESDB_POOL_SIZE: connections per n8n process (main or worker).
N8N_POOL_SIZE = 2
# Room for a second stack during a blue/green switch or a drain, and a CLI (`n8n export`).
SPARE_CONNECTIONS = 2
# n8n's longest statements are its migrations and the pruning of old executions (batched).
STATEMENT_TIMEOUT_MS = 300_000


@dataclass(frozen=True)
class PoolSizes:
    """DB_POSTGRESDB_POOL_SIZE of the main and of each worker."""

    main: int
    worker: int


def pool_sizes(concurrency: int) -> PoolSizes:
    """Sized for the plan's concurrency. In queue mode the main writes every webhook's execution
    and reads its result while the caller waits: with n8n's default of two connections, 20
    webhooks a second queue for the pool until n8n's own database ping times out and it calls
    the database "not ready" (503 on every route, readiness down). A worker holds a connection
    per running execution step; half its job slots plus one covers its saves and reads."""
    per_worker_jobs = max(1, min(concurrency, 10))
    return PoolSizes(
        main=max(4, min(12, concurrency // 2)),
        worker=max(N8N_POOL_SIZE, min(6, per_worker_jobs // 2 + 1)),
    )


def role_limits(limits: Limits) -> RoleLimits:
    """The plan's Postgres limits: every n8n process of its largest stack (main and its
    maximum of workers) with its pool, twice (old and new containers overlap while a stack
    changes), plus spares."""
    pools = pool_sizes(limits.concurrency)
    per_stack = pools.main + limits.max_workers * pools.worker
    return RoleLimits(
        connection_limit=2 * per_stack + SPARE_CONNECTIONS,
        statement_timeout_ms=STATEMENT_TIMEOUT_MS,
    )


# A new role's limits when its plan's are not given: a stack of main and four workers.
DEFAULT_ROLE_LIMITS = RoleLimits(
    connection_limit=2 * N8N_POOL_SIZE * 5 + SPARE_CONNECTIONS,
    statement_timeout_ms=STATEMENT_TIMEOUT_MS,
)


@dataclass(frozen=True)
class TenantNames:
    """Every name derived from a tenant's slug and tier; the same inputs always give the same
    names, which is what makes each provisioning step idempotent."""

    slug: str
    tier: Tier

    @property
    def ident(self) -> str:
        return self.slug.replace("-", "_")

    @property
    def network(self) -> str:
        return f"rp9-t-{self.slug}"

    @property
    def router(self) -> str:
        return f"t-{self.slug}"

    @property
    def db_name(self) -> str:
        return SHARED_DATABASE if self.tier == "shared" else f"n8n_{self.ident}"

    @property
    def db_schema(self) -> str:
        return f"t_{self.ident}" if self.tier == "shared" else "public"

    @property
    def db_role(self) -> str:
        # Shared and dedicated roles differ so that a promotion can build the dedicated database
        # beside the shared schema.
        return f"{'t' if self.tier == 'shared' else 'd'}_{self.ident}"

    @property
    def redis_prefix(self) -> str:
        """Every Redis key and channel of the tenant starts with this (its ACL user's limit)."""
        return f"rp9:{self.slug}"

    @property
    def bull_prefix(self) -> str:
        return f"{self.redis_prefix}:bull"

    @property
    def redis_key_prefix(self) -> str:
        return f"{self.redis_prefix}:n8n"

    @property
    def redis_user(self) -> str:
        return f"rp9-{self.slug}"

    @property
    def vault_path(self) -> str:
        return f"rp9/tenants/{self.slug}"

    def container(self, role: str, color: str = "blue", index: int = 0) -> str:
        suffix = f"-{index}" if role == "worker" else ""
        return f"rp9-{self.slug}-{color}-{role}{suffix}"

    def host(self, base_domain: str) -> str:
        return f"{self.slug}.{base_domain}"

    def hosts(self, base_domain: str, custom_domain: str | None) -> list[str]:
        return [self.host(base_domain), *([custom_domain] if custom_domain else [])]
