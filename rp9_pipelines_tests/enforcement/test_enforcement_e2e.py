"""Enforcement end to end on real components: a provisioned n8n runs executions through
Traefik until its quota; `POST /enforcement/run` → Dagster → warn at 80 % (delivered to a
real webhook receiver), suspension at 100 % (containers stopped, the route answers the
suspended response), resumption after a plan upgrade with the data intact."""

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import docker
import httpx
import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog import tenants as catalog
from rp9_pipelines.catalog.tables import enforcement_events, tenants
from rp9_pipelines.definitions import defs
from rp9_pipelines.domain.enforcement import period_of
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.enforcement.receiver import Receiver, receiving
from rp9_pipelines_tests.tenants.conftest import TenantN8n, unique_slug
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack

QUOTA = 5


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[sa.Engine]:
    made = sa.create_engine(sqlalchemy_url(settings.database_url))
    yield made
    made.dispose()


@pytest.fixture(scope="module")
def webhook(enforcement_webhook_port: int) -> Iterator[Receiver]:
    """Listens where the session's Dagster sends enforcement events."""
    with receiving(enforcement_webhook_port) as receiver:
        yield receiver


@pytest.fixture(scope="module")
def tenant(api: Api, webhook: Receiver) -> Iterator[dict[str, Any]]:
    created = api.create_tenant(slug=unique_slug("enf"), name="Quota Co", plan="starter")
    yield created
    response = api.request("DELETE", f"/tenants/{created['id']}?purge=true")
    assert response.status_code == 202, response.text
    assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"


def set_manual_quota(engine: sa.Engine, tenant_id: str, **values: object) -> None:
    with engine.begin() as connection:
        catalog.set_quota(connection, uuid.UUID(tenant_id), "manual", values)


def events(engine: sa.Engine, tenant_id: str) -> list[tuple[str, int]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(enforcement_events.c.action, enforcement_events.c.threshold)
            .where(enforcement_events.c.tenant_id == uuid.UUID(tenant_id))
            .order_by(enforcement_events.c.action, enforcement_events.c.threshold)
        )
        return [(row.action, row.threshold) for row in rows]


def enforce(api: Api, slug: str) -> dict[str, Any]:
    response = api.post("/enforcement/run", {"tenants": [slug]})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    assert body["run_id"]
    run = api.wait_run(body["run_id"])
    assert run["status"] == "SUCCESS", run
    return body


