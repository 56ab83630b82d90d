"""The Dagster UI, rendered by a real headless browser (Chromium), shows each tenant's backup
and restore-drill status: its partition of `tenant_backups` materialised by its verified backup,
and the policy checks of its partitions."""

import re
import shutil
import subprocess
from typing import Any

import dagster as dg
import pytest

from rp9_pipelines.definitions import defs
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.conftest import Served
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack


def rendered_text(url: str) -> str:
    """The page's text once its scripts ran (Chromium's DOM after 20 s of virtual time)."""
    chromium = shutil.which("chromium")
    assert chromium, "chromium is missing: deploy/local/stack.sh installs it (make test)"
    page = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--dump-dom",
            "--virtual-time-budget=20000",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    text = re.sub(r"<script.*?</script>|<style.*?</style>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", text))


def judge_now(dagster: Served, slug: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """`tenant_policy_checks` for `slug` alone, on the session's Dagster instance: the checks'
    latest evaluation is then this tenant's."""
    for name, value in dagster.env.items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.get() as instance:
        result = (
            defs()
            .get_job_def("tenant_policy_checks")
            .execute_in_process(
                run_config={"ops": {"judge_tenant_policies": {"config": {"tenants": [slug]}}}},
                instance=instance,
            )
        )
    assert result.success


def test_the_dagster_ui_shows_each_tenants_backup_and_drill_status(
    observed: dict[str, Any],
    api: Api,
    dagster_webserver: Served,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slug = observed["slug"]
    backups = api.get(f"/tenants/{observed['id']}/backups").json()["backups"]
    newest = next(b for b in backups if b["status"] == "ok")
    ui = dagster_webserver.url

    partition = rendered_text(f"{ui}/assets/tenant_backups?view=partitions&partition={slug}")
    assert slug in partition
    assert "Latest materialization" in partition, partition
    assert "Materialized" in partition, partition
    assert newest["id"] in partition, "the partition does not show the tenant's verified backup"

    drills = rendered_text(f"{ui}/assets/tenant_restore_drills?view=partitions&partition={slug}")
    assert slug in drills
    assert "Missing" in drills, drills

    judge_now(dagster_webserver, slug, monkeypatch)

    def checks_show_the_tenant() -> bool:
        backup = rendered_text(f"{ui}/assets/tenant_backups?view=checks")
        drill = rendered_text(f"{ui}/assets/tenant_restore_drills?view=checks")
        return (
            f"Partition {slug}" in backup
            and "verified_backup_within_26h" in backup
            and "Passed" in backup
            and "newest verified backup" in backup
            and f"Partition {slug}" in drill
            and "passed_drill_within_92d" in drill
            and "no passed drill yet" in drill
        )

    wait_until(checks_show_the_tenant, timeout_s=90, what=f"the UI's policy checks of {slug}")
