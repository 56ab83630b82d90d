"""The tenant lifecycle end to end: API → Dagster run → Docker, Postgres, Vault, Redis, n8n,
Traefik. All real."""

from typing import Any

import docker
import httpx
import pytest
import sqlalchemy as sa

from rp9_pipelines.resources.docker_runtime import DockerRuntimeResource
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.resources.tenant_db import TenantDatabaseResource
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.tenants.conftest import TenantN8n, unique_slug
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack


def test_shared_tenant_serves_a_webhook_through_traefik(
    settings: Settings,
    api: Api,
    vault: VaultResource,
    n8n_data: N8nDataResource,
    shared_tenant: dict[str, Any],
) -> None:
    assert shared_tenant["status"] == "active"
    n8n = TenantN8n(settings, vault, shared_tenant)
    ready = n8n.http.get("/healthz/readiness")
    assert ready.status_code == 200

    n8n.install_echo("hello")
    answer = n8n.call("hello", {"n": 42})
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"ok": True, "echo": {"n": 42}}

    # The execution is stored in the tenant's own schema of the shared database.
    names = n8n.names
    assert (names.db_name, names.db_schema) == ("n8n_shared", f"t_{names.ident}")
    assert wait_until(
        lambda: n8n_data.count_executions(names) >= 1, timeout_s=30, what="the execution row"
    )

    metrics = api.get(f"/metrics/tenant/{shared_tenant['slug']}").json()
    assert metrics["executions"]["total"] >= 1
    assert metrics["executions"]["error_rate"] == 0.0
    assert metrics["workers"] == 1
    assert metrics["memory_bytes"] > 100 * 1024 * 1024
    assert set(metrics["queue"]) == {"waiting", "active", "delayed"}


def test_the_startup_cpu_boost_ends_at_the_plans_limit(
    settings: Settings, docker_client: docker.DockerClient, shared_tenant: dict[str, Any]
) -> None:
    """Containers start with TENANT_STARTUP_CPU (2 here); once healthy they run on the plan's
    CPU (starter: 1), which is what the engine enforces from then on."""
    containers = docker_client.containers.list(
        filters={"label": f"io.rp9.tenant={shared_tenant['slug']}"}
    )
    assert sorted(c.labels["io.rp9.role"] for c in containers) == ["main", "worker"]
    for container in containers:
        assert container.attrs["HostConfig"]["NanoCpus"] == 1_000_000_000, container.name


def test_secrets_stay_out_of_the_catalog_and_the_container_environment(
    settings: Settings,
    vault: VaultResource,
    runtime: DockerRuntimeResource,
    shared_tenant: dict[str, Any],
) -> None:
    n8n = TenantN8n(settings, vault, shared_tenant)
    secrets = vault.read(n8n.names.vault_path) or {}
    assert {
        "encryption_key",
        "db_password",
        "redis_password",
        "owner_password",
        "n8n_api_key",
    } <= set(secrets)
    engine = sa.create_engine(sqlalchemy_url(settings.database_url))
    with engine.connect() as connection:
        dump = "\n".join(
            str(row)
            for table in ("tenants", "tenant_instances", "quotas")
            for row in connection.execute(sa.text(f"SELECT * FROM {table}"))
        )
    engine.dispose()
    client = runtime.client()
    inspected = [
        c.attrs
        for c in client.containers.list(filters={"label": f"io.rp9.tenant={shared_tenant['slug']}"})
    ]
    for key in ("encryption_key", "db_password", "redis_password", "owner_password", "n8n_api_key"):
        assert secrets[key] not in dump
        for attrs in inspected:
            assert secrets[key] not in str(attrs["Config"]["Env"])


