"""The fallback route: the API publishes it to Traefik's file provider for as long as it runs,
and answers by `Host`, without a token, for tenants that no container serves."""

import concurrent.futures
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import httpx
import pytest
import sqlalchemy as sa
import yaml

from rp9_pipelines.catalog import tenants as catalog
from rp9_pipelines.catalog.tables import quotas, tenants
from rp9_pipelines.domain.routing import (
    FALLBACK_ENTRYPOINT,
    FALLBACK_PATH,
    EdgeRate,
    traefik_labels,
)
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.conftest import Served, free_port, serve
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack


@pytest.fixture
def tenant_row(settings: Settings) -> Iterator[tuple[str, sa.Engine]]:
    """A catalog row only (no containers): a tenant whose provisioning has not started."""
    engine = sa.create_engine(sqlalchemy_url(settings.database_url))
    slug, tenant_id = f"fb-{uuid.uuid4().hex[:8]}", uuid.uuid4()
    with engine.begin() as connection:
        connection.execute(
            sa.insert(tenants).values(
                id=tenant_id,
                slug=slug,
                name="fallback",
                plan="starter",
                status="provisioning",
                n8n_version="2.20.12",
                custom_domain=f"{slug}.example.org",
            )
        )
    yield slug, engine
    with engine.begin() as connection:
        connection.execute(sa.delete(quotas).where(quotas.c.tenant_id == tenant_id))
        connection.execute(sa.delete(tenants).where(tenants.c.id == tenant_id))
    engine.dispose()


def ask(settings: Settings, host: str) -> httpx.Response:
    """Through Traefik, as a tenant's user would."""
    return httpx.get(f"{settings.traefik_url}/any/path?x=1", headers={"Host": host}, timeout=10)


def test_the_fallback_answers_by_host_through_traefik_without_a_token(
    settings: Settings, api_server: Served, tenant_row: tuple[str, sa.Engine]
) -> None:
    slug, engine = tenant_row
    host = f"{slug}.{settings.base_domain}"

    def unavailable() -> httpx.Response | None:
        response = ask(settings, host)
        return response if response.status_code == 503 else None

    answer = wait_until(unavailable, timeout_s=30, what="the fallback route in Traefik")
    assert answer.json()["error"]["code"] == "tenant_unavailable"
    assert answer.headers["Retry-After"] == "30"
    # The custom domain is the same tenant, and its answer does not reveal the tenant's slug.
    custom = ask(settings, f"{slug}.example.org").json()
    assert "tenant" not in custom
    assert custom["error"]["message"] == "this address is temporarily unavailable (provisioning)"
    # Suspended by an operator.
    with engine.begin() as connection:
        row = catalog.get_tenant(connection, slug)
        assert row is not None
        catalog.update_tenant(connection, row.id, status="suspended", suspension_reason="operator")
    suspended = ask(settings, host)
    assert (suspended.status_code, suspended.json()["error"]["code"]) == (503, "tenant_suspended")
    assert "operator" in suspended.json()["error"]["message"]
    # Unknown hosts, and names under the platform's domain that are not a tenant's.
    for other in (
        f"no-{slug}.{settings.base_domain}",
        f"a.{slug}.{settings.base_domain}",
        "example.net",
    ):
        unknown = ask(settings, other)
        assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "tenant_not_found")
    # Directly on the API, too: no Bearer token needed for this one path only.
    direct = httpx.get(f"{api_server.url}{FALLBACK_PATH}", headers={"Host": host}, timeout=10)
    assert direct.status_code == 503
    assert httpx.get(f"{api_server.url}/tenants", timeout=10).status_code == 401


# A stand-in for an n8n that cannot take requests: `/reset` closes the connection (Traefik's
# 502, as for a main stopping), anything else is never answered (requests stay in flight).
# Each request's path is logged as it arrives.
UNANSWERING = (
    "require('http').createServer((q) => { console.log(q.url);"
    " if (q.url === '/reset') q.socket.destroy(); })"
)


