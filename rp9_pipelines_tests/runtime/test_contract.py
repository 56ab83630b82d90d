"""The tenant runtime's contract, run against each runtime: the Docker Engine on this host and a
Docker Swarm of Docker-in-Docker nodes (`make swarm-up`, `deploy/swarm/swarm.sh`).

The workload is a real n8n main (its own SQLite, so no tenant database is needed) with a secret
read through n8n's `_FILE` convention, on a network of its own, with the platform's health
check, limits and labels. `make test` runs the Docker runtime's half; `make test-swarm` both.
"""

import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from rp9_pipelines.domain.stack import (
    LABEL_COLOR,
    LABEL_MANAGED,
    LABEL_ROLE,
    LABEL_TENANT,
    ContainerSpec,
)
from rp9_pipelines.resources.docker_runtime import MIB, DockerRuntimeResource
from rp9_pipelines.resources.swarm_runtime import SwarmRuntimeResource
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack

N8N_UID = 1000
BOOT_S = 240
SWARM_ENV = ("SWARM_MANAGER_HOST", "SWARM_NODE_ENGINE", "SWARM_SERVICES_IP")


def _swarm() -> SwarmRuntimeResource:
    missing = [name for name in SWARM_ENV if not os.environ.get(name)]
    if missing:
        pytest.fail(
            f"the Swarm's environment is missing {missing}: run `make test-swarm` "
            "(it forms the swarm with deploy/swarm/swarm.sh up)"
        )
    return SwarmRuntimeResource(
        manager_host=os.environ["SWARM_MANAGER_HOST"],
        node_engine=os.environ["SWARM_NODE_ENGINE"],
        services_ip=os.environ["SWARM_SERVICES_IP"],
    )


Runtime = DockerRuntimeResource | SwarmRuntimeResource


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("docker"),
        pytest.param("swarm", marks=pytest.mark.swarm),
    ],
)
def runtime(request: pytest.FixtureRequest, settings: Settings) -> Runtime:
    if request.param == "docker":
        return DockerRuntimeResource(docker_host=settings.docker_host)
    return _swarm()


@dataclass
class Workload:
    runtime: Runtime
    spec: ContainerSpec
    image: str
    secrets: Path
    key: str


def _spec(slug: str, network: str, memory_mb: int = 768) -> ContainerSpec:
    name = f"rp9-{slug}-blue-main"
    return ContainerSpec(
        name=name,
        role="main",
        index=0,
        command=[],
        env={
            "N8N_PORT": "5678",
            "N8N_ENCRYPTION_KEY_FILE": "/run/secrets/encryption_key",
            "N8N_DIAGNOSTICS_ENABLED": "false",
            "N8N_PERSONALIZATION_ENABLED": "false",
            "N8N_RUNNERS_ENABLED": "false",
        },
        labels={
            LABEL_MANAGED: "true",
            LABEL_TENANT: slug,
            LABEL_ROLE: "main",
            LABEL_COLOR: "blue",
        },
        cpu=1.0,
        memory_mb=memory_mb,
        network=network,
        healthcheck_interval_s=1.0,
    )


@pytest.fixture(scope="module")
def workload(runtime: Runtime, settings: Settings) -> Iterator[Workload]:
    slug = f"ct{uuid.uuid4().hex[:8]}"
    network = f"rp9-{slug}"
    key = uuid.uuid4().hex
    with tempfile.TemporaryDirectory(prefix="rp9-contract-") as directory:
        secrets = Path(directory) / slug
        secrets.mkdir()
        (secrets / "encryption_key").write_text(key)
        os.chown(secrets / "encryption_key", N8N_UID, N8N_UID)
        os.chmod(secrets / "encryption_key", 0o400)
        os.chmod(directory, 0o711)  # noqa: S103 (the Docker runtime mounts the directory)
        runtime.ensure_network(network, slug)
        spec = _spec(slug, network)
        runtime.create(spec, settings.image, secrets)
        try:
            yield Workload(runtime, spec, settings.image, secrets, key)
        finally:
            runtime.remove(spec.name, graceful=False)
            runtime.remove_network(network)


def _healthy(w: Workload) -> Any:
    def check() -> Any:
        state = w.runtime.state(w.spec.name)
        return state if state and state.status == "running" and state.health == "healthy" else None

    return wait_until(check, timeout_s=BOOT_S, what=f"{w.spec.name} to be healthy", interval_s=0.5)


