import dataclasses
import json

import pytest

from rp9_pipelines.domain import stack as stack_module
from rp9_pipelines.domain.stack import (
    FILES_DIR,
    NODE_POLICIES,
    ContainerSpec,
    Observed,
    TenantStack,
    desired_containers,
    hardening_env,
    node_policy,
    plan_reconcile,
    public_url,
    startup_cpu,
)
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines_tests.fixtures import STACK_CONFIG


def stack(workers: int = 2, **changes: object) -> TenantStack:
    fields: dict[str, object] = {
        "names": TenantNames("acme", "shared"),
        "owner_email": "owner@acme.rp9.io",
        "custom_domain": "n8n.acme.com",
        "workers": workers,
        "cpu": 2.0,
        "memory_mb": 2048,
        "worker_concurrency": 10,
    }
    return TenantStack(**(fields | changes))  # type: ignore[arg-type]


def observed(spec: ContainerSpec, **changes: object) -> Observed:
    fields: dict[str, object] = {
        "name": spec.name,
        "role": spec.role,
        "config_hash": spec.config_hash,
        "running": True,
        "cpu": spec.cpu,
        "memory_mb": spec.memory_mb,
    }
    return Observed(**(fields | changes))  # type: ignore[arg-type]


def test_main_is_routed_and_workers_are_not() -> None:
    main, *workers = desired_containers(stack(), STACK_CONFIG)
    assert main.role == "main"
    assert [w.role for w in workers] == ["worker", "worker"]
    rule = main.labels["traefik.http.routers.t-acme.rule"]
    assert rule == "Host(`acme.rp9.io`) || Host(`n8n.acme.com`)"
    assert main.labels["traefik.http.routers.t-acme.tls.certresolver"] == "letsencrypt"
    assert not any(k.startswith("traefik.") for w in workers for k in w.labels)
    assert [w.command for w in workers] == [["worker", "--concurrency=10"]] * 2
    assert main.env["N8N_EDITOR_BASE_URL"] == "https://acme.rp9.io/"
    assert main.env["N8N_SECURE_COOKIE"] == "true"


def test_every_container_is_in_queue_mode_with_the_tenant_prefixes_and_no_secret_values() -> None:
    for spec in desired_containers(stack(), STACK_CONFIG):
        assert spec.env["EXECUTIONS_MODE"] == "queue"
        assert spec.env["QUEUE_BULL_PREFIX"] == "rp9:acme:bull"
        assert spec.env["N8N_REDIS_KEY_PREFIX"] == "rp9:acme:n8n"
        assert spec.env["DB_POSTGRESDB_SCHEMA"] == "t_acme"
        for secret in ("N8N_ENCRYPTION_KEY", "DB_POSTGRESDB_PASSWORD", "QUEUE_BULL_REDIS_PASSWORD"):
            assert secret not in spec.env
            assert spec.env[f"{secret}_FILE"].startswith("/run/secrets/")
        assert spec.labels["io.rp9.tenant"] == "acme"


def test_development_urls_keep_the_port_and_plain_http() -> None:
    config = dataclasses.replace(
        STACK_CONFIG, public_scheme="http", public_port=8088, cert_resolver=""
    )
    main = desired_containers(stack(), config)[0]
    assert public_url(stack(), config) == "http://acme.rp9.io:8088/"
    assert main.env["N8N_SECURE_COOKIE"] == "false"
    assert not any(".tls" in k for k in main.labels)


def test_nothing_to_do_when_everything_matches() -> None:
    desired = desired_containers(stack(), STACK_CONFIG)
    assert not plan_reconcile(desired, [observed(s) for s in desired]).changes


def test_a_rerun_after_a_crash_creates_only_what_is_missing() -> None:
    desired = desired_containers(stack(), STACK_CONFIG)
    plan = plan_reconcile(desired, [observed(desired[0])])
    assert [s.name for s in plan.create] == [s.name for s in desired[1:]]
    assert not plan.recreate
    assert not plan.remove


def test_scale_down_removes_the_highest_workers() -> None:
    three = desired_containers(stack(workers=3), STACK_CONFIG)
    plan = plan_reconcile(
        desired_containers(stack(workers=1), STACK_CONFIG), [observed(s) for s in three]
    )
    assert plan.remove == ["rp9-acme-blue-worker-2", "rp9-acme-blue-worker-3"]
    assert not plan.create


def test_limits_change_in_place_and_configuration_changes_recreate() -> None:
    current = desired_containers(stack(), STACK_CONFIG)
    bigger = desired_containers(stack(cpu=4.0, memory_mb=4096), STACK_CONFIG)
    plan = plan_reconcile(bigger, [observed(s) for s in current])
    assert len(plan.update_limits) == 3
    assert not plan.recreate

    other_domain = desired_containers(stack(custom_domain="n8n.other.com"), STACK_CONFIG)
    plan = plan_reconcile(other_domain, [observed(s) for s in current])
    assert [s.role for s in plan.recreate] == ["main"]