def test_quota_warns_suspends_behind_a_suspended_page_and_an_upgrade_resumes(
    settings: Settings,
    api: Api,
    vault: VaultResource,
    engine: sa.Engine,
    docker_client: docker.DockerClient,
    webhook: Receiver,
    tenant: dict[str, Any],
) -> None:
    slug, tenant_id = tenant["slug"], tenant["id"]
    n8n = TenantN8n(settings, vault, tenant)
    workflow_id = n8n.install_echo("quota")
    set_manual_quota(engine, tenant_id, executions_per_month=QUOTA)

    def run_executions(count: int) -> None:
        for i in range(count):
            answer = n8n.call("quota", {"i": i})
            assert answer.status_code == 200, answer.text

    # 4 of 5: 80 %.
    run_executions(4)
    enforce(api, slug)
    assert events(engine, tenant_id) == [("warn", 80)]
    wait_until(lambda: webhook.bodies("warn"), timeout_s=10, what="the 80 % warning delivered")
    (warning,) = webhook.bodies()
    assert (warning["tenant"]["slug"], warning["threshold"], warning["value"]) == (slug, 80, 4)

    # Enforcement again: no second event, nothing delivered twice.
    enforce(api, slug)
    assert events(engine, tenant_id) == [("warn", 80)]
    assert len(webhook.bodies()) == 1

    # 5 of 5: suspended, containers stopped, the route answers the suspended response.
    run_executions(1)
    enforce(api, slug)
    assert events(engine, tenant_id) == [("suspend", 100), ("warn", 80), ("warn", 100)]
    state = api.get(f"/tenants/{slug}").json()
    assert state["status"] == "suspended"
    containers = docker_client.containers.list(all=True, filters={"label": f"io.rp9.tenant={slug}"})
    assert len(containers) == 2
    assert all(c.status == "exited" for c in containers), [(c.name, c.status) for c in containers]

    def suspended_answer() -> httpx.Response | None:
        answer = n8n.http.get("/webhook/quota")
        return answer if answer.status_code == 503 else None

    answer = wait_until(suspended_answer, timeout_s=30, what="the suspended response via Traefik")
    assert answer.json()["error"]["code"] == "tenant_suspended"
    assert answer.json()["tenant"] == slug
    assert int(answer.headers["Retry-After"]) >= 60
    page = n8n.http.get("/", headers={"Accept": "text/html"})
    assert page.status_code == 503
    assert page.headers["content-type"].startswith("text/html")
    assert "Suspended" in page.text
    # A webhook call is refused too, and the internal API is not reachable through the host.
    assert n8n.call("quota", {}).status_code == 503
    assert n8n.http.get("/tenants").json()["error"]["code"] == "tenant_suspended"
    unknown = httpx.get(settings.traefik_url, headers={"Host": f"nobody-{slug}.localhost"})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "tenant_not_found"

    # Re-running enforcement while suspended changes nothing.
    enforce(api, slug)
    assert events(engine, tenant_id) == [("suspend", 100), ("warn", 80), ("warn", 100)]
    wait_until(lambda: len(webhook.bodies()) == 3, timeout_s=10, what="three deliveries")
    assert [b["action"] for b in webhook.bodies()] == ["warn", "warn", "suspend"]

    # Plan upgrade (a larger quota, a smaller concurrency): enforcement resumes the tenant with
    # its data, and the new concurrency reaches its worker.
    set_manual_quota(engine, tenant_id, executions_per_month=1000, concurrency=3)
    enforce(api, slug)
    assert api.get(f"/tenants/{slug}").json()["status"] == "active"
    assert ("resume", 100) in events(engine, tenant_id)
    wait_until(
        lambda: n8n.call("quota", {"back": True}).status_code == 200,
        timeout_s=60,
        what="the workflow to answer again after the resume",
    )
    listed = n8n.http.get("/api/v1/workflows").json()["data"]
    assert workflow_id in [w["id"] for w in listed]
    worker = docker_client.containers.get(f"rp9-{slug}-blue-worker-1")
    assert worker.attrs["Config"]["Cmd"][-1] == "--concurrency=3"
    wait_until(lambda: webhook.bodies("resume"), timeout_s=10, what="the resume delivered")


