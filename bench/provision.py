"""`make bench-provision`: from `POST /tenants` to the first webhook served through Traefik,
over N tenants, beside a bare `docker run` of the same image to readiness on the same
database server: on a fresh schema (what starting n8n by hand costs: its first boot runs the
migrations), and on a copy of the platform's pre-migrated template (n8n's boot alone).

Starts its own Dagster (webserver + daemon) and API, like `make dev`; needs the local stack.
One warm-up tenant is provisioned first and not timed: it builds the n8n version's template
if this database server has none yet (once per version) and loads the code location.

Every start is measured on an otherwise idle stack: each bare container and each bench tenant
is removed before the next start. Clients poll every 0.2 s on both sides. Tenant containers get
the platform's startup CPU boost (TENANT_STARTUP_CPU, see domain.stack.startup_cpu); the last
bare row gives a bare container the same boost, so the orchestration's own cost stays visible.

With TENANT_RUNTIME=swarm (`make bench-provision RUNTIME=swarm`) the tenants run on the Swarm
and the bare start is a `docker service create` on one of its eu-1 nodes (the boost row: a
service given the boosted CPU as its limit).
"""

import argparse
import os
import statistics
import tempfile
import time
import uuid
from functools import partial
from pathlib import Path
from urllib.parse import urlsplit

import docker
import httpx
from docker.types import EndpointSpec, Resources

from bench.serving import api_for
from rp9_pipelines.domain.stack import startup_cpu
from rp9_pipelines.domain.template import template_schema
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.resources.swarm_runtime import (
    SwarmRuntimeResource,
    placement,
    published_port,
)
from rp9_pipelines.resources.tenant_db import Template, TenantDatabaseResource
from rp9_pipelines.resources.tenant_runtime import runtime_from_settings
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.settings import Settings, TenantStackSettings
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.conftest import BIN, ROOT, free_port, serve
from rp9_pipelines_tests.tenants.conftest import TenantN8n
from rp9_pipelines_tests.waiting import wait_until
from testing.dagster_db import dagster_database


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ready(url: str) -> bool:
    return httpx.get(url).status_code == 200


def answers(n8n: TenantN8n) -> bool:
    return n8n.call("bench", {}).status_code == 200


POLL_S = 0.2


def delete(api: Api, slug: str) -> None:
    response = api.request("DELETE", f"/tenants/{slug}?purge=true")
    api.wait_run(response.json()["run_id"], interval_s=POLL_S)


def orchestrated(api: Api, settings: Settings, vault: VaultResource, count: int) -> list[float]:
    timings: list[float] = []
    warm = f"bench-warm-{uuid.uuid4().hex[:6]}"
    api.create_tenant(slug=warm, name="Bench warm-up", plan="starter")
    delete(api, warm)
    for _ in range(count):
        slug = f"bench-{uuid.uuid4().hex[:6]}"
        try:
            started = time.monotonic()
            tenant = api.create_tenant(slug=slug, name="Bench", plan="starter", poll_s=POLL_S)
            n8n = TenantN8n(settings, vault, tenant)
            n8n.install_echo("bench")
            wait_until(partial(answers, n8n), timeout_s=60, what="first webhook", interval_s=POLL_S)
            timings.append(time.monotonic() - started)
            print(f"  orchestrated {slug}: {timings[-1]:.1f} s", flush=True)
        finally:
            delete(api, slug)
    return timings


def bare_env(settings: Settings, names: TenantNames) -> dict[str, str]:
    """A bare n8n on the tenant database `names`, as someone starting it by hand would."""
    return {
        "DB_TYPE": "postgresdb",
        "DB_POSTGRESDB_HOST": "host.docker.internal",
        "DB_POSTGRESDB_PORT": str(urlsplit(settings.database_url).port or 5432),
        "DB_POSTGRESDB_DATABASE": names.db_name,
        "DB_POSTGRESDB_SCHEMA": names.db_schema,
        "DB_POSTGRESDB_USER": names.db_role,
        "DB_POSTGRESDB_PASSWORD": "bare-password-1",
    }


def bare(
    settings: Settings,
    tenant_db: TenantDatabaseResource,
    count: int,
    template: Template | None,
    cpu: float = 1.0,
) -> list[float]:
    client = docker.DockerClient(base_url=settings.docker_host)
    timings = []
    for _ in range(count):
        names = TenantNames(f"bare-{uuid.uuid4().hex[:6]}", "shared")
        tenant_db.ensure(names, "bare-password-1", template)
        port = free_port()
        started = time.monotonic()
        container = client.containers.run(
            settings.image,
            detach=True,
            name=f"rp9-{names.slug}",
            ports={"5678/tcp": ("127.0.0.1", port)},
            extra_hosts={"host.docker.internal": "host-gateway"},
            nano_cpus=int(cpu * 1_000_000_000),
            mem_limit="1g",
            environment=bare_env(settings, names),
        )
        try:
            url = f"http://127.0.0.1:{port}/healthz/readiness"
            wait_until(partial(ready, url), timeout_s=180, what="bare readiness", interval_s=POLL_S)
            timings.append(time.monotonic() - started)
            print(f"  bare docker run: {timings[-1]:.1f} s", flush=True)
        finally:
            container.remove(force=True)
            tenant_db.drop(names)
    return timings


