import datetime as dt
import random
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rp9_pipelines.domain.backups import (
    DRILL_CHECKS,
    MAX_PARTS,
    MIB,
    BackupRecord,
    Check,
    Manifest,
    NoRestorableBackup,
    SandboxNames,
    canary_workflow,
    check_canary,
    check_counts,
    check_credentials,
    check_object,
    check_workflows,
    choose_drill_backup,
    drill_passed,
    expires_at,
    object_key,
    part_size,
    plan_retention,
    sandbox_container,
    scheduled_runs,
    workflow_digest,
)
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines_tests.fixtures import STACK_CONFIG

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


# Drill choice --------------------------------------------------------------------------------


def test_drill_picks_a_random_ok_backup_of_the_last_30_days() -> None:
    recent = [backup(age_days=d) for d in (1, 5, 29)]
    ignored = [
        backup(age_days=31),
        backup(status="failed"),
        backup(tenant=GLOBEX),
        backup(status="expired", age_days=2),
    ]
    picks = {
        choose_drill_backup(recent + ignored, ACME, NOW, random.Random(seed)).id
        for seed in range(60)
    }
    assert picks == {b.id for b in recent}


def test_drill_takes_the_backup_it_is_given_even_an_old_one() -> None:
    old = backup(kind="weekly", age_days=45)
    assert choose_drill_backup([old], ACME, NOW, random.Random(0), old.id) == old


@pytest.mark.parametrize(
    ("backups", "requested", "code"),
    [
        ([], None, "no_recent_backup"),
        ([backup(age_days=31), backup(status="failed")], None, "no_recent_backup"),
        ([backup(tenant=GLOBEX)], "first", "backup_not_found"),
        ([backup(status="failed")], "first", "backup_not_restorable"),
        ([backup(status="expired")], "first", "backup_not_restorable"),
    ],
)
def test_drill_refuses_what_it_cannot_restore(
    backups: list[BackupRecord], requested: str | None, code: str
) -> None:
    wanted = backups[0].id if requested else None
    with pytest.raises(NoRestorableBackup) as refused:
        choose_drill_backup(backups, ACME, NOW, random.Random(0), wanted)
    assert refused.value.code == code


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


# Checks --------------------------------------------------------------------------------------

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


def test_object_check_names_what_differs() -> None:
    assert check_object(10, "aa", 10, "aa").ok
    resized = check_object(10, "aa", 9, "aa")
    assert not resized.ok
    assert "9 bytes, 10 were recorded" in resized.detail
    changed = check_object(10, "aa", 10, "bb")
    assert changed == Check(
        "object_integrity", False, "object sha256 is bb, aa was recorded: the object changed"
    )


def test_count_check() -> None:
    assert check_counts(MANIFEST, 2, 1, 40).ok
    wrong = check_counts(MANIFEST, 2, 0, 41)
    assert not wrong.ok
    assert wrong.detail == "restored rows differ: credentials 0 != 1, executions 41 != 40"


def test_workflow_check() -> None:
    assert check_workflows(MANIFEST, [("wf2", "v9"), ("wf1", "v1")]).ok
    assert "lists 1 workflows" in check_workflows(MANIFEST, [("wf1", "v1")]).detail
    assert not check_workflows(MANIFEST, [("wf1", "v1"), ("wf2", "v8")]).ok


def test_credential_check() -> None:
    assert check_credentials(MANIFEST, 1, 1).ok
    assert check_credentials(MANIFEST, 1, 0).detail == "1 of 1 credentials did not decrypt"
    assert not check_credentials(MANIFEST, 0, 0).ok
    empty = Manifest(0, 0, 0, workflow_digest([]))
    assert check_credentials(empty, 0, 0) == Check(
        "credentials_decrypt", True, "the backup holds no credentials"
    )


def test_canary_check_wants_its_own_nonce_back() -> None:
    assert check_canary("n1", 200, {"nonce": "n1"}).ok
    assert not check_canary("n1", 200, {"nonce": "n2"}).ok
    assert not check_canary("n1", 500, "Internal error").ok


def test_a_drill_passes_only_when_every_check_ran_and_passed() -> None:
    every = [Check(name, True, "") for name in DRILL_CHECKS]
    assert drill_passed(every)
    assert not drill_passed(every[:-1])  # the teardown never ran
    assert not drill_passed([*every[:-1], Check("teardown", False, "container still exists")])
    assert not drill_passed([])


# The sandbox ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("tier", "schema"), [("shared", "t_acme_co"), ("dedicated", "public")])
def test_sandbox_runs_n8n_on_the_restored_database_with_no_route_queue_or_secret(
    tier: str, schema: str
) -> None:
    sandbox = SandboxNames.for_drill(uuid.UUID("12345678123456781234567812345678"))
    spec = sandbox_container(TenantNames("acme-co", tier), sandbox, STACK_CONFIG)  # type: ignore[arg-type]
    assert (spec.name, spec.network) == ("rp9-drill-123456781234", "rp9-drill-123456781234")
    assert spec.env["DB_POSTGRESDB_DATABASE"] == "rp9_drill_123456781234"
    assert spec.env["DB_POSTGRESDB_USER"] == "rp9_drill_123456781234"
    assert spec.env["DB_POSTGRESDB_SCHEMA"] == schema
    # Regular mode: nothing reaches the tenant's queue or workers.
    assert spec.env["EXECUTIONS_MODE"] == "regular"
    assert not any(k.startswith(("QUEUE_", "N8N_REDIS")) for k in spec.env)
    # No route, no scrape: Traefik and Prometheus select on io.rp9.managed.
    assert "io.rp9.managed" not in spec.labels
    assert not any(k.startswith("traefik.") for k in spec.labels)
    assert spec.labels["io.rp9.sandbox-of"] == "acme-co"
    assert spec.env["N8N_ENCRYPTION_KEY_FILE"] == "/run/secrets/encryption_key"
    assert spec.env["DB_POSTGRESDB_PASSWORD_FILE"] == "/run/secrets/db_password"
    assert "N8N_ENCRYPTION_KEY" not in spec.env
    assert "DB_POSTGRESDB_PASSWORD" not in spec.env


def test_canary_workflow_echoes_the_nonce_from_its_own_webhook() -> None:
    workflow = canary_workflow("rp9-drill-x")
    webhook, respond = workflow["nodes"]
    assert webhook["parameters"]["path"] == "rp9-drill-x"
    assert "$json.body.nonce" in respond["parameters"]["responseBody"]
    assert canary_workflow("rp9-drill-x") == workflow  # deterministic node ids
