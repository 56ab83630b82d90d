"""The Swarm runtime's decisions, without a swarm: what a service's tasks mean to the runtime's
callers, where a tenant may run, and its secrets' names."""

from typing import Any

import pytest

from rp9_pipelines.resources.docker_runtime import DockerRuntimeResource
from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines.resources.swarm_runtime import (
    TENANT_NODES,
    SwarmRuntimeResource,
    newest_task,
    placement,
    published_port,
    secret_name,
    task_state,
)
from rp9_pipelines.resources.tenant_runtime import runtime_resource


def _task(index: int, state: str, desired: str = "running", **status: Any) -> dict[str, Any]:
    return {
        "Version": {"Index": index},
        "DesiredState": desired,
        "Status": {"State": state, **status},
    }


@pytest.mark.parametrize(
    ("state", "desired", "replicas", "expected"),
    [
        ("running", "running", 1, ("running", "healthy")),
        ("starting", "running", 1, ("running", "starting")),
        ("preparing", "running", 1, ("running", "starting")),
        # Not on a node yet: pending also while no node fits its constraints.
        ("pending", "running", 1, ("created", "starting")),
        ("rejected", "running", 1, ("dead", None)),
        # The service wants a task and none wants to run: Swarm replaces it (an update stops
        # the old one first; a failed one is restarted).
        ("running", "shutdown", 1, ("restarting", None)),
        ("failed", "shutdown", 1, ("restarting", None)),
        # Stopped by the runtime (0 replicas): the task is being or was shut down.
        ("running", "shutdown", 0, ("exited", None)),
        ("shutdown", "shutdown", 0, ("exited", None)),
        ("complete", "shutdown", 0, ("exited", None)),
        ("failed", "shutdown", 0, ("dead", None)),
    ],
)
def test_a_tasks_state_is_the_docker_runtimes_status_and_health(
    state: str, desired: str, replicas: int, expected: tuple[str, str | None]
) -> None:
    assert task_state(_task(1, state, desired), replicas=replicas) == expected


def test_a_service_without_tasks_is_stopped_at_zero_replicas_and_created_at_one() -> None:
    assert task_state(None, replicas=0) == ("exited", None)
    assert task_state(None, replicas=1) == ("created", "starting")


def test_the_newest_task_swarm_wants_running_tells_the_state() -> None:
    old = _task(3, "failed", "shutdown")
    new = _task(7, "starting")
    stopping = _task(9, "running", "shutdown")
    assert newest_task([new, old]) is new
    assert newest_task([old, stopping, new]) is new
    assert newest_task([old, stopping]) is stopping
    assert newest_task([]) is None


def test_the_published_port_is_n8ns() -> None:
    ports = [
        {"TargetPort": 9000, "PublishedPort": 30001},
        {"TargetPort": 5678, "PublishedPort": 30002},
    ]
    assert published_port(_task(1, "running", PortStatus={"Ports": ports})) == 30002
    assert published_port(_task(1, "starting", PortStatus={})) is None
    assert published_port(_task(1, "starting")) is None


def test_a_region_constrains_a_tenant_to_its_nodes() -> None:
    assert placement(None) == [TENANT_NODES]
    assert placement("eu-1") == [TENANT_NODES, "node.labels.region==eu-1"]


def test_a_secrets_name_changes_with_its_value_and_tenant_and_names_no_value() -> None:
    name = secret_name("acme", "db_password", b"hunter2")
    assert name == secret_name("acme", "db_password", b"hunter2")
    assert name != secret_name("acme", "db_password", b"hunter3")
    assert name != secret_name("acme2", "db_password", b"hunter2")
    assert name != secret_name("acme", "redis_password", b"hunter2")
    assert len(name) <= 64
    assert "hunter2" not in name


def test_a_regions_store_is_the_same_store_with_the_regions_bucket() -> None:
    s3 = S3Resource(
        endpoint_url="http://127.0.0.1:9",
        bucket="rp9-backups",
        access_key_id="a",
        secret_access_key="b",
        region_buckets="us-1=rp9-us",
    )
    us = s3.for_region("us-1")
    assert (us.bucket, us.endpoint_url, us.secret_access_key) == ("rp9-us", s3.endpoint_url, "b")
    assert s3.for_region("eu-1") is s3  # a region with no bucket of its own: the default one


def test_the_swarm_runtime_is_chosen_by_configuration_and_keeps_a_local_engine() -> None:
    docker = runtime_resource("docker")
    assert type(docker) is DockerRuntimeResource
    assert docker.route_provider == "docker"
    swarm = SwarmRuntimeResource(
        docker_host="unix:///var/run/docker.sock",
        manager_host="unix:///m1.sock",
        node_engine="unix:///{node}.sock",
        services_ip="10.88.0.1",
    )
    assert swarm.route_provider == "file"
    local = swarm.local()
    assert type(local) is DockerRuntimeResource
    assert local.docker_host == "unix:///var/run/docker.sock"
    with pytest.raises(ValueError, match="docker or swarm, not 'k8s'"):
        runtime_resource("k8s")
