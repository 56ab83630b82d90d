"""In-memory stand-ins for what the routes reach: Dagster, the catalog's tenants, backups and
drills, the idempotency keys and the accepted signatures. The stack tests prove the real ones;
these pin the routes' contract."""

import dataclasses
import datetime as dt
import uuid
from typing import Any

from rp9_pipelines.api.dagster_client import RunInfo
from rp9_pipelines.api.errors import ApiError
from rp9_pipelines.api.idempotency import Kept
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.domain.backups import BackupRecord
from rp9_pipelines.domain.promotion import refusal, rollback_refusal
from rp9_pipelines.launches import Launch
from rp9_pipelines.services.tenants import Conflict, InFlight

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


class FakeDrills:
    """The catalog's backups and drills as the drill routes read them
    (`services.restore_drills.Drills`)."""

    def __init__(self) -> None:
        self.records: list[BackupRecord] = []
        self.rows: list[dict[str, Any]] = []

    def backups(self, tenant_id: uuid.UUID) -> list[BackupRecord]:
        return [b for b in self.records if b.tenant_id == tenant_id]

    def latest(self, tenant_id: uuid.UUID, limit: int) -> list[dict[str, Any]]:
        mine = [d for d in self.rows if d["tenant_id"] == tenant_id]
        return sorted(mine, key=lambda d: d["started_at"], reverse=True)[:limit]

    def put_backup(
        self, tenant: Tenant, status: str = "ok", age: dt.timedelta = dt.timedelta(days=1)
    ) -> BackupRecord:
        """A daily backup of `tenant` that finished `age` ago."""
        finished = dt.datetime.now(dt.UTC) - age
        record = BackupRecord(
            id=uuid.uuid4(),
            tenant_id=tenant.id,
            kind="daily",
            status=status,
            bucket="rp9-backups",
            key=f"tenants/{tenant.slug}/daily/{uuid.uuid4()}.pgdump",
            started_at=finished - dt.timedelta(minutes=2),
            finished_at=None if status == "running" else finished,
            expires_at=finished + dt.timedelta(days=6),
        )
        self.records.append(record)
        return record


class FakeKeyStore:
    """Idempotency keys in a dict (`api.idempotency.KeyStore`); `now` is its clock."""

    def __init__(self) -> None:
        self.kept: dict[str, Kept] = {}
        self.now = dt.datetime(2026, 5, 1, tzinfo=dt.UTC)

    def claim(self, key: str, fingerprint: str) -> Kept | None:
        if key not in self.kept:
            self.kept[key] = Kept(fingerprint, 0, {}, self.now)
            return None
        kept = self.kept[key]
        assert kept.started_at is not None
        return dataclasses.replace(kept, age_s=(self.now - kept.started_at).total_seconds())

    def take_over(self, key: str, started_at: dt.datetime) -> bool:
        kept = self.kept[key]
        if kept.status_code != 0 or kept.started_at != started_at:
            return False
        self.kept[key] = dataclasses.replace(kept, started_at=self.now)
        return True

    def keep(self, key: str, status_code: int, response: dict[str, Any]) -> None:
        self.kept[key] = dataclasses.replace(
            self.kept[key], status_code=status_code, response=response
        )

    def release(self, key: str) -> None:
        del self.kept[key]


class FakeSignatures:
    """Accepted signatures in a set (`api.auth.SignatureLedger`)."""

    def __init__(self) -> None:
        self.accepted: set[str] = set()

    def accept(self, signature: str, fingerprint: str) -> bool:
        if signature in self.accepted:
            return False
        self.accepted.add(signature)
        return True


class FakeQueues:
    """How busy each tenant is (`services.tenants.Queues`): idle unless a test says so."""

    def __init__(self) -> None:
        self.loads: dict[str, InFlight] = {}

    def in_flight(self, tenant: Tenant) -> InFlight:
        return self.loads.get(tenant.slug, InFlight(running=0, waiting=0, slots_per_worker=5))


class FakePromotions:
    """The catalog's promotions (`services.promotion.Promotions`), over `FakeTenants`' rows."""

    def __init__(self, tenants: FakeTenants) -> None:
        self.tenants = tenants
        self.rows: dict[uuid.UUID, dict[str, Any]] = {}

    def _set_status(self, tenant: Tenant, status: str) -> None:
        self.tenants.rows[tenant.id] = dataclasses.replace(tenant, status=status)

    def start(self, tenant: Tenant, trigger: str) -> uuid.UUID:
        current = self.tenants.rows[tenant.id]
        running = any(
            p["tenant_id"] == tenant.id and p["status"] == "running" for p in self.rows.values()
        )
        why = refusal(current.tier, current.status, running)
        if why is not None:
            raise Conflict(*why)
        promotion_id = uuid.uuid4()
        now = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
        self.rows[promotion_id] = {
            "id": promotion_id,
            "tenant_id": tenant.id,
            "trigger": trigger,
            "status": "running",
            "phase": "requested",
            "run_id": None,
            "started_at": now,
            "finished_at": None,
            "switched_at": None,
            "rollback_until": None,
            "shared_removed_at": None,
            "error": None,
            "steps": [],
            "figures": {},
        }
        self._set_status(current, "promoting")
        return promotion_id

    def forget(self, promotion_id: uuid.UUID, tenant: Tenant) -> None:
        del self.rows[promotion_id]
        self._set_status(tenant, tenant.status)

    def start_rollback(self, tenant: Tenant, now: dt.datetime) -> uuid.UUID:
        current = self.tenants.rows[tenant.id]
        switched = [
            p for p in self.rows.values() if p["tenant_id"] == tenant.id and p["switched_at"]
        ]
        last = max(switched, key=lambda p: p["switched_at"], default=None)
        why = rollback_refusal(current.tier, current.status, last, now)
        if why is not None:
            raise Conflict(*why)
        assert last is not None
        self._set_status(current, "promoting")
        promotion_id: uuid.UUID = last["id"]
        return promotion_id

    def forget_rollback(self, tenant: Tenant) -> None:
        self._set_status(tenant, tenant.status)

    def of_tenant(self, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
        return [p for p in self.rows.values() if p["tenant_id"] == tenant_id]