def test_a_changed_concurrency_quota_reaches_running_workers_and_a_new_period_resumes(
    settings: Settings,
    api: Api,
    vault: VaultResource,
    engine: sa.Engine,
    docker_client: docker.DockerClient,
    webhook: Receiver,
    tenant: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    slug, tenant_id = tenant["slug"], tenant["id"]
    n8n = TenantN8n(settings, vault, tenant)
    worker = f"rp9-{slug}-blue-worker-1"
    assert api.get(f"/tenants/{slug}").json()["status"] == "active"

    # An entitlement sets the concurrency of a running tenant (the manual override of the
    # previous test is lifted): its worker is recreated with it.
    before = docker_client.containers.get(worker)
    assert before.attrs["Config"]["Cmd"][-1] == "--concurrency=3"
    with engine.begin() as connection:
        catalog.set_quota(connection, uuid.UUID(tenant_id), "stripe", {"concurrency": 2})
    set_manual_quota(engine, tenant_id, executions_per_month=1000)
    enforce(api, slug)
    recreated = docker_client.containers.get(worker)
    assert recreated.id != before.id
    assert recreated.attrs["Config"]["Cmd"][-1] == "--concurrency=2"
    assert recreated.attrs["State"]["Health"]["Status"] == "healthy"
    # Nothing to do the next time.
    enforce(api, slug)
    assert docker_client.containers.get(worker).id == recreated.id

    # Downgraded below its usage this period: suspended again (the period's row replaced).
    set_manual_quota(engine, tenant_id, executions_per_month=QUOTA)
    enforce(api, slug)
    assert api.get(f"/tenants/{slug}").json()["status"] == "suspended"
    assert events(engine, tenant_id).count(("suspend", 100)) == 1

    # The next period resumes it (the enforcement clock moved forward, in-process).
    monkeypatch.setenv("ENFORCEMENT_WEBHOOK_URL", webhook.url)
    next_month = (dt.datetime.now(dt.UTC).replace(day=1) + dt.timedelta(days=32)).replace(day=2)
    result = (
        defs()
        .get_job_def("enforce_limits")
        .execute_in_process(
            run_config={
                "ops": {
                    "enforce_quotas": {
                        "config": {"tenants": [slug], "as_of": next_month.isoformat()}
                    }
                }
            }
        )
    )
    assert result.success
    assert result.output_for_node("enforce_quotas")["resumed"] == [slug]
    assert api.get(f"/tenants/{slug}").json()["status"] == "active"
    wait_until(
        lambda: n8n.call("quota", {"period": "next"}).status_code == 200,
        timeout_s=60,
        what="the workflow to answer in the new period",
    )
    resumed = [b for b in webhook.bodies("resume") if b["period"] == period_of(next_month)]
    assert len(resumed) == 1


def suspension(engine: sa.Engine, tenant_id: str) -> tuple[str, str | None]:
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(tenants.c.status, tenants.c.suspension_reason).where(
                tenants.c.id == uuid.UUID(tenant_id)
            )
        ).one()
    return row.status, row.suspension_reason


def test_enforcement_never_resumes_an_operators_suspension(
    api: Api, engine: sa.Engine, tenant: dict[str, Any]
) -> None:
    slug, tenant_id = tenant["slug"], tenant["id"]
    set_manual_quota(engine, tenant_id, executions_per_month=10**6)
    response = api.post(f"/tenants/{slug}/suspend")
    assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"
    assert suspension(engine, tenant_id) == ("suspended", "operator")
    enforce(api, slug)  # far below its quota, yet it stays suspended
    assert suspension(engine, tenant_id) == ("suspended", "operator")
    response = api.post(f"/tenants/{slug}/resume")
    assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"
    assert suspension(engine, tenant_id) == ("active", None)


def test_enforcement_run_refuses_bad_input_and_unauthenticated_calls(
    api: Api, tenant: dict[str, Any]
) -> None:
    unknown = api.post("/enforcement/run", {"tenants": [unique_slug("nobody")]})
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "tenant_not_found"
    bad_bodies: list[dict[str, object]] = [{"tenants": "x"}, {"tenants": []}, {"everyone": 1}]
    for bad in bad_bodies:
        response = api.post("/enforcement/run", bad)
        assert response.status_code == 422, (bad, response.text)
        assert response.json()["error"]["code"] == "invalid_request"
    anonymous = httpx.post(f"{api.base_url}/enforcement/run", json={})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "unauthorized"

    listed = api.get(f"/enforcement/events?tenant={tenant['slug']}").json()["events"]
    assert {(e["action"], e["threshold"]) for e in listed} >= {("warn", 80), ("suspend", 100)}
    assert all(e["slug"] == tenant["slug"] for e in listed)
    assert all(e["notified_at"] for e in listed if e["period"] == listed[-1]["period"])
    assert api.get("/enforcement/events?period=2026-13x").status_code == 422
    assert api.get(f"/enforcement/events?tenant={unique_slug('nobody')}").status_code == 404

    key = str(uuid.uuid4())
    first = api.post("/enforcement/run", {"tenants": [tenant["id"]]}, **{"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    assert first.json()["tenants"] == [tenant["id"]]
    again = api.post("/enforcement/run", {"tenants": [tenant["id"]]}, **{"Idempotency-Key": key})
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert api.wait_run(first.json()["run_id"])["status"] == "SUCCESS"
