"""The thinnest real path: the locally built n8n image, started through the Docker SDK with
limits and a Traefik route, answers readiness through Traefik."""

import uuid
from collections.abc import Iterator

import docker
import httpx
import pytest
from docker.models.containers import Container

from rp9_pipelines.domain.routing import traefik_labels
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack

CPUS = 1.0
MEMORY = 1024 * 1024 * 1024


@pytest.fixture
def smoke_container(
    settings: Settings, docker_client: docker.DockerClient
) -> Iterator[tuple[Container, str]]:
    suffix = uuid.uuid4().hex[:8]
    host = f"smoke-{suffix}.{settings.base_domain}"
    network = docker_client.networks.create(f"rp9-smoke-{suffix}", driver="bridge")
    container = docker_client.containers.run(
        settings.image,
        name=f"rp9-smoke-{suffix}",
        hostname=f"rp9-smoke-{suffix}",
        detach=True,
        network=network.name,
        nano_cpus=int(CPUS * 1e9),
        mem_limit=MEMORY,
        pids_limit=512,
        security_opt=["no-new-privileges"],
        labels=traefik_labels(
            router=f"smoke-{suffix}",
            hosts=[host],
            port=5678,
            entrypoint=settings.traefik_entrypoint,
            network=network.name,
        ),
    )
    yield container, host
    container.remove(force=True)
    network.remove()


def test_n8n_answers_readiness_through_traefik_with_limits(
    settings: Settings,
    docker_client: docker.DockerClient,
    smoke_container: tuple[Container, str],
) -> None:
    container, host = smoke_container

    def ready() -> bool:
        response = httpx.get(
            f"{settings.traefik_url}/healthz/readiness", headers={"Host": host}, timeout=5
        )
        return response.status_code == 200 and response.json() == {"status": "ok"}

    wait_until(ready, timeout_s=120, what=f"n8n readiness through Traefik for {host}")

    inspected = docker_client.api.inspect_container(container.id)
    assert inspected["HostConfig"]["NanoCpus"] == int(CPUS * 1e9)
    assert inspected["HostConfig"]["Memory"] == MEMORY
    assert inspected["HostConfig"]["PidsLimit"] == 512
    assert inspected["Config"]["Image"] == settings.image

    # An unknown host is not routed to any tenant.
    other = httpx.get(
        f"{settings.traefik_url}/healthz/readiness", headers={"Host": f"nobody.{host}"}, timeout=5
    )
    assert other.status_code == 404
