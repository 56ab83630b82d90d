import datetime as dt
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rp9_pipelines.domain.backups import (
    MAX_PARTS,
    MIB,
    BackupRecord,
    Manifest,
    expires_at,
    object_key,
    part_size,
    plan_retention,
    region_buckets,
    scheduled_runs,
    workflow_digest,
)

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
ACME, GLOBEX = uuid.UUID(int=1), uuid.UUID(int=2)


def backup(
    tenant: uuid.UUID = ACME, kind: str = "daily", status: str = "ok", age_days: float = 1.0
) -> BackupRecord:
    started = NOW - dt.timedelta(days=age_days)
    return BackupRecord(
        id=uuid.uuid4(),
        tenant_id=tenant,
        kind=kind,
        status=status,
        bucket="rp9-backups",
        key=f"k-{uuid.uuid4()}",
        started_at=started,
        finished_at=None if status == "running" else started + dt.timedelta(minutes=2),
        expires_at=expires_at(kind, started),
    )


# Naming and expiry ---------------------------------------------------------------------------


def test_object_key_groups_a_tenants_backups_by_kind_and_day_and_is_unique() -> None:
    backup_id = uuid.UUID("0b6f8a3e-1111-4c1a-9f00-000000000001")
    at = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert object_key("acme", "daily", at, backup_id) == (
        "tenants/acme/daily/2026/03/04/20260304T030607Z-0b6f8a3e-1111-4c1a-9f00-000000000001.pgdump"
    )
    assert object_key("acme", "daily", at, uuid.uuid4()) != object_key(
        "acme", "daily", at, backup_id
    )


@pytest.mark.parametrize(
    ("kind", "days"),
    [("daily", 7), ("weekly", 30), ("on_demand", 30), ("pre_promotion", 30), ("pre_upgrade", 30)],
)
def test_expiry_per_kind(kind: str, days: int) -> None:
    assert expires_at(kind, NOW) == NOW + dt.timedelta(days=days)


def test_unknown_kind_has_no_expiry() -> None:
    with pytest.raises(KeyError):
        expires_at("hourly", NOW)


def test_part_size_starts_at_the_base_never_below_s3s_floor_and_doubles_every_thousand() -> None:
    assert part_size(1, 16 * MIB) == 16 * MIB
    assert part_size(1, 1) == 5 * MIB
    assert part_size(1000, 16 * MIB) == 16 * MIB
    assert part_size(1001, 16 * MIB) == 32 * MIB
    total = sum(part_size(n, 16 * MIB) for n in range(1, MAX_PARTS + 1))
    assert total > 10 * 1024**4  # over 10 TiB in one object
    with pytest.raises(ValueError, match=r"1\.\.10000"):
        part_size(MAX_PARTS + 1, 16 * MIB)


# Retention -----------------------------------------------------------------------------------


def test_retention_deletes_what_expired_and_keeps_the_rest() -> None:
    fresh_daily, old_daily = backup(age_days=6.9), backup(age_days=7.1)
    fresh_weekly, old_weekly = (
        backup(kind="weekly", age_days=29),
        backup(kind="weekly", age_days=31),
    )
    plan = plan_retention([fresh_daily, old_daily, fresh_weekly, old_weekly], NOW)
    assert {b.id for b in plan.expire} == {old_daily.id, old_weekly.id}
    assert plan.kept_last_ok == ()


def test_retention_expires_at_exactly_the_expiry_instant() -> None:
    exactly = backup(age_days=7)
    newer = backup(age_days=1)
    assert [b.id for b in plan_retention([exactly, newer], NOW).expire] == [exactly.id]


def test_retention_never_deletes_a_tenants_last_ok_backup() -> None:
    # Backups stopped 40 days ago (suspended tenant): everything is past expiry.
    newest_ok = backup(age_days=40)
    older_ok = backup(age_days=41)
    failed_after = backup(status="failed", age_days=39)
    other_tenant = backup(tenant=GLOBEX, age_days=50)
    plan = plan_retention([newest_ok, older_ok, failed_after, other_tenant], NOW)
    assert {b.id for b in plan.expire} == {older_ok.id, failed_after.id}
    assert {b.id for b in plan.kept_last_ok} == {newest_ok.id, other_tenant.id}


def test_a_purged_tenants_last_backup_goes_once_expired() -> None:
    # The tenant asked for its data to go: nothing of it is kept past the grace period.
    last_ok = backup(age_days=40)
    other_tenant = backup(tenant=GLOBEX, age_days=50)
    plan = plan_retention([last_ok, other_tenant], NOW, purged={ACME})
    assert {b.id for b in plan.expire} == {last_ok.id}
    assert {b.id for b in plan.kept_last_ok} == {other_tenant.id}