def service_ready(client: docker.DockerClient, service_id: str) -> bool:
    """Whether a task of the service answers n8n's readiness on its node's published port."""
    for task in client.api.tasks(filters={"service": service_id}):
        port = published_port(task)
        if port:
            address = client.api.inspect_node(task["NodeID"])["Status"]["Addr"]
            return ready(f"http://{address}:{port}/healthz/readiness")
    return False


def bare_service(
    settings: Settings,
    tenant_db: TenantDatabaseResource,
    count: int,
    template: Template | None,
    cpu: float = 1.0,
) -> list[float]:
    """The Swarm's bare start: `docker service create` of the image on an eu-1 node (its port
    published on the node, as the Swarm runtime does), to readiness from this host."""
    swarm = runtime_from_settings(settings)
    assert isinstance(swarm, SwarmRuntimeResource)
    client = swarm.client()
    timings = []
    for _ in range(count):
        names = TenantNames(f"bare-{uuid.uuid4().hex[:6]}", "shared")
        tenant_db.ensure(names, "bare-password-1", template)
        started = time.monotonic()
        service = client.services.create(
            settings.image,
            name=f"rp9-{names.slug}",
            env=bare_env(settings, names),
            hosts={"host.docker.internal": settings.swarm_services_ip},
            resources=Resources(cpu_limit=int(cpu * 1_000_000_000), mem_limit=1 << 30),
            constraints=placement("eu-1"),
            endpoint_spec=EndpointSpec(
                mode="dnsrr", ports=[{"TargetPort": 5678, "PublishMode": "host"}]
            ),
        )

        try:
            serving = partial(service_ready, client, str(service.id))
            wait_until(serving, timeout_s=180, what="bare readiness", interval_s=POLL_S)
            timings.append(time.monotonic() - started)
            print(f"  bare service create: {timings[-1]:.1f} s", flush=True)
        finally:
            service.remove()
            tenant_db.drop(names)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=5)
    args = parser.parse_args()
    settings = Settings()
    vault = VaultResource(
        vault_addr=settings.vault_addr, vault_token=settings.vault_token.get_secret_value()
    )
    tenant_db = TenantDatabaseResource(admin_url=settings.database_url)
    on_swarm = settings.tenant_stack.runtime == "swarm"
    start = bare_service if on_swarm else bare
    what = "service create" if on_swarm else "docker run"
    runtime = "the Swarm runtime (eu-1)" if on_swarm else "the Docker runtime"
    print(f"on {runtime}")

    print(f"bare {what} of {settings.image} → readiness, fresh schema, {args.tenants} times:")
    bare_s = start(settings, tenant_db, args.tenants, None)

    # Its own Dagster storage: a fresh database, dropped afterwards.
    with dagster_database() as storage:
        home = Path(tempfile.mkdtemp(prefix="rp9-bench-dagster-"))
        (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
        dagster_port = free_port()
        env = {**os.environ, **storage, "DAGSTER_HOME": str(home)}
        dagster_cmd = [
            str(BIN / "dagster"),
            "dev",
            "-h",
            "127.0.0.1",
            "-p",
            str(dagster_port),
            "-w",
            str(ROOT / "workspace.yaml"),
        ]
        with (
            serve(
                dagster_cmd,
                url=f"http://127.0.0.1:{dagster_port}",
                ready_path="/server_info",
                log=home / "dagster.log",
                env=env,
                timeout_s=180,
            ),
            api_for(f"http://127.0.0.1:{dagster_port}", home, env) as api_server,
        ):
            api = Api(api_server.url, settings)
            print(f"POST /tenants → first webhook through Traefik, {args.tenants} tenants:")
            ours = orchestrated(api, settings, vault, args.tenants)

    template = tenant_db.template(template_schema(settings.n8n_version))
    print(f"bare {what} to readiness on a copy of the template, {args.tenants} times:")
    bare_t = start(settings, tenant_db, args.tenants, template)
    rows = [
        (f"bare {what} → readiness (fresh)", bare_s),
        (f"bare {what} → readiness (template)", bare_t),
    ]
    host_cpus = runtime_from_settings(settings).host_cpus()
    boost = startup_cpu(1.0, TenantStackSettings().startup_cpu, host_cpus)
    print(f"the same with the tenants' startup boost ({boost:g} CPU), {args.tenants} times:")
    bare_b = start(settings, tenant_db, args.tenants, template, cpu=boost)
    rows += [
        (f"bare {what} → readiness (boost)", bare_b),
        ("POST /tenants → first webhook", ours),
    ]
    print()
    print(f"{'':40} {'p50':>8} {'p95':>8}")
    for label, values in rows:
        print(f"{label:40} {statistics.median(values):7.1f}s {percentile(values, 0.95):7.1f}s")
    p50_o = statistics.median(ours)
    for label, values in rows[:-1]:
        overhead = 100 * (p50_o / statistics.median(values) - 1)
        print(f"overhead at p50 vs {label.split('(')[1][:-1]} bare start: {overhead:+.0f}%")
    print(
        "goal: within +30% of the bare start (fresh: what starting n8n by hand costs; template:"
        " on the platform's pre-migrated schema; boost: also with the startup CPU the platform"
        " gives, i.e. the orchestration's own cost)"
    )


if __name__ == "__main__":
    main()
