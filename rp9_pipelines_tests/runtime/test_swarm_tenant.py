"""A tenant on the Swarm runtime, end to end: provisioned through the API (`TENANT_RUNTIME=swarm`,
as `make test-swarm` runs the API and Dagster), its main and worker on nodes of its region and
on Postgres and Redis on the host, its webhooks through the host's Traefik (the routes the API
keeps in step with the tasks); the node of its main drained under a stream of webhooks, it
serves again from another node of its region with every answered request run exactly once;
deleted, nothing of it is left on the Swarm."""

import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import docker
import httpx
import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog.tables import backups
from rp9_pipelines.catalog.tenants import set_quota
from rp9_pipelines.domain.backups import region_buckets
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines.resources.swarm_runtime import SwarmRuntimeResource
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.autoscaling import load as autoscaling_load
from rp9_pipelines_tests.autoscaling.test_autoscaling_e2e import scale_a_backlog_up_and_back_down
from rp9_pipelines_tests.n8n_workflows import echo_webhook
from rp9_pipelines_tests.promotion.traffic import Load, executions_by_id, install, run_under_load
from rp9_pipelines_tests.runtime.test_contract import BOOT_S, _swarm
from rp9_pipelines_tests.tenants.conftest import TenantN8n, unique_slug
from rp9_pipelines_tests.tenants.test_backups import take_backup
from rp9_pipelines_tests.waiting import wait_until

pytestmark = [pytest.mark.stack, pytest.mark.swarm]

EU = {"w1", "w2"}  # deploy/swarm/swarm.sh: the nodes labelled region=eu-1
FAILOVER_GOAL_S = 60


def _left_on_swarm(swarm: SwarmRuntimeResource, slug: str) -> list[str]:
    client = swarm.client()
    label = {"label": f"io.rp9.tenant={slug}"}
    return [
        *(f"service {s.name}" for s in client.services.list(filters=label)),
        *(f"network {n.name}" for n in client.networks.list(filters=label)),
        *(
            f"secret {s.name}"
            for s in client.secrets.list(filters={"label": f"io.rp9.secret-owner={slug}"})
        ),
    ]


@pytest.fixture(scope="module")
def swarm_tenant(settings: Settings, api: Api) -> Iterator[dict[str, Any]]:
    """A starter tenant (main and one worker) in eu-1, provisioned through the API; deleted
    through it at the end, leaving nothing on the Swarm."""
    if settings.tenant_stack.runtime != "swarm":
        pytest.fail("TENANT_RUNTIME is not swarm: run these tests with `make test-swarm`")
    swarm = _swarm()
    slug = unique_slug("sw")
    tenant = api.create_tenant(slug=slug, name="Swarm Co", plan="starter", region="eu-1")
    yield tenant
    response = api.request("DELETE", f"/tenants/{tenant['id']}?purge=true")
    assert response.status_code == 202, response.text
    assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"
    left = wait_until(
        lambda: not _left_on_swarm(swarm, slug) or None,
        timeout_s=60,
        what=f"nothing of {slug} on the Swarm (left: {_left_on_swarm(swarm, slug)})",
    )
    assert left


@pytest.fixture(scope="module")
def n8n(settings: Settings, vault: VaultResource, swarm_tenant: dict[str, Any]) -> TenantN8n:
    return TenantN8n(settings, vault, swarm_tenant)


def _served(n8n: TenantN8n, path: str) -> bool:
    nonce = uuid.uuid4().hex
    answer = n8n.call(path, {"nonce": nonce})
    return answer.status_code == 200 and answer.json().get("echo", {}).get("nonce") == nonce


def _serving_main(
    swarm: SwarmRuntimeResource, n8n: TenantN8n, slug: str, prefix: str
) -> tuple[str, str]:
    """An echo webhook installed and served; its path and the node of the tenant's main."""
    path = f"{prefix}-{uuid.uuid4().hex[:8]}"
    install(n8n, echo_webhook(path))
    wait_until(lambda: _served(n8n, path), timeout_s=60, what="the echo through the edge")
    main = next(s for s in swarm.states(slug) if s.role == "main")
    assert main.node in EU
    return path, main.node


def _served_without(
    swarm: SwarmRuntimeResource, n8n: TenantN8n, slug: str, path: str, node: str
) -> float:
    """Seconds until the tenant's main runs on a node other than `node` and serves the echo."""
    started = time.monotonic()

    def elsewhere() -> bool:
        now = next(s for s in swarm.states(slug) if s.role == "main")
        return now.node not in (None, node) and _served(n8n, path)

    wait_until(elsewhere, timeout_s=BOOT_S, what=f"{slug} served from a node other than {node}")
    return time.monotonic() - started


