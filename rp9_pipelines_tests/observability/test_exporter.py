"""What the catalog exporter publishes for a fleet, and the backup and drill policy (pure)."""

import datetime as dt
import uuid

import dagster as dg

from rp9_pipelines.catalog.fleet import Change, TenantState
from rp9_pipelines.domain.policy import BACKUP_MAX_AGE, DRILL_MAX_AGE, within
from rp9_pipelines.domain.tenants import Limits
from rp9_pipelines.observability.exporter import tenant_families
from rp9_pipelines.resources.redis_queue import QueueSnapshot
from rp9_pipelines.services.tenant_health import BACKUP_CHECK, BACKUPS, DRILLS, evaluations

NOW = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.UTC)
LIMITS = Limits(
    executions_per_month=10_000,
    concurrency=5,
    cpu=1.0,
    memory_mb=1024,
    min_workers=1,
    max_workers=3,
    overage_allowed=False,
)


def tenant(slug: str, **changes: object) -> TenantState:
    values: dict[str, object] = {
        "id": uuid.uuid4(),
        "slug": slug,
        "plan": "starter",
        "tier": "shared",
        "region": "eu-1",
        "status": "active",
        "n8n_version": "2.20.12",
        "created_at": NOW - dt.timedelta(days=200),
        "workers": 2,
        "limits": LIMITS,
        "executions_month": 2_500,
        "last_verified_backup": NOW - dt.timedelta(hours=3),
        "last_passed_drill": NOW - dt.timedelta(days=10),
        "enforcement_action": None,
        "changes": {},
    }
    return TenantState(**(values | changes))  # type: ignore[arg-type]


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(states: list[TenantState], queues: dict[str, QueueSnapshot] | None = None) -> Samples:
    found = {}
    for family in tenant_families(states, NOW, queues or {}):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def one(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_a_tenant_is_published_with_its_limits_quota_use_and_proofs() -> None:
    acme = tenant("acme")
    queue = QueueSnapshot(waiting=4, active=1, oldest_wait_s=12.5)
    found = samples([acme], {acme.names.bull_prefix: queue})
    assert one(found, "rp9_tenant_workers", tenant="acme") == 2
    assert one(found, "rp9_tenant_workers_max", tenant="acme") == 3
    assert one(found, "rp9_tenant_quota_used_ratio", tenant="acme") == 0.25
    assert one(found, "rp9_tenant_cpu_limit_cores", tenant="acme") == 1.0
    assert one(found, "rp9_tenant_memory_limit_bytes", tenant="acme") == 1024 * 1024 * 1024
    assert (
        one(found, "rp9_tenant_last_verified_backup_timestamp_seconds", tenant="acme")
        == (NOW - dt.timedelta(hours=3)).timestamp()
    )
    assert one(found, "rp9_tenant_queue_oldest_wait_seconds", tenant="acme") == 12.5
    info = {k: v for k, v in found if k == "rp9_tenant_info"}
    assert info, "no rp9_tenant_info"
    assert one(found, "rp9_tenants", status="active", tier="shared", plan="starter") == 1


def test_what_a_tenant_never_had_is_absent_not_zero() -> None:
    # A zero timestamp would read as "backed up in 1970"; the alerts judge absence with the
    # tenant's creation time instead.
    found = samples([tenant("new", last_verified_backup=None, last_passed_drill=None)])
    names = {name for name, _ in found}
    assert "rp9_tenant_last_verified_backup_timestamp_seconds" not in names
    assert "rp9_tenant_last_passed_drill_timestamp_seconds" not in names
    # An unreadable queue (keys not Bull's) is left out rather than reported as empty.
    broken = tenant("odd")
    found = samples([broken], {broken.names.bull_prefix: QueueSnapshot(0, 0, None, "not Bull")})
    assert "rp9_tenant_queue_oldest_wait_seconds" not in {name for name, _ in found}


def test_a_failed_change_shows_for_a_week_and_a_later_success_clears_it() -> None:
    fresh = Change("failed", NOW - dt.timedelta(days=2))
    old = Change("failed", NOW - dt.timedelta(days=8))
    fine = Change("succeeded", NOW - dt.timedelta(hours=1))
    found = samples(
        [
            tenant("a", changes={"upgrade": fresh}),
            tenant("b", changes={"upgrade": old}),
            tenant("c", changes={"promotion": fine}),
        ]
    )
    assert one(found, "rp9_tenant_change_failed", tenant="a", kind="upgrade") == 1
    assert one(found, "rp9_tenant_change_failed", tenant="b", kind="upgrade") == 0
    assert one(found, "rp9_tenant_change_failed", tenant="c", kind="promotion") == 0


def test_the_policy_judges_the_newest_proof_and_spares_young_tenants() -> None:
    created = NOW - dt.timedelta(days=30)
    assert within(NOW - dt.timedelta(hours=25), created, NOW, BACKUP_MAX_AGE, "backup").passed
    late = within(NOW - dt.timedelta(hours=27), created, NOW, BACKUP_MAX_AGE, "backup")
    assert not late.passed
    assert "27.0 h old" in late.detail
    assert within(None, NOW - dt.timedelta(hours=2), NOW, BACKUP_MAX_AGE, "backup").passed
    assert not within(None, created, NOW, BACKUP_MAX_AGE, "backup").passed
    assert within(None, created, NOW, DRILL_MAX_AGE, "drill").passed
    assert not within(None, NOW - dt.timedelta(days=93), NOW, DRILL_MAX_AGE, "drill").passed


def test_each_tenant_gets_a_check_evaluation_of_its_own_partition_per_policy() -> None:
    late = tenant("late", last_verified_backup=NOW - dt.timedelta(hours=30))
    found = evaluations([tenant("fine"), late], NOW)
    assert {(e.asset_key, e.partition) for e in found} == {
        (BACKUPS, "fine"),
        (DRILLS, "fine"),
        (BACKUPS, "late"),
        (DRILLS, "late"),
    }
    verdict = {(e.partition, e.check_name): e.passed for e in found}
    assert verdict[("fine", BACKUP_CHECK)]
    assert not verdict[("late", BACKUP_CHECK)]
    assert all(isinstance(e, dg.AssetCheckEvaluation) for e in found)
