"""Routes that follow the Swarm runtime's tasks (`services/routes.py`): the host's Traefik
serves a Swarm main by its host name through the route file the control plane writes, the route
moves with the task when its node is drained, and goes when it stops."""

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rp9_pipelines.domain.routing import ROUTED_PREFIX, traefik_labels
from rp9_pipelines.domain.stack import ContainerSpec
from rp9_pipelines.resources.traefik_dynamic import TraefikDynamicResource
from rp9_pipelines.services import routes
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.runtime.test_contract import BOOT_S, _spec, _swarm
from rp9_pipelines_tests.waiting import wait_until

pytestmark = [pytest.mark.stack, pytest.mark.swarm]


@pytest.fixture
def routed_main(settings: Settings, tmp_path: Path) -> Iterator[tuple[ContainerSpec, str]]:
    """An n8n main on the Swarm (region eu-1) with a tenant's route labels; its host name."""
    swarm = _swarm()
    slug = f"rt{uuid.uuid4().hex[:8]}"
    host = f"{slug}.{settings.base_domain}"
    (tmp_path / "encryption_key").write_text(uuid.uuid4().hex)
    spec = _spec(slug, f"rp9-{slug}")
    labels = traefik_labels(
        router=f"t-{slug}", hosts=[host], port=5678, entrypoint=settings.traefik_entrypoint
    )
    spec = ContainerSpec(**{**spec.__dict__, "labels": spec.labels | labels, "region": "eu-1"})
    swarm.ensure_network(spec.network, slug)
    swarm.create(spec, settings.image, tmp_path)
    yield spec, host
    swarm.remove(spec.name, graceful=False)
    swarm.remove_network(spec.network)


def test_the_edge_follows_a_swarm_main_across_a_drain_and_forgets_it_when_it_stops(
    settings: Settings, routed_main: tuple[ContainerSpec, str]
) -> None:
    spec, host = routed_main
    swarm = _swarm()
    dynamic = TraefikDynamicResource(directory=settings.traefik_dynamic_dir)
    edge = httpx.Client(base_url=settings.traefik_url, headers={"Host": host}, timeout=10)
    name = f"{ROUTED_PREFIX}t-{spec.labels['io.rp9.tenant']}"

    def served_by() -> str | None:
        routes.sync(swarm, dynamic)
        if edge.get("/healthz/readiness").status_code != 200:
            return None
        config = dynamic.read(name)
        assert config is not None
        (server,) = config["http"]["services"][f"t-{spec.labels['io.rp9.tenant']}"]["loadBalancer"][
            "servers"
        ]
        return str(server["url"])

    first = wait_until(served_by, timeout_s=BOOT_S, what=f"{host} through the edge", interval_s=0.5)
    state = swarm.state(spec.name)
    assert state is not None
    assert state.url == first
    client = swarm.client()
    (node,) = client.nodes.list(filters={"name": state.node})
    node.update({**node.attrs["Spec"], "Availability": "drain"})
    drained = time.monotonic()
    try:
        moved = wait_until(
            lambda: (url := served_by()) != first and url,
            timeout_s=BOOT_S,
            what=f"{host} through the edge from another node",
            interval_s=0.5,
        )
        moved_s = time.monotonic() - drained
    finally:
        node.reload()
        node.update({**node.attrs["Spec"], "Availability": "active"})
    print(f"{host}: served through the edge from {moved} {moved_s:.1f} s after the drain")
    swarm.stop(spec.name, timeout_s=2)
    # Removed by this sync, or already by the API's own follower when one runs (make test-swarm).
    synced = routes.sync(swarm, dynamic)
    assert synced.written == []
    assert synced.removed in ([name], [])
    assert spec.name not in synced.placed
    assert dynamic.read(name) is None
    # Nothing claims the host any more: Traefik's own 404, or the fallback's answer when an API
    # publishes one; never n8n's.
    wait_until(
        lambda: edge.get("/healthz/readiness").status_code != 200,
        timeout_s=10,
        what=f"{host} to leave the edge",
    )