def _nodes_in_catalog(api: Api, tenant: dict[str, Any]) -> dict[str, str | None]:
    """What GET /tenants/{id} says runs where (the catalog's record)."""
    detail = api.get(f"/tenants/{tenant['id']}").json()
    return {i["name"]: i["node"] for i in detail["instances"]}


def test_a_tenant_provisioned_on_the_swarm_runs_in_its_region_and_serves_through_the_edge(
    api: Api, swarm_tenant: dict[str, Any], n8n: TenantN8n
) -> None:
    swarm = _swarm()
    states = {s.role: s for s in swarm.states(swarm_tenant["slug"])}
    assert set(states) == {"main", "worker"}, states
    for state in states.values():
        assert state.health == "healthy", state
        assert state.node in EU, f"{state.name} runs on {state.node}, not in eu-1 {EU}"
    assert _nodes_in_catalog(api, swarm_tenant) == {s.name: s.node for s in states.values()}
    path = f"sw-{uuid.uuid4().hex[:8]}"
    install(n8n, echo_webhook(path))
    # The webhook's execution runs on the worker (queue mode, Redis on the host) and its
    # answer comes back through the main and the edge.
    assert wait_until(lambda: _served(n8n, path), timeout_s=60, what="the echo through the edge")


def test_prometheus_scrapes_the_tenants_tasks_on_their_nodes(
    settings: Settings, swarm_tenant: dict[str, Any]
) -> None:
    """The API writes the tasks as Prometheus targets (its Docker discovery sees only this
    host): n8n's own metrics of the tenant's main and worker, with their node, under the job
    the rules, dashboards and autoscaler read."""
    slug = swarm_tenant["slug"]
    query = f'up{{job="n8n",tenant="{slug}",node!=""}}'

    def scraped() -> dict[str, str] | None:
        answer = httpx.get(f"{settings.prometheus_url}/api/v1/query", params={"query": query})
        found = {
            r["metric"]["role"]: r["metric"]["node"]
            for r in answer.json()["data"]["result"]
            if r["value"][1] == "1"
        }
        return found if set(found) == {"main", "worker"} else None

    nodes = wait_until(scraped, timeout_s=60, what=f"Prometheus scraping {slug}'s tasks")
    assert set(nodes.values()) <= EU, nodes


def test_draining_the_node_of_its_main_serves_it_again_from_another_node_losing_nothing(
    settings: Settings, api: Api, swarm_tenant: dict[str, Any], n8n: TenantN8n
) -> None:
    swarm = _swarm()
    slug = swarm_tenant["slug"]
    path, node_name = _serving_main(swarm, n8n, slug, "dr")
    load = Load(n8n, path, rate=5.0)
    (node,) = swarm.client().nodes.list(filters={"name": node_name})
    moved: dict[str, float] = {}

    def drain_and_wait() -> None:
        node.update({**node.attrs["Spec"], "Availability": "drain"})
        moved["s"] = _served_without(swarm, n8n, slug, path, node_name)

    try:
        run_under_load(load, drain_and_wait)
    finally:
        node.reload()
        node.update({**node.attrs["Spec"], "Availability": "active"})
    after = {s.role: s for s in swarm.states(slug)}
    assert all(s.node in EU - {node_name} for s in after.values()), after
    # The catalog follows the tasks (the API's route follower records their nodes).
    wait_until(
        lambda: _nodes_in_catalog(api, swarm_tenant) == {s.name: s.node for s in after.values()},
        timeout_s=10,
        what=f"the catalog saying {slug} runs on {after['main'].node}",
    )
    names = TenantNames(slug, swarm_tenant["tier"])
    ran = executions_by_id(settings, names, load.token)
    answered = [i for i, status in load.answers.items() if status == 200]
    refused = [i for i, status in load.answers.items() if status in (502, 503)]
    print(
        f"\ndrain of {node_name}: {slug} served from {after['main'].node} after {moved['s']:.1f} s;"
        f" {len(load.answers)} requests at {load.rate}/s: {len(answered)} answered,"
        f" failures {dict(load.failures())}; {sum(ran.values())} executions"
    )
    assert moved["s"] < FAILOVER_GOAL_S, load.timeline()
    # Every request answered ran exactly once; none refused at the edge ran at all.
    assert [i for i in answered if ran[i] != 1] == [], load.timeline()
    assert [i for i in refused if ran[i] != 0] == [], load.timeline()
    assert answered, "no request answered"


