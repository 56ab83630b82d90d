"""Pure parts of enforcement's effects: the concurrency quota as n8n gets it, tenant routers
above the fallback, the fallback's Traefik configuration and its answers."""

import datetime as dt

import pytest

from rp9_pipelines.domain.autoscaling import worker_concurrency
from rp9_pipelines.domain.enforcement import concurrency_drift, concurrency_of
from rp9_pipelines.domain.routing import (
    FALLBACK_ENTRYPOINT,
    FALLBACK_PATH,
    FALLBACK_ROUTER_PRIORITY,
    TENANT_ROUTER_PRIORITY,
    fallback_config,
    unavailable,
)
from rp9_pipelines.domain.stack import TenantStack, desired_containers
from rp9_pipelines.domain.tenants import TenantNames, effective_limits
from rp9_pipelines_tests.fixtures import STACK_CONFIG as CONFIG

PLAN: dict[str, object] = {
    "executions_per_month": 10_000,
    "concurrency": 5,
    "cpu": 1.0,
    "memory_mb": 1024,
    "min_workers": 1,
    "max_workers": 1,
    "overage_allowed": False,
}


def stack_for(overrides: dict[str, dict[str, object]], workers: int) -> TenantStack:
    """As lifecycle.stack.desired builds it from the merged quotas."""
    limits = effective_limits(overrides)
    return TenantStack(
        names=TenantNames("acme", "shared"),
        owner_email="owner@acme.localhost",
        custom_domain=None,
        workers=workers,
        cpu=limits.cpu,
        memory_mb=limits.memory_mb,
        worker_concurrency=worker_concurrency(limits.concurrency),
        concurrency=limits.concurrency,
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"plan": PLAN}, 5),
        ({"plan": PLAN, "stripe": {"concurrency": 3}}, 3),
        ({"plan": PLAN, "stripe": {"concurrency": 3}, "manual": {"concurrency": 2}}, 2),
        ({"plan": PLAN, "stripe": {"concurrency": None}}, 5),
        # One worker runs at most n8n's default 10 jobs; more load scales out to workers.
        ({"plan": PLAN, "manual": {"concurrency": 50}}, 10),
    ],
)
def test_the_concurrency_quota_of_any_source_is_each_workers_concurrency(
    overrides: dict[str, dict[str, object]], expected: int
) -> None:
    _main, *workers = desired_containers(stack_for(overrides, workers=2), CONFIG)
    assert [w.command for w in workers] == [["worker", f"--concurrency={expected}"]] * 2


def test_main_gets_n8ns_production_limit_only_when_it_runs_executions_itself() -> None:
    overrides: dict[str, dict[str, object]] = {"plan": PLAN, "stripe": {"concurrency": 3}}
    (alone,) = desired_containers(stack_for(overrides, workers=0), CONFIG)
    assert alone.env["N8N_CONCURRENCY_PRODUCTION_LIMIT"] == "3"
    main, _worker = desired_containers(stack_for(overrides, workers=1), CONFIG)
    assert "N8N_CONCURRENCY_PRODUCTION_LIMIT" not in main.env


def test_a_changed_concurrency_quota_recreates_the_workers() -> None:
    # The config hash covers the command: converging after a quota change replaces workers.
    before = desired_containers(stack_for({"plan": PLAN}, workers=1), CONFIG)
    after = desired_containers(
        stack_for({"plan": PLAN, "stripe": {"concurrency": 2}}, workers=1), CONFIG
    )
    assert before[0].config_hash == after[0].config_hash
    assert before[1].config_hash != after[1].config_hash


def test_tenant_routers_outrank_the_fallback() -> None:
    main, *_ = desired_containers(stack_for({"plan": PLAN}, workers=1), CONFIG)
    assert main.labels["traefik.http.routers.t-acme.priority"] == str(TENANT_ROUTER_PRIORITY)
    assert TENANT_ROUTER_PRIORITY > FALLBACK_ROUTER_PRIORITY