def test_dedicated_tenant_runs_executions_on_workers_and_scales(
    settings: Settings,
    api: Api,
    vault: VaultResource,
    n8n_data: N8nDataResource,
    dedicated_tenant: dict[str, Any],
    docker_client: docker.DockerClient,
) -> None:
    slug = dedicated_tenant["slug"]
    n8n = TenantN8n(settings, vault, dedicated_tenant)
    assert (n8n.names.db_name, n8n.names.db_schema) == (f"n8n_{n8n.names.ident}", "public")
    n8n.install_echo("work")
    for i in range(4):
        answer = n8n.call("work", {"i": i})
        assert answer.status_code == 200, answer.text
        assert answer.json()["echo"] == {"i": i}
    assert wait_until(
        lambda: n8n_data.count_executions(n8n.names) >= 4, timeout_s=30, what="four execution rows"
    )

    def workers() -> list[Any]:
        filters = {"label": [f"io.rp9.tenant={slug}", "io.rp9.role=worker"]}
        return list(docker_client.containers.list(filters=filters))

    # The executions ran on workers, not on main.
    worker_logs = "".join(w.logs().decode(errors="replace") for w in workers())
    assert "Worker started execution" in worker_logs
    assert len(workers()) == 2

    for target in (3, 1):
        response = api.post(f"/tenants/{slug}/scale", {"workers": target})
        assert response.status_code == 202, response.text
        assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"
        running = workers()
        assert len(running) == target
        assert all(w.attrs["State"]["Health"]["Status"] == "healthy" for w in running)
        assert api.get(f"/tenants/{slug}").json()["workers"] == target

    main = docker_client.api.inspect_container(f"rp9-{slug}-blue-main")
    assert main["HostConfig"]["NanoCpus"] == 2_000_000_000  # plan pro: 2 CPUs
    assert main["HostConfig"]["Memory"] == 2048 * 1024 * 1024
    assert main["HostConfig"]["PidsLimit"] > 0
    assert main["HostConfig"]["SecurityOpt"] == ["no-new-privileges"]
    assert main["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    assert main["Config"]["Healthcheck"]["Test"][0] == "CMD-SHELL"
    assert "wget" in main["Config"]["Healthcheck"]["Test"][1]
    # Still serving after the scale-down.
    assert n8n.call("work", {"i": 99}).status_code == 200


def test_resources_change_in_place(
    api: Api, dedicated_tenant: dict[str, Any], docker_client: docker.DockerClient
) -> None:
    slug = dedicated_tenant["slug"]
    before = docker_client.api.inspect_container(f"rp9-{slug}-blue-main")["Id"]
    response = api.post(f"/tenants/{slug}/scale", {"cpu": 1.5, "memory_mb": 1536})
    assert response.status_code == 202, response.text
    assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"
    after = docker_client.api.inspect_container(f"rp9-{slug}-blue-main")
    assert after["Id"] == before  # updated, not recreated
    assert after["HostConfig"]["NanoCpus"] == 1_500_000_000
    assert after["HostConfig"]["Memory"] == 1536 * 1024 * 1024
    limits = api.get(f"/tenants/{slug}").json()["limits"]
    assert (limits["cpu"], limits["memory_mb"]) == (1.5, 1536)


def test_one_tenant_cannot_reach_another(
    settings: Settings,
    vault: VaultResource,
    tenant_db: TenantDatabaseResource,
    shared_tenant: dict[str, Any],
    dedicated_tenant: dict[str, Any],
    docker_client: docker.DockerClient,
) -> None:
    a, b = TenantN8n(settings, vault, shared_tenant), TenantN8n(settings, vault, dedicated_tenant)
    a_password = (vault.read(a.names.vault_path) or {})["db_password"]

    # A's role reads its own tables, and neither B's database nor the shared database's other
    # schemas.
    own = sa.create_engine(tenant_db.tenant_url(a.names, a_password), poolclass=sa.NullPool)
    with own.connect() as connection:
        table = f'"{a.names.db_schema}".workflow_entity'
        assert connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one() >= 1
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
            connection.execute(sa.text("SELECT count(*) FROM public.alembic_version"))
    own.dispose()
    into_b = sa.create_engine(
        tenant_db.tenant_url(a.names, a_password).set(database=b.names.db_name),
        poolclass=sa.NullPool,
    )
    with pytest.raises(sa.exc.OperationalError, match="permission denied"):
        into_b.connect()
    into_b.dispose()

    # A's main reaches its own worker but not B's containers (separate networks).
    def ip(name: str) -> str:
        networks = docker_client.api.inspect_container(name)["NetworkSettings"]["Networks"]
        return str(next(iter(networks.values()))["IPAddress"])

    a_main = docker_client.containers.get(f"rp9-{a.names.slug}-blue-main")
    probe = (
        "const h=require('http');const r=h.get('http://{ip}:5678/healthz',s=>{{console.log(s.statusCode);"
        "process.exit(0)}});r.setTimeout(3000,()=>{{console.log('timeout');process.exit(0)}});"
        "r.on('error',e=>{{console.log('error');process.exit(0)}})"
    )
    own_worker = ip(f"rp9-{a.names.slug}-blue-worker-1")
    other_main = ip(f"rp9-{b.names.slug}-blue-main")
    assert a_main.exec_run(["node", "-e", probe.format(ip=own_worker)]).output.strip() == b"200"
    assert a_main.exec_run(["node", "-e", probe.format(ip=other_main)]).output.strip() in {
        b"timeout",
        b"error",
    }


def test_suspend_and_resume_keep_the_data(
    settings: Settings, api: Api, vault: VaultResource, shared_tenant: dict[str, Any]
) -> None:
    slug = shared_tenant["slug"]
    n8n = TenantN8n(settings, vault, shared_tenant)
    n8n.install_echo("kept")
    assert n8n.call("kept", {}).status_code == 200

    response = api.post(f"/tenants/{slug}/suspend")
    assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"
    assert api.get(f"/tenants/{slug}").json()["status"] == "suspended"
    assert n8n.http.get("/healthz/readiness").status_code != 200

    response = api.post(f"/tenants/{slug}/resume")
    assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"
    assert api.get(f"/tenants/{slug}").json()["status"] == "active"
    wait_until(
        lambda: n8n.call("kept", {"back": True}).status_code == 200,
        timeout_s=60,
        what="the workflow to answer again after resume",
    )


def test_delete_keeps_the_data_unless_purged(
    settings: Settings,
    api: Api,
    vault: VaultResource,
    tenant_db: TenantDatabaseResource,
    n8n_data: N8nDataResource,
    docker_client: docker.DockerClient,
) -> None:
    tenant = api.create_tenant(slug=unique_slug("del"), name="Short lived", plan="starter")
    slug = tenant["slug"]
    n8n = TenantN8n(settings, vault, tenant)

    response = api.request("DELETE", f"/tenants/{slug}")
    assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"
    assert api.get(f"/tenants/{slug}").json()["status"] == "deleted"
    assert docker_client.containers.list(all=True, filters={"label": f"io.rp9.tenant={slug}"}) == []
    assert (
        httpx.get(f"{settings.traefik_url}/healthz", headers={"Host": n8n.host}).status_code == 404
    )
    assert n8n_data.count_executions(n8n.names) == 0  # schema kept (and empty)
    assert vault.read(n8n.names.vault_path) is not None
    # A deleted tenant cannot be changed any more, only purged.
    assert api.post(f"/tenants/{slug}/scale", {"workers": 1}).status_code == 409
    response = api.request("DELETE", f"/tenants/{slug}?purge=true")
    assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"
    assert not tenant_db.exists(n8n.names)
    assert vault.read(n8n.names.vault_path) is None