def test_a_tenants_backup_stays_in_its_regions_bucket(
    settings: Settings, s3: S3Resource, swarm_tenant: dict[str, Any]
) -> None:
    buckets = region_buckets(settings.s3_region_buckets)
    assert buckets.get("eu-1"), "S3_REGION_BUCKETS has no eu-1 bucket: run `make test-swarm`"
    backup_id = take_backup(swarm_tenant)["backup_id"]
    engine = sa.create_engine(sqlalchemy_url(settings.database_url), poolclass=sa.NullPool)
    with engine.connect() as connection:
        stored = connection.execute(
            sa.select(backups).where(backups.c.id == uuid.UUID(backup_id))
        ).one()
    engine.dispose()
    assert (stored.status, stored.bucket) == ("ok", buckets["eu-1"])
    head = s3.head(stored.key, stored.bucket)
    assert head is not None
    assert head.size == stored.size_bytes
    # Nowhere else: not in the default bucket, not in another region's.
    for bucket in {settings.s3_bucket, *buckets.values()} - {buckets["eu-1"]}:
        assert s3.head(stored.key, bucket) is None, f"{stored.key} is in {bucket} too"


# What a tenant's own code can do in its container (n8n runs Node.js): open a TCP connection.
CONNECT = (
    "const s = require('net').connect({host: process.argv[1], port: +process.argv[2]});"
    "s.setTimeout(3000, () => { console.log('timeout'); process.exit(0); });"
    "s.on('connect', () => { console.log('open'); process.exit(0); });"
    "s.on('error', (e) => { console.log(e.code); process.exit(0); });"
)


def test_a_tenants_task_reaches_postgres_and_redis_and_nothing_else_of_the_swarms_network(
    settings: Settings, swarm_tenant: dict[str, Any]
) -> None:
    """The tenant is hostile: from its worker it reaches the platform's Postgres and Redis (its
    own credentials then decide), and not a port the host opens to everyone, not a published
    n8n port on a node (another tenant's, past the edge's limits), not the metadata address."""
    swarm = _swarm()
    states = {s.role: s for s in swarm.states(swarm_tenant["slug"])}
    worker, main = states["worker"], states["main"]
    assert main.url
    services = settings.swarm_services_ip
    with socket.socket() as listener:  # a host port open to every address (not in the firewall)
        listener.bind(("0.0.0.0", 0))  # noqa: S104 (what the test probes)
        listener.listen()
        open_port = listener.getsockname()[1]
        node_port = urlsplit(main.url)
        targets = {
            "postgres": (services, str(urlsplit(settings.database_url).port)),
            "redis": (services, str(urlsplit(settings.redis_url).port)),
            "a host port open to all": (services, str(open_port)),
            "the nodes' gateway, same port": ("10.96.0.1", str(open_port)),
            "a node's published n8n": (str(node_port.hostname), str(node_port.port)),
            "metadata": ("169.254.169.254", "80"),
        }
        seen = {}
        for what, (host, port) in targets.items():
            code, out, err = swarm.exec(worker.name, ["node", "-e", CONNECT, host, port])
            assert code == 0, err
            seen[what] = out.strip()
    print(f"\nfrom {worker.name} on {worker.node}: {seen}")
    assert seen["postgres"] == "open", seen
    assert seen["redis"] == "open", seen
    refused = {what: how for what, how in seen.items() if what not in ("postgres", "redis")}
    assert "open" not in refused.values(), seen


def _node_ready(swarm: SwarmRuntimeResource, hostname: str) -> bool:
    (node,) = swarm.client().nodes.list(filters={"name": hostname})
    return bool(node.attrs["Status"]["State"] == "ready")


def test_a_lost_node_s_tenant_serves_again_from_another_node_of_its_region(
    settings: Settings, swarm_tenant: dict[str, Any], n8n: TenantN8n
) -> None:
    """The node of the tenant's main is lost (its machine stops: the node's container is
    killed, its tasks with it): Swarm marks it down and starts the tasks on the other eu-1 node.
    A job a lost worker held is run again once its lock expires (Bull: at least once), so
    answered requests ran once or more, and the duplicates are reported."""
    swarm = _swarm()
    slug = swarm_tenant["slug"]
    path, node_name = _serving_main(swarm, n8n, slug, "lost")
    engine = docker.DockerClient(base_url=settings.docker_host)
    machine = engine.containers.get(f"rp9-swarm-{node_name}")
    load = Load(n8n, path, rate=5.0)
    moved: dict[str, float] = {}

    def lose_and_wait() -> None:
        machine.kill()
        moved["s"] = _served_without(swarm, n8n, slug, path, node_name)

    try:
        run_under_load(load, lose_and_wait)
    finally:
        machine.start()
        wait_until(
            lambda: _node_ready(swarm, node_name),
            timeout_s=120,
            what=f"{node_name} back in the swarm",
        )
    ran = executions_by_id(settings, TenantNames(slug, swarm_tenant["tier"]), load.token)
    answered = [i for i, status in load.answers.items() if status == 200]
    twice = [i for i in answered if ran[i] > 1]
    print(
        f"\n{node_name} lost: {slug} served from another node after {moved['s']:.1f} s;"
        f" {len(load.answers)} requests at {load.rate}/s: {len(answered)} answered,"
        f" failures {dict(load.failures())}; {sum(ran.values())} executions, {len(twice)} twice"
    )
    assert moved["s"] < FAILOVER_GOAL_S, load.timeline()
    assert [i for i in answered if ran[i] < 1] == [], load.timeline()
    assert answered, "no request answered"


