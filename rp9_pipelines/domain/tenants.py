"""Tenants as plain data: validation of requests, deterministic names, effective quotas."""

import re
from dataclasses import dataclass
from typing import Literal

from rp9_pipelines.domain.routing import is_valid_hostname

Tier = Literal["shared", "dedicated"]
SHARED_DATABASE = "n8n_shared"
SLUG_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{1,38})[a-z0-9]$")
# Names the platform itself may route under BASE_DOMAIN.
RESERVED_SLUGS = frozenset(
    {"www", "api", "app", "admin", "traefik", "dagster", "grafana", "prometheus", "loki", "status"}
)


class InvalidRequest(ValueError):
    """A request the platform refuses, with a stable machine-readable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_slug(slug: str) -> None:
    if not SLUG_RE.match(slug) or "--" in slug:
        raise InvalidRequest(
            "invalid_slug",
            f"slug {slug!r} must be 3-40 characters of a-z, 0-9 and inner single hyphens",
        )
    if slug in RESERVED_SLUGS:
        raise InvalidRequest("invalid_slug", f"slug {slug!r} is reserved by the platform")


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