def test_a_created_main_serves_from_the_host_with_its_limits_and_labels(w: Workload) -> None:
    state = _healthy(w)
    assert state.role == "main"
    assert state.url, state
    answer = httpx.get(f"{state.url}/healthz/readiness", timeout=10)
    assert answer.status_code == 200, answer.text
    (observed,) = w.runtime.observe(w.spec.labels[LABEL_TENANT])
    assert observed.name == w.spec.name
    assert observed.running
    assert observed.config_hash == w.spec.config_hash
    assert (observed.cpu, observed.memory_mb) == (1.0, 768)
    (stats,) = w.runtime.stats(w.spec.labels[LABEL_TENANT])
    assert stats.name == w.spec.name
    assert stats.memory_limit_bytes == 768 * MIB
    assert 0 < stats.memory_bytes < 768 * MIB


def test_its_secret_is_a_file_only_its_user_reads_and_never_in_its_environment(
    w: Workload,
) -> None:
    _healthy(w)
    code, out, err = w.runtime.exec(
        w.spec.name, ["stat", "-c", "%u %a", "/run/secrets/encryption_key"]
    )
    assert code == 0, err
    assert out.split() == ["1000", "400"]
    code, out, _ = w.runtime.exec(w.spec.name, ["cat", "/run/secrets/encryption_key"])
    assert (code, out) == (0, w.key)
    code, out, _ = w.runtime.exec(w.spec.name, ["env"])
    assert code == 0
    assert w.key not in out


def test_logs_images_and_cpus_are_known(w: Workload) -> None:
    _healthy(w)
    assert "Editor is now accessible" in w.runtime.logs(w.spec.name, tail="all")
    assert w.runtime.image_exists(w.image)
    assert not w.runtime.image_exists("rp9/n8n:0.0.0-absent")
    assert w.runtime.host_cpus() >= 1
    assert w.runtime.ping().ok


def test_stop_and_start_keep_one_main_and_it_serves_again(w: Workload) -> None:
    _healthy(w)
    w.runtime.stop(w.spec.name, timeout_s=2)
    state = w.runtime.state(w.spec.name)
    assert state is not None
    assert state.status != "running", state
    assert not w.runtime.observe(w.spec.labels[LABEL_TENANT])[0].running
    w.runtime.start(w.spec.name)
    again = _healthy(w)
    assert httpx.get(f"{again.url}/healthz", timeout=10).status_code == 200


def test_limits_change_and_the_same_limits_change_nothing(w: Workload) -> None:
    before = _healthy(w)
    w.runtime.update_limits(w.spec.name, 1.0, 768)
    assert w.runtime.state(w.spec.name) == before
    w.runtime.update_limits(w.spec.name, 0.5, 640)
    (observed,) = w.runtime.observe(w.spec.labels[LABEL_TENANT])
    assert (observed.cpu, observed.memory_mb) == (0.5, 640)
    _healthy(w)
    (stats,) = w.runtime.stats(w.spec.labels[LABEL_TENANT])
    assert stats.memory_limit_bytes == 640 * MIB


def _cpu(w: Workload) -> tuple[float, int]:
    """The main's CPU limit and weight as its container's cgroup has them (cgroup v1)."""
    code, out, err = w.runtime.exec(
        w.spec.name, ["cat", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.shares"]
    )
    assert code == 0, err
    quota, shares = out.split()
    return int(quota) / 100_000, int(shares)


def test_a_startup_boost_changes_the_running_main_in_place_and_its_own_limits_end_it(
    w: Workload,
) -> None:
    before = _healthy(w)
    (observed,) = w.runtime.observe(w.spec.labels[LABEL_TENANT])
    w.runtime.update_limits(w.spec.name, 2.0, observed.memory_mb, cpu_shares=2, temporary=True)
    assert _cpu(w) == (2.0, 2)
    w.runtime.update_limits(w.spec.name, observed.cpu, observed.memory_mb, cpu_shares=1024)
    assert _cpu(w) == (observed.cpu, 1024)
    # The same container all along (no restart), and the limits it is known by are its own.
    assert w.runtime.state(w.spec.name) == before
    assert w.runtime.observe(w.spec.labels[LABEL_TENANT]) == [observed]


def test_a_network_is_made_once_and_a_removed_main_is_gone(
    runtime: Runtime, settings: Settings
) -> None:
    slug = f"ct{uuid.uuid4().hex[:8]}"
    network = f"rp9-{slug}"
    runtime.ensure_network(network, slug)
    runtime.ensure_network(network, slug)
    with tempfile.TemporaryDirectory(prefix="rp9-contract-") as directory:
        secrets = Path(directory)
        (secrets / "encryption_key").write_text(uuid.uuid4().hex)
        spec = _spec(slug, network)
        runtime.create(spec, settings.image, secrets)
        assert runtime.state(spec.name) is not None
        runtime.remove(spec.name, graceful=False)
    assert runtime.state(spec.name) is None
    assert runtime.observe(slug) == []
    runtime.remove_network(network)
    runtime.remove_network(network)


@pytest.fixture(name="w")
def _w(workload: Workload) -> Workload:
    return workload