def test_stopped_containers_are_started() -> None:
    desired = desired_containers(stack(workers=0), STACK_CONFIG)
    plan = plan_reconcile(desired, [observed(desired[0], running=False)])
    assert [s.name for s in plan.start] == ["rp9-acme-blue-main"]


@pytest.mark.parametrize("workers", [0, 1, 5])
def test_container_names_are_unique_and_hostnames_follow(workers: int) -> None:
    specs = desired_containers(stack(workers=workers), STACK_CONFIG)
    assert len({s.name for s in specs}) == workers + 1


@pytest.mark.parametrize(
    ("steady", "boost", "host_cpus", "expected"),
    [
        (1.0, 2.0, 2, 2.0),  # a 1-CPU tenant starts on two
        (1.0, 4.0, 2, 2.0),  # never above what the host has
        (1.0, 0.0, 8, 1.0),  # boost off
        (4.0, 2.0, 8, 4.0),  # never below the plan's own limit
        (0.5, 1.0, 1, 1.0),
    ],
)
def test_startup_cpu_boost(steady: float, boost: float, host_cpus: int, expected: float) -> None:
    assert startup_cpu(steady, boost, host_cpus) == expected


def test_every_container_runs_n8n_hardened_with_pruning_pinned() -> None:
    for spec in desired_containers(stack(plan="pro"), STACK_CONFIG):
        assert spec.env["N8N_BLOCK_ENV_ACCESS_IN_NODE"] == "true"
        assert spec.env["N8N_RESTRICT_FILE_ACCESS_TO"] == FILES_DIR
        assert FILES_DIR.startswith("/home/node/")
        assert spec.env["N8N_BLOCK_FILE_ACCESS_TO_N8N_FILES"] == "true"
        assert spec.env["EXECUTIONS_DATA_PRUNE"] == "true"
        assert spec.env["EXECUTIONS_DATA_MAX_AGE"] == "336"
        assert spec.env["EXECUTIONS_DATA_PRUNE_MAX_COUNT"] == "10000"
        assert spec.env["N8N_COMMUNITY_PACKAGES_ENABLED"] == "false"
        assert json.loads(spec.env["NODES_EXCLUDE"]) == [
            "n8n-nodes-base.executeCommand",
            "n8n-nodes-base.localFileTrigger",
            "n8n-nodes-base.git",
        ]


def test_no_container_calls_a_slow_database_not_ready_before_30_seconds() -> None:
    # n8n's default is 5 s, which its own pool's queue passes under 20 webhooks a second on two
    # busy cores: every route then answered 503 "Database is not ready!" (a CI run, stop 31).
    for spec in desired_containers(stack(plan="starter", concurrency=5), STACK_CONFIG):
        assert int(spec.env["N8N_DB_PING_TIMEOUT"]) >= 30_000, spec.role


@pytest.mark.parametrize("plan", [*NODE_POLICIES, "", "gold", "Starter"])
def test_every_plan_excludes_n8n_defaults_as_a_json_array(plan: str) -> None:
    """NODES_EXCLUDE replaces n8n's own list; n8n reads anything but a JSON array of strings as
    an empty list, which would exclude nothing."""
    excluded = json.loads(hardening_env(plan)["NODES_EXCLUDE"])
    assert isinstance(excluded, list)
    assert all(isinstance(node, str) for node in excluded)
    assert {"n8n-nodes-base.executeCommand", "n8n-nodes-base.localFileTrigger"} <= set(excluded)


@pytest.mark.parametrize(
    ("plan", "community", "git"),
    [
        ("starter", "false", False),
        ("pro", "false", False),
        ("business", "true", True),
        ("enterprise", "true", True),
        ("", "false", False),  # no plan known: the strictest
        ("platinum", "false", False),
    ],
)
def test_community_packages_and_the_git_node_follow_the_plan(
    plan: str, community: str, git: bool
) -> None:
    env = hardening_env(plan)
    assert env["N8N_COMMUNITY_PACKAGES_ENABLED"] == community
    assert ("n8n-nodes-base.git" not in json.loads(env["NODES_EXCLUDE"])) is git
    assert node_policy(plan).community_packages is (community == "true")


def test_a_plan_change_or_a_host_setting_change_recreates_the_containers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    current = desired_containers(stack(plan="pro"), STACK_CONFIG)
    upgraded = desired_containers(stack(plan="business"), STACK_CONFIG)
    plan = plan_reconcile(upgraded, [observed(s) for s in current])
    assert len(plan.recreate) == len(current)

    hashes = [s.config_hash for s in current]
    monkeypatch.setattr(stack_module, "LOG_OPTIONS", {"max-size": "1m", "max-file": "3"})
    assert [s.config_hash for s in current] != hashes
