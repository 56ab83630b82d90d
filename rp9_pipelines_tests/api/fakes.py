"""In-memory stand-ins for what the routes reach: Dagster, the catalog's tenants, the
idempotency keys. The stack tests prove the real ones; these pin the routes' contract."""

import datetime as dt
import uuid
from typing import Any

from rp9_pipelines.api.dagster_client import RunInfo
from rp9_pipelines.api.errors import ApiError
from rp9_pipelines.api.idempotency import Kept
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.launches import Launch
from rp9_pipelines.services.tenants import Conflict

# As migration 0002 seeds them.
PLANS: dict[str, dict[str, Any]] = {
    name: {
        "executions_per_month": executions,
        "concurrency": concurrency,
        "cpu": cpu,
        "memory_mb": memory_mb,
        "min_workers": min_workers,
        "max_workers": max_workers,
        "overage_allowed": overage,
    }
    for name, executions, concurrency, cpu, memory_mb, min_workers, max_workers, overage in [
        ("starter", 10_000, 5, 1.0, 1024, 1, 1, False),
        ("pro", 100_000, 20, 2.0, 2048, 1, 4, False),
    ]
}


class FakeDagster:
    """Records every launch and answers with run ids; `down` makes it unreachable."""

    def __init__(self) -> None:
        self.launched: list[Launch] = []
        self.down = False

    def launch(self, launch: Launch) -> str:
        if self.down:
            raise ApiError(503, "dagster_unavailable", "Dagster is unreachable: connection refused")
        self.launched.append(launch)
        return f"run-{len(self.launched)}"

    def run(self, run_id: str) -> RunInfo | None:
        if self.down:
            raise ApiError(503, "dagster_unavailable", "Dagster is unreachable: connection refused")
        number = int(run_id.removeprefix("run-")) if run_id.startswith("run-") else 0
        if not 0 < number <= len(self.launched):
            return None
        launch = self.launched[number - 1]
        return RunInfo(run_id, launch.job, "QUEUED", launch.tags, None, None)


class FakeTenants:
    """The catalog's tenants and plans (`services.tenants.Tenants`)."""

    def __init__(self) -> None:
        self.rows: dict[uuid.UUID, Tenant] = {}
        self.quotas: dict[uuid.UUID, dict[str, Any]] = {}

    def get(self, ref: str) -> Tenant | None:
        return next((t for t in self.rows.values() if ref in (str(t.id), t.slug)), None)

    def plan_limits(self, plan: str) -> dict[str, Any] | None:
        return PLANS.get(plan)

    def add(self, values: dict[str, Any], plan_limits: dict[str, Any]) -> Tenant:
        slug, domain = values["slug"], values.get("custom_domain")
        if self.get(slug) is not None:
            raise Conflict("slug_taken", f"slug {slug!r} is already taken")
        if domain and any(
            t.custom_domain == domain and t.status != "deleted" for t in self.rows.values()
        ):
            raise Conflict("domain_taken", f"{domain!r} is already routed")
        fields = {k: v for k, v in values.items() if k != "compliance"}
        tenant = self.put(status="provisioning", **fields)
        self.quotas[tenant.id] = plan_limits
        return tenant

    def forget(self, tenant_id: uuid.UUID) -> None:
        del self.rows[tenant_id]
        self.quotas.pop(tenant_id, None)

    def put(self, slug: str, status: str = "active", **fields: Any) -> Tenant:
        """A tenant row as a test needs it."""
        now = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)
        defaults: dict[str, Any] = {
            "name": slug,
            "plan": "starter",
            "tier": "shared",
            "region": "eu-1",
            "custom_domain": None,
            "n8n_version": "2.20.12",
            "workers": 1,
        }
        tenant = Tenant(
            id=uuid.uuid4(),
            slug=slug,
            status=status,
            last_error=None,
            created_at=now,
            updated_at=now,
            **(defaults | fields),
        )
        self.rows[tenant.id] = tenant
        return tenant


class FakeKeyStore:
    """Idempotency keys in a dict (`api.idempotency.KeyStore`)."""

    def __init__(self) -> None:
        self.kept: dict[tuple[str, str], Kept] = {}

    def claim(self, key: str, route: str, request_sha256: str) -> Kept | None:
        if (key, route) in self.kept:
            return self.kept[key, route]
        self.kept[key, route] = Kept(request_sha256, 0, {})
        return None

    def keep(self, key: str, route: str, status_code: int, response: dict[str, Any]) -> None:
        self.kept[key, route] = Kept(self.kept[key, route].request_sha256, status_code, response)

    def release(self, key: str, route: str) -> None:
        del self.kept[key, route]