def test_retention_cleans_failed_and_stuck_running_backups_once_past_expiry() -> None:
    failed_old, failed_new = backup(status="failed", age_days=8), backup(status="failed")
    stuck = backup(status="running", age_days=8)
    keep = backup()
    expired_already = backup(status="expired", age_days=60)
    plan = plan_retention([failed_old, failed_new, stuck, keep, expired_already], NOW)
    assert {b.id for b in plan.expire} == {failed_old.id, stuck.id}


records = st.builds(
    backup,
    tenant=st.sampled_from([ACME, GLOBEX, uuid.UUID(int=3)]),
    kind=st.sampled_from(["daily", "weekly", "on_demand"]),
    status=st.sampled_from(["ok", "ok", "failed", "running", "expired"]),
    age_days=st.floats(min_value=0, max_value=90),
)


@given(st.lists(records, max_size=40), st.floats(min_value=-10, max_value=100))
def test_retention_properties(backups: list[BackupRecord], shift_days: float) -> None:
    now = NOW + dt.timedelta(days=shift_days)
    plan = plan_retention(backups, now)
    expired = {b.id for b in plan.expire}
    # Only what is past its expiry, never an `expired` row again, nothing twice.
    assert all(b.expires_at is not None and b.expires_at <= now for b in plan.expire)
    assert all(b.status != "expired" for b in plan.expire)
    assert len(expired) == len(plan.expire)
    for tenant in {b.tenant_id for b in backups}:
        oks = [b for b in backups if b.tenant_id == tenant and b.status == "ok"]
        if oks:
            # A tenant with a good backup keeps one, and it is its newest.
            left = [b for b in oks if b.id not in expired]
            newest = max(oks, key=lambda b: (b.finished_at, b.started_at, str(b.id)))
            assert newest in left
    # Everything due and not kept is deleted.
    due = {
        b.id
        for b in backups
        if b.status != "expired" and b.expires_at is not None and b.expires_at <= now
    }
    assert expired | {b.id for b in plan.kept_last_ok} == due


# Schedules -----------------------------------------------------------------------------------


def test_scheduled_runs_are_one_per_active_tenant_with_a_key_per_tick() -> None:
    tenants = [
        ("id-b", "globex", "active"),
        ("id-a", "acme", "active"),
        ("id-c", "initech", "suspended"),
        ("id-d", "hooli", "deleted"),
    ]
    runs = scheduled_runs(tenants, "backup-daily", dt.datetime(2026, 12, 1, 2, 0, tzinfo=dt.UTC))
    assert [(r.slug, r.tenant_id, r.run_key) for r in runs] == [
        ("acme", "id-a", "backup-daily-acme-20261201T0200"),
        ("globex", "id-b", "backup-daily-globex-20261201T0200"),
    ]
    tomorrow = scheduled_runs(tenants, "backup-daily", dt.datetime(2026, 12, 2, 2, tzinfo=dt.UTC))
    assert {r.run_key for r in tomorrow}.isdisjoint({r.run_key for r in runs})


# Manifest ------------------------------------------------------------------------------------

MANIFEST = Manifest(
    workflows=2,
    credentials=1,
    executions=40,
    workflow_digest=workflow_digest([("wf1", "v1"), ("wf2", "v9")]),
)


def test_workflow_digest_ignores_order_but_not_versions() -> None:
    assert workflow_digest([("b", "2"), ("a", "1")]) == workflow_digest([("a", "1"), ("b", "2")])
    assert workflow_digest([("a", "1")]) != workflow_digest([("a", "2")])
    assert workflow_digest([("a", None)]) == workflow_digest([("a", "")])


def test_manifest_round_trips_through_json() -> None:
    assert Manifest.from_json(MANIFEST.as_json()) == MANIFEST


def test_region_buckets_name_each_regions_bucket_and_refuse_what_is_not_one() -> None:
    assert region_buckets("") == {}
    assert region_buckets(" eu-1=rp9-eu , us-1=rp9-us,") == {"eu-1": "rp9-eu", "us-1": "rp9-us"}
    with pytest.raises(ValueError, match="'eu-1' is not region=bucket"):
        region_buckets("eu-1")
    with pytest.raises(ValueError, match="'=b' is not region=bucket"):
        region_buckets("=b")
    with pytest.raises(ValueError, match="names region 'eu-1' twice"):
        region_buckets("eu-1=a,eu-1=b")
