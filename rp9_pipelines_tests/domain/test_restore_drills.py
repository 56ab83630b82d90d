"""Restore drills' decisions: which backup a drill restores, what it checks, what the sandbox
runs."""

import random
import uuid

import pytest

from rp9_pipelines.domain.backups import BackupRecord, Manifest, workflow_digest
from rp9_pipelines.domain.restore_drills import (
    DRILL_CHECKS,
    Check,
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
    sandbox_container,
)
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines_tests.domain.test_backups import ACME, GLOBEX, MANIFEST, NOW, backup
from rp9_pipelines_tests.fixtures import STACK_CONFIG


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


# Checks --------------------------------------------------------------------------------------


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
    # A rehearsal's migrations on busy cores: a slow ping is no reason to call it not ready.
    assert int(spec.env["N8N_DB_PING_TIMEOUT"]) >= 30_000


def test_canary_workflow_echoes_the_nonce_from_its_own_webhook() -> None:
    workflow = canary_workflow("rp9-drill-x")
    webhook, respond = workflow["nodes"]
    assert webhook["parameters"]["path"] == "rp9-drill-x"
    assert "$json.body.nonce" in respond["parameters"]["responseBody"]
    assert canary_workflow("rp9-drill-x") == workflow  # deterministic node ids