def test_a_routed_tenant_that_cannot_take_requests_gets_503_with_retry_after(
    settings: Settings,
    api_server: Served,
    tenant_row: tuple[str, sa.Engine],
    docker_client: docker.DockerClient,
) -> None:
    """Traefik's own answers for a routed tenant (502: its n8n reset the connection; 429: its
    in-flight limit) become the fallback's 503 with `Retry-After` for that host; a host the
    catalog does not know is never called missing while a container claims it."""
    slug, _ = tenant_row
    host, stranger = f"{slug}.{settings.base_domain}", f"x{slug}.{settings.base_domain}"
    name = f"rp9-unanswering-{uuid.uuid4().hex[:8]}"
    network = docker_client.networks.create(name, driver="bridge")
    container = docker_client.containers.run(
        settings.image,
        name=name,
        entrypoint=["node", "-e", UNANSWERING + ".listen(5678)"],
        healthcheck={"test": ["NONE"]},
        detach=True,
        network=network.name,
        labels=traefik_labels(
            router=name,
            hosts=[host, stranger],
            port=5678,
            entrypoint=settings.traefik_entrypoint,
            network=network.name,
            rate_limit=EdgeRate(average=100, burst=200, in_flight=2),
            answer_unavailable=True,
        ),
    )
    edge = httpx.Client(base_url=settings.traefik_url, timeout=30)
    try:

        def routed() -> bool:
            routers = httpx.get(f"{settings.traefik_api_url}/api/http/routers", timeout=10)
            ours = [r for r in routers.json() if r["name"] == f"{name}@docker"]
            return bool(ours) and ours[0]["status"] == "enabled"

        def reset(on: str) -> httpx.Response | None:
            answer = edge.post("/reset", json={}, headers={"Host": on})
            # Until the process listens, Traefik's 502 for a refused connection: the same page.
            return answer if answer.status_code != 404 else None

        wait_until(routed, timeout_s=30, what="the container's router in Traefik, enabled")
        answer = wait_until(lambda: reset(host), timeout_s=30, what="the container's route")
        # Being provisioned, and routed: what Traefik saw, and the tenant's state.
        assert answer.status_code == 503, answer.text
        assert answer.headers["Retry-After"] == "5"
        assert answer.json()["error"] == {
            "code": "tenant_unavailable",
            "message": f"{slug} is restarting or not answering (provisioning)",
        }
        # The catch-all would call this one unknown (404): the answer comes from its router.
        posted = reset(stranger)
        assert posted is not None
        assert posted.status_code == 503, posted.text
        assert posted.headers["Retry-After"] == "5"
        assert posted.json()["error"]["message"] == "this address is restarting or not answering"
        # Two requests in flight fill the limit; the next is answered at once.
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            hanging = [
                pool.submit(
                    httpx.get,
                    f"{settings.traefik_url}/hang",
                    headers={"Host": stranger},
                    timeout=25,  # still in flight when the next one is sent
                )
                for _ in range(2)
            ]
            # On two cores busy with the whole suite, Traefik and the container's log have
            # taken more than 10 s to show both (seen once in CI).
            wait_until(
                lambda: container.logs().decode().count("/hang") == 2,
                timeout_s=15,
                what="two requests in flight",
            )
            busy = edge.get("/more", headers={"Host": stranger}, timeout=5)
            assert busy.status_code == 503, busy.text
            assert busy.headers["Retry-After"] == "2"
            assert busy.json()["error"] == {
                "code": "tenant_busy",
                "message": "this address is at capacity",
            }
            assert "/more" not in container.logs().decode()
            for request in hanging:
                with pytest.raises(httpx.TimeoutException):
                    request.result()
    finally:
        edge.close()
        container.remove(force=True)
        network.remove()


def test_each_api_publishes_its_route_while_it_runs_and_prunes_dead_ones(
    settings: Settings, tmp_path: Path
) -> None:
    directory = Path(os.environ["TRAEFIK_DYNAMIC_DIR"])
    dead = directory / "rp9-fallback-127-0-0-1-1.yml"
    dead.write_text(
        yaml.safe_dump(
            {
                "http": {
                    "services": {
                        "rp9-fallback-127-0-0-1-1": {
                            "loadBalancer": {"servers": [{"url": "http://127.0.0.1:1"}]}
                        }
                    }
                }
            }
        )
    )
    port = free_port()
    mine = directory / f"rp9-fallback-127-0-0-1-{port}.yml"
    command = [
        str(Path(sys.executable).parent / "uvicorn"),
        "rp9_pipelines.api.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {**os.environ, "ORCH_PORT": str(port)}
    with serve(
        command,
        url=f"http://127.0.0.1:{port}",
        ready_path="/healthz",
        log=tmp_path / "api.log",
        env=env,
        timeout_s=60,
    ):
        published = yaml.safe_load(mine.read_text())
        router = published["http"]["routers"][mine.stem]
        assert router["entryPoints"] == [settings.traefik_entrypoint, FALLBACK_ENTRYPOINT]
        servers = published["http"]["services"][mine.stem]["loadBalancer"]["servers"]
        assert servers == [{"url": f"http://127.0.0.1:{port}"}]
        assert not dead.exists()
    assert not mine.exists()