# The platform's flows through the API, unchanged, on the Swarm tenant (in this order: each
# leaves it serving).


def _run(api: Api, path: str, body: dict[str, Any] | None = None, timeout_s: float = 600) -> None:
    asked = api.post(path, body or {}, **{"Idempotency-Key": str(uuid.uuid4())})
    assert asked.status_code == 202, asked.text
    run = api.wait_run(asked.json()["run_id"], timeout_s=timeout_s)
    assert run["status"] == "SUCCESS", (path, run)


def test_resize_suspend_and_resume_on_the_swarm(
    api: Api, swarm_tenant: dict[str, Any], n8n: TenantN8n
) -> None:
    """A resize is a service update on the Swarm: its tasks restart with the new limits
    (stop-first) and serve again; suspended, the fallback answers; resumed, it serves."""
    swarm = _swarm()
    slug = swarm_tenant["slug"]
    path, _ = _serving_main(swarm, n8n, slug, "flow")
    _run(api, f"/tenants/{slug}/scale", {"cpu": 0.75, "memory_mb": 896})
    observed = swarm.observe(slug)
    assert {(o.cpu, o.memory_mb) for o in observed} == {(0.75, 896)}, observed
    assert all(s.health == "healthy" and s.node in EU for s in swarm.states(slug))
    wait_until(lambda: _served(n8n, path), timeout_s=60, what="the echo after the resize")
    _run(api, f"/tenants/{slug}/suspend")
    wait_until(
        lambda: n8n.call(path, {"nonce": "x"}).status_code == 503,
        timeout_s=10,
        what="the fallback's 503 while suspended (no task serves)",
    )
    _run(api, f"/tenants/{slug}/resume")
    wait_until(lambda: _served(n8n, path), timeout_s=60, what="the echo after resume")


def test_a_restore_drill_on_the_swarm_passes_and_leaves_nothing(
    api: Api, swarm_tenant: dict[str, Any]
) -> None:
    slug = swarm_tenant["slug"]
    backup_id = take_backup(swarm_tenant)["backup_id"]
    _run(api, f"/tenants/{slug}/restore-drills", {"backup_id": backup_id})
    drill = api.get(f"/tenants/{slug}/restore-drills").json()["restore_drills"][0]
    assert (drill["status"], drill["error"]) == ("passed", None), drill["checks"]
    swarm = _swarm()
    assert swarm.state(drill["sandbox"]) is None
    owned = {"label": f"io.rp9.secret-owner={drill['sandbox']}"}
    assert swarm.client().secrets.list(filters=owned) == []


def test_a_changed_concurrency_quota_reaches_the_worker_on_its_node(
    settings: Settings, api: Api, swarm_tenant: dict[str, Any], n8n: TenantN8n
) -> None:
    """Enforcement on the Swarm: an entitlement's concurrency reaches the worker's service (its
    task restarts with the new command) and the tenant serves on; the next run, reading the
    running task's command through its node's engine, finds nothing to do."""
    swarm = _swarm()
    slug = swarm_tenant["slug"]
    path, _ = _serving_main(swarm, n8n, slug, "quota")

    def worker_service() -> Any:
        (worker,) = [s for s in swarm.states(slug) if s.role == "worker"]
        return swarm.client().services.get(worker.name)

    before = worker_service().attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"]
    assert before[-1] != "--concurrency=2", before
    engine = sa.create_engine(sqlalchemy_url(settings.database_url), poolclass=sa.NullPool)
    with engine.begin() as connection:
        set_quota(connection, uuid.UUID(swarm_tenant["id"]), "stripe", {"concurrency": 2})
    _run(api, "/enforcement/run", {"tenants": [slug]})
    service = worker_service()
    assert service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"]["Args"][-1] == "--concurrency=2"
    assert all(s.health == "healthy" and s.node in EU for s in swarm.states(slug))
    wait_until(lambda: _served(n8n, path), timeout_s=60, what="the echo after the new quota")
    _run(api, "/enforcement/run", {"tenants": [slug]})
    assert worker_service().attrs["Version"]["Index"] == service.attrs["Version"]["Index"]


