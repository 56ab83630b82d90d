import os
import subprocess
import sys

import dagster as dg
import pytest

from rp9_pipelines import launches
from rp9_pipelines.definitions import defs
from rp9_pipelines.settings import Settings

EXPECTED_JOBS = {
    "migrate_catalog",
    "platform_health",
    "provision_tenant",
    "scale_tenant",
    "suspend_tenant",
    "resume_tenant",
    "delete_tenant",
    "backup_tenant",
    "backup_retention",
    "restore_drill",
    "sync_stripe_catalog",
    "sync_entitlements",
    "report_usage_to_stripe",
    "usage_daily",
    "monthly_chargeback",
    "sample_resources_job",
    "enforce_limits",
    "backup_platform",
    "platform_dr_drill",
    "promote_tenant",
    "roll_back_promotion",
    "remove_shared_schema",
    "upgrade_tenant",
    "roll_back_upgrade",
    "upgrade_rollout",
    "tenant_policy_checks",
    "__ASSET_JOB",
}
EXPECTED_SCHEDULES = {
    "platform_health_every_5_minutes": "platform_health",
    "daily_backups": "backup_tenant",
    "weekly_backups": "backup_tenant",
    "backup_retention_daily": "backup_retention",
    "quarterly_restore_drills": "restore_drill",
    "sync_stripe_catalog_daily": "sync_stripe_catalog",
    "sync_entitlements_every_15_minutes": "sync_entitlements",
    "usage_daily_schedule": "usage_daily",
    "resource_sampling": "sample_resources_job",
    "monthly_chargeback_schedule": "monthly_chargeback",
    "enforce_limits_every_5_minutes": "enforce_limits",
    "platform_daily_backup": "backup_platform",
    "platform_weekly_backup": "backup_platform",
    "tenant_policy_checks_hourly": "tenant_policy_checks",
}
EXPECTED_SENSORS = {
    "autoscale_workers",
    "stripe_meter_after_usage",
    "register_tenant_partitions",
    "promotion_candidates",
    "promotion_windows",
}
EXPECTED_RESOURCES = {
    "catalog",
    "docker_runtime",
    "redis",
    "vault",
    "s3",
    "traefik",
    "prometheus",
    "platform",
    "secret_files",
    "tenant_db",
    "n8n_data",
    "n8n",
    "stripe",
    "supabase",
    "settings",
    "stack",
    "drill",
    "platform_backup",
    "promotion",
    "upgrade",
}
TENANT_ID = "00000000-0000-0000-0000-000000000001"
LAUNCHES = [
    *(launches.tenant_job(job, TENANT_ID, "acme") for job in launches.TENANT_JOB_OPS),
    launches.tenant_job("scale_tenant", TENANT_ID, "acme", plan="pro", workers=2),
    launches.tenant_job("delete_tenant", TENANT_ID, "acme", purge=True),
    launches.autoscale(TENANT_ID, "acme", 3, "1"),
    launches.backup(TENANT_ID, "acme", "daily", "daily_backups"),
    launches.restore_drill(TENANT_ID, "acme", "api", backup_id=TENANT_ID),
    launches.enforcement(["acme"], "api"),
    launches.stripe_meter("acme"),
    launches.usage_daily("usage_daily_schedule"),
    launches.promotion("promote_tenant", TENANT_ID, TENANT_ID, "acme"),
    launches.promotion("roll_back_promotion", TENANT_ID, TENANT_ID, "acme"),
    launches.promotion("remove_shared_schema", TENANT_ID, TENANT_ID, "acme", "promotion_windows"),
    launches.upgrade("upgrade_tenant", TENANT_ID, TENANT_ID, "acme", "api", "rollout-1"),
    launches.upgrade("upgrade_tenant", TENANT_ID, TENANT_ID, "acme", fail_probe=True),
    launches.upgrade("roll_back_upgrade", TENANT_ID, TENANT_ID, "acme"),
    launches.rollout("rollout-1", {"version": "2.22.6", "canaries": ["acme"], "waves": [50, 100]}),
    launches.platform_backup("on_demand", "api"),
    launches.platform_dr_drill(TENANT_ID, "api"),
]


def test_definitions_declare_the_expected_jobs_schedules_and_sensors() -> None:
    repository = defs().get_repository_def()
    assert {job.name for job in repository.get_all_jobs()} == EXPECTED_JOBS
    assert {s.name: s.job_name for s in repository.schedule_defs} == EXPECTED_SCHEDULES
    assert {s.name for s in repository.sensor_defs} == EXPECTED_SENSORS
    assert set(defs().resources or {}) == EXPECTED_RESOURCES
    dg.Definitions.validate_loadable(defs())


def test_definitions_load_with_no_service_and_no_environment() -> None:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ["HOME"]}
    code = (
        "from rp9_pipelines.definitions import defs; "
        "r = defs().get_repository_def(); print(len(r.get_all_jobs()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) >= len(EXPECTED_JOBS)


@pytest.mark.parametrize("launch", LAUNCHES, ids=lambda launch: launch.job)
def test_every_launch_configures_its_job(
    launch: launches.Launch, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = defs().resolve_job_def(launch.job)
    # Resources are validated with the run config: any value of their variables will do.
    for name in Settings.variables():
        if not os.environ.get(name):
            monkeypatch.setenv(name, "x")
    dg.validate_run_config(job, launch.run_config)


def test_the_queue_limits_the_kinds_launches_names() -> None:
    definitions = defs()
    assert definitions.get_job_def("backup_tenant").tags[launches.KIND_TAG] == launches.BACKUP_KIND
    assert definitions.get_job_def("restore_drill").tags[launches.KIND_TAG] == (
        launches.RESTORE_DRILL_KIND
    )
    assert definitions.get_job_def("enforce_limits").tags[launches.KIND_TAG] == (
        launches.ENFORCEMENT_KIND
    )


def test_secrets_are_bound_by_variable_name_not_value() -> None:
    vault = (defs().resources or {})["vault"]
    assert vault.vault_token == dg.EnvVar("VAULT_TOKEN")


@pytest.mark.stack
def test_platform_health_job_runs_green_against_the_real_stack() -> None:
    result = defs().get_job_def("platform_health").execute_in_process()
    assert result.success
    services = result.output_for_node("probe_platform_services")
    assert services == {
        "postgres": True,
        "docker": True,
        "redis": True,
        "vault": True,
        "s3": True,
        "traefik": True,
        "prometheus": True,
        "stripe": True,
        "supabase": True,
    }


@pytest.mark.stack
def test_platform_health_job_fails_and_names_the_service_that_is_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A port on loopback where nothing listens: Redis is "down" for this run only.
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    result = defs().get_job_def("platform_health").execute_in_process(raise_on_error=False)
    assert not result.success
    failure = result.failure_data_for_node("probe_platform_services")
    assert failure is not None
    assert "platform services down: redis" in str(failure.error)


@pytest.mark.stack
def test_migrate_catalog_job_brings_a_database_to_head(
    fresh_database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", fresh_database_url)
    result = defs().get_job_def("migrate_catalog").execute_in_process()
    assert result.success
    assert result.output_for_node("upgrade_catalog") == "0012"


def test_an_operator_can_promote_a_tenant_by_its_slug_from_the_dagster_ui(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    job = defs().resolve_job_def("promote_tenant")
    for name in Settings.variables():
        if not os.environ.get(name):
            monkeypatch.setenv(name, "x")
    dg.validate_run_config(job, {"ops": {"prepare_dedicated": {"config": {"tenant_id": "acme"}}}})
