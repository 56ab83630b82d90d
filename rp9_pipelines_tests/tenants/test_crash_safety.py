"""A provision run interrupted midway and run again ends active, with exactly one stack."""

from typing import Any

import docker
import pytest

from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.conftest import Served, terminate_run
from rp9_pipelines_tests.tenants.conftest import TenantN8n, unique_slug
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack


def test_interrupted_provision_converges_on_rerun(
    settings: Settings,
    api: Api,
    dagster_webserver: Served,
    docker_client: docker.DockerClient,
    vault: Any,
) -> None:
    slug = unique_slug("crash")
    created = api.post("/tenants", {"slug": slug, "name": "Crash", "plan": "pro", "workers": 1})
    assert created.status_code == 202, created.text
    run_id = created.json()["run_id"]

    # Interrupt the run once its main container exists, before the workers start.
    wait_until(
        lambda: docker_client.containers.list(all=True, filters={"name": f"rp9-{slug}-blue-main"}),
        timeout_s=120,
        what="the main container to be created",
    )
    terminate_run(dagster_webserver.url, run_id)
    assert api.wait_run(run_id)["status"] in {"CANCELED", "FAILURE"}
    assert api.get(f"/tenants/{slug}").json()["status"] in {"provisioning", "failed"}

    retried = api.post(f"/tenants/{slug}/provision")
    assert retried.status_code == 202, retried.text
    assert api.wait_run(retried.json()["run_id"])["status"] == "SUCCESS"
    tenant = api.get(f"/tenants/{slug}").json()
    assert tenant["status"] == "active"

    containers = docker_client.containers.list(all=True, filters={"label": f"io.rp9.tenant={slug}"})
    assert sorted(c.name for c in containers) == [
        f"rp9-{slug}-blue-main",
        f"rp9-{slug}-blue-worker-1",
    ]
    assert len(docker_client.networks.list(names=[f"rp9-t-{slug}"])) == 1
    assert len([i for i in tenant["instances"] if i["role"] == "main"]) == 1

    n8n = TenantN8n(settings, vault, tenant)
    n8n.install_echo("after-crash")
    assert n8n.call("after-crash", {"x": 1}).status_code == 200

    # An active tenant whose main was removed by hand is repaired by provisioning it again.
    docker_client.containers.get(f"rp9-{slug}-blue-main").remove(force=True)
    repaired = api.post(f"/tenants/{slug}/provision")
    assert repaired.status_code == 202, repaired.text
    assert api.wait_run(repaired.json()["run_id"])["status"] == "SUCCESS"
    assert api.get(f"/tenants/{slug}").json()["status"] == "active"
    assert n8n.call("after-crash", {"x": 2}).status_code == 200

    response = api.request("DELETE", f"/tenants/{slug}?purge=true")
    assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"