def test_a_promotion_on_the_swarm_moves_the_tenant_to_its_database_failing_no_request(
    settings: Settings, api: Api, swarm_tenant: dict[str, Any], n8n: TenantN8n
) -> None:
    """The shared tenant promoted through the API under 5 webhooks/s of an echo its workflow
    answers (so the backlog the hold releases is answered only once the dedicated workers run):
    its main and worker on eu-1 nodes on its own database, no request failed, every answered
    one executed once there. (Before the upgrade: the template's version must match.)"""
    swarm = _swarm()
    slug = swarm_tenant["slug"]
    path, _ = _serving_main(swarm, n8n, slug, "pro")
    load = Load(n8n, path, rate=5.0)
    run_under_load(load, lambda: _run(api, f"/tenants/{slug}/promote"))
    (promotion, *_) = api.get(f"/tenants/{slug}/promotions").json()["promotions"]
    assert (promotion["status"], promotion["error"]) == ("succeeded", None), promotion
    assert api.get(f"/tenants/{swarm_tenant['id']}").json()["tier"] == "dedicated"
    states = {s.role: s for s in swarm.states(slug)}
    assert set(states) == {"main", "worker"}, states
    assert all(s.health == "healthy" and s.node in EU for s in states.values()), states
    ran = executions_by_id(settings, TenantNames(slug, "dedicated"), load.token)
    answered = [i for i, status in load.answers.items() if status == 200]
    print(
        f"\npromotion on the Swarm: held {promotion['figures'].get('hold_s')} s;"
        f" {len(load.answers)} requests, failures {dict(load.failures())};"
        f" {sum(ran.values())} executions on the dedicated side"
    )
    assert load.failures() == {}, load.report()
    assert [i for i in answered if ran[i] != 1] == [], load.timeline()
    assert wait_until(lambda: _served(n8n, path), timeout_s=60, what="the promoted echo")


def test_an_upgrade_on_the_swarm_serves_the_tenant_again_failing_no_request(
    api: Api, swarm_tenant: dict[str, Any], n8n: TenantN8n
) -> None:
    """A blue/green upgrade to 2.22.6 through the API under 5 webhooks/s: the main of the other
    color on an eu-1 node serves, no request failed."""
    swarm = _swarm()
    slug = swarm_tenant["slug"]
    path, _ = _serving_main(swarm, n8n, slug, "cut")
    before = next(s for s in swarm.states(slug) if s.role == "main")
    load = Load(n8n, path, rate=5.0)
    run_under_load(load, lambda: _run(api, f"/tenants/{slug}/upgrade", {"version": "2.22.6"}))
    main = next(s for s in swarm.states(slug) if s.role == "main")
    assert main.name != before.name, main
    assert main.node in EU, main
    assert api.get(f"/tenants/{swarm_tenant['id']}").json()["n8n_version"] == "2.22.6"
    assert wait_until(lambda: _served(n8n, path), timeout_s=60, what="the upgraded echo")
    print(f"\nupgrade on the Swarm: {len(load.answers)} requests, {dict(load.failures())} failed")
    assert load.failures() == {}, load.report()


def test_the_autoscaler_scales_a_backlog_on_the_swarm_up_and_back_down_losing_nothing(
    settings: Settings, api: Api, vault: VaultResource
) -> None:
    """The autoscaler, unchanged, on the Swarm: the Docker test's whole story (a 200-execution
    backlog scales a pro tenant's worker services up to 4 and, after the window, back to 1; every
    execution succeeds, the edge answers 200 throughout, the signals' sources agree)."""
    if settings.tenant_stack.runtime != "swarm":
        pytest.fail("TENANT_RUNTIME is not swarm: run these tests with `make test-swarm`")
    slug = unique_slug("sa")
    tenant = autoscaling_load.provision(api, settings, slug)
    try:
        scale_a_backlog_up_and_back_down(settings, api, vault, tenant)
    finally:
        response = api.request("DELETE", f"/tenants/{slug}?purge=true")
        assert response.status_code == 202, response.text
        assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"
    assert wait_until(
        lambda: not _left_on_swarm(_swarm(), slug) or None,
        timeout_s=60,
        what=f"nothing of {slug} on the Swarm",
    )