def test_the_fallback_route_catches_every_host_and_reaches_only_the_fallback_path() -> None:
    config = fallback_config(name="rp9-fallback-x", url="http://127.0.0.1:8080", entrypoint="web")
    router = config["http"]["routers"]["rp9-fallback-x"]
    assert router["rule"] == "PathPrefix(`/`)"
    assert router["entryPoints"] == ["web", FALLBACK_ENTRYPOINT]
    assert router["priority"] == FALLBACK_ROUTER_PRIORITY
    assert "tls" not in router
    middleware = config["http"]["middlewares"][router["middlewares"][0]]
    assert middleware == {"replacePath": {"path": FALLBACK_PATH}}
    servers = config["http"]["services"][router["service"]]["loadBalancer"]["servers"]
    assert servers == [{"url": "http://127.0.0.1:8080"}]
    secure = fallback_config(name="f", url="http://api:8080", entrypoint="websecure", tls=True)
    assert secure["http"]["routers"]["f"]["tls"] == {}


NOW = dt.datetime(2026, 11, 30, 23, 0, tzinfo=dt.UTC)
NEXT = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("slug", "status", "reason", "expected"),
    [
        (None, None, None, (404, "tenant_not_found", None)),
        ("acme", "deleted", None, (404, "tenant_not_found", None)),
        ("acme", "suspended", "enforcement", (503, "tenant_suspended", 3600)),
        ("acme", "suspended", "operator", (503, "tenant_suspended", 3600)),
        ("acme", "suspended", None, (503, "tenant_suspended", 3600)),
        ("acme", "provisioning", None, (503, "tenant_unavailable", 30)),
        ("acme", "upgrading", None, (503, "tenant_unavailable", 30)),
        ("acme", "active", None, (503, "tenant_unavailable", 10)),
    ],
)
def test_fallback_answers(
    slug: str | None, status: str | None, reason: str | None, expected: tuple[int, str, int]
) -> None:
    answer = unavailable(slug, status, reason, NOW, NEXT)
    assert (answer.status_code, answer.code, answer.retry_after_s) == expected


@pytest.mark.parametrize(
    ("slug", "status", "upstream", "expected"),
    [
        ("acme", "active", 502, (503, "tenant_unavailable", 5)),
        ("acme", "active", 504, (503, "tenant_unavailable", 5)),
        ("acme", "active", 429, (503, "tenant_busy", 2)),
        (None, None, 502, (503, "tenant_unavailable", 5)),
        (None, None, 0, (503, "tenant_unavailable", 5)),
        ("acme", "deleting", 502, (503, "tenant_unavailable", 5)),
        ("acme", "suspended", 502, (503, "tenant_suspended", 3600)),
        ("acme", "upgrading", 429, (503, "tenant_busy", 2)),
        ("acme", "promoting", 502, (503, "tenant_unavailable", 5)),
    ],
)
def test_a_routed_tenant_whose_n8n_could_not_answer_is_never_missing(
    slug: str | None, status: str | None, upstream: int, expected: tuple[int, str, int]
) -> None:
    """Traefik's 502 for a main that is restarting, its 429 beyond the in-flight limit: a
    webhook sender must retry, not give up."""
    answer = unavailable(slug, status, None, NOW, NEXT, upstream=upstream)
    assert (answer.status_code, answer.code, answer.retry_after_s) == expected


def test_an_enforcement_suspension_retries_after_the_period_ends() -> None:
    early = dt.datetime(2026, 11, 10, tzinfo=dt.UTC)
    answer = unavailable("acme", "suspended", "enforcement", early, NEXT)
    assert answer.retry_after_s == int((NEXT - early).total_seconds())
    assert "execution limit" in answer.message


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("tini -- /docker-entrypoint.sh worker --concurrency=5", 5),
        ("n8n worker --concurrency 12", 12),
        ("tini -- /docker-entrypoint.sh", None),
    ],
)
def test_concurrency_is_read_from_a_workers_command(command: str, expected: int | None) -> None:
    assert concurrency_of(command) == expected


def test_concurrency_drift_names_what_differs_from_the_quota() -> None:
    workers = ["n8n worker --concurrency=5", "n8n worker --concurrency=3", "n8n start"]
    assert concurrency_drift(3, workers) == [5]
    assert concurrency_drift(5, workers[:1]) == []
    assert concurrency_drift(5, []) == []
