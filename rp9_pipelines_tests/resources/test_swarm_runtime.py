"""The Swarm runtime's decisions, without a swarm: what a service's tasks mean to the runtime's
callers, where a tenant may run, and its secrets' names."""

from typing import Any

import pytest

from rp9_pipelines.resources.swarm_runtime import (
    TENANT_NODES,
    newest_task,
    placement,
    published_port,
    secret_name,
    task_state,
)


def _task(index: int, state: str, desired: str = "running", **status: Any) -> dict[str, Any]:
    return {
        "Version": {"Index": index},
        "DesiredState": desired,
        "Status": {"State": state, **status},
    }


@pytest.mark.parametrize(
    ("state", "desired", "expected"),
    [
        ("running", "running", ("running", "healthy")),
        ("starting", "running", ("running", "starting")),
        ("preparing", "running", ("running", "starting")),
        # Not on a node yet: pending also while no node fits its constraints.
        ("pending", "running", ("created", "starting")),
        ("failed", "shutdown", ("dead", None)),
        ("rejected", "running", ("dead", None)),
        # Stopped by the runtime (0 replicas): the task is being or was shut down.
        ("running", "shutdown", ("exited", None)),
        ("shutdown", "shutdown", ("exited", None)),
        ("complete", "shutdown", ("exited", None)),
    ],
)
def test_a_tasks_state_is_the_docker_runtimes_status_and_health(
    state: str, desired: str, expected: tuple[str, str | None]
) -> None:
    assert task_state(_task(1, state, desired), replicas=1) == expected


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
