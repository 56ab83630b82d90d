"""A shared tenant promoted to a dedicated database through the API while a client sends it 20
webhooks a second, and returned to the shared tier through the API: on the real stack (Postgres,
Redis, Docker, n8n, Traefik, the API's holder, Dagster)."""

import datetime as dt
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from rp9_pipelines import launches
from rp9_pipelines.api.dagster_client import DagsterClient
from rp9_pipelines.catalog.tables import promotions
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.resources.docker_runtime import DockerRuntimeResource
from rp9_pipelines.resources.tenant_db import TenantDatabaseResource
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.conftest import Served
from rp9_pipelines_tests.n8n_workflows import echo_webhook, webhook, workflow
from rp9_pipelines_tests.platform.test_recovery import decrypted_credentials
from rp9_pipelines_tests.promotion.traffic import (
    Load,
    every_minute,
    executions_by_id,
    install,
    run_under_load,
    schedule_minutes,
)
from rp9_pipelines_tests.tenants.conftest import TenantN8n, unique_slug
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack


@dataclass
class Promoted:
    tenant: dict[str, Any]
    n8n: TenantN8n
    path: str
    schedule_id: str
    load: Load
    # A webhook its workflow answers, 1/s meanwhile: the backlog the hold releases of it is
    # answered only once the dedicated workers run.
    echoed: Load
    promotion: dict[str, Any]


@pytest.fixture(scope="module")
def promoted(api: Api, settings: Settings, vault: VaultResource) -> Iterator[Promoted]:
    slug = unique_slug("pr")
    tenant = api.create_tenant(
        slug=slug, name="Promoted Co", plan="pro", custom_domain=f"{slug}.customer.test"
    )
    # A promotion that fails leaves no tenant running for the rest of the session.
    try:
        n8n = TenantN8n(settings, vault, tenant)
        path = f"promo-{uuid.uuid4().hex[:8]}"
        install(n8n, workflow(f"receive {path}", [webhook(path, "onReceived")]))
        schedule_id = install(n8n, every_minute())
        credential = n8n.http.post(
            "/api/v1/credentials",
            json={
                "name": "promo",
                "type": "httpHeaderAuth",
                "data": {"name": "X-Key", "value": "s"},
            },
        )
        assert credential.status_code == 200, credential.text
        load = Load(n8n, path, retry=True)
        echoed = Load(n8n, f"echo-{uuid.uuid4().hex[:8]}", rate=1.0)
        install(n8n, echo_webhook(echoed.path))

        def promote() -> dict[str, Any]:
            asked = api.post(f"/tenants/{slug}/promote", **{"Idempotency-Key": str(uuid.uuid4())})
            assert asked.status_code == 202, asked.text
            run = api.wait_run(asked.json()["run_id"], timeout_s=600)
            found: dict[str, Any] = api.get(f"/tenants/{slug}/promotions").json()["promotions"][0]
            assert run["status"] == "SUCCESS", (run, found["error"], found["phase"])
            return found

        echoing = threading.Thread(target=echoed.run, daemon=True)
        echoing.start()
        try:
            promotion = run_under_load(load, promote)
        finally:
            echoed.stop.set()
            echoing.join(timeout=90)
        yield Promoted(tenant, n8n, path, schedule_id, load, echoed, promotion)
    finally:
        gone = api.request("DELETE", f"/tenants/{slug}?purge=true")
        assert gone.status_code == 202, gone.text
        assert api.wait_run(gone.json()["run_id"])["status"] == "SUCCESS"


def test_a_promotion_under_20_webhooks_a_second_fails_no_request_and_runs_each_once(
    api: Api,
    settings: Settings,
    vault: VaultResource,
    runtime: DockerRuntimeResource,
    promoted: Promoted,
) -> None:
    slug, load = promoted.tenant["slug"], promoted.load
    tenant = api.get(f"/tenants/{slug}").json()
    assert (tenant["tier"], tenant["status"]) == ("dedicated", "active"), tenant
    promotion = promoted.promotion
    assert (promotion["status"], promotion["phase"]) == ("succeeded", "done"), promotion
    figures = promotion["figures"]
    assert figures["verified_rows"]["workflow_entity"] >= 2, figures
    assert {"hold_s", "catch_up_s"} <= figures.keys(), figures
    # Every request answered 2xx at its first attempt (none shed by the edge, none retried),
    # none lost, none run twice; those sent while the tenant was held too.
    assert len(load.answers) >= 40
    why = "\n".join([load.report(), str(promotion["steps"])])
    assert not load.failures(), why
    held = load.held(promotion["steps"])
    assert held, why
    assert all(200 <= status < 300 for status in held), why
    assert not load.retried, why
    dedicated = TenantNames(slug, "dedicated")
    ran = executions_by_id(settings, dedicated, load.token)
    assert set(ran) == set(load.answers), (len(ran), len(load.answers))
    assert max(ran.values()) == 1, [i for i, n in ran.items() if n > 1][:5]
    echoed = promoted.echoed
    assert len(echoed.answers) >= 2
    assert not echoed.failures(), echoed.report()
    assert executions_by_id(settings, dedicated, echoed.token) == Counter(set(echoed.answers))
    # The schedule never fired twice in a minute.
    # ...and fires on the dedicated side after the switch (every minute, at a second of its own).
    since = dt.datetime.fromisoformat(promotion["switched_at"]).replace(second=0, microsecond=0)

    def fired_since_the_switch() -> Counter[str] | None:
        found = schedule_minutes(settings, dedicated, promoted.schedule_id)
        return found if any(dt.datetime.fromisoformat(m) >= since for m in found) else None

    minutes = wait_until(
        fired_since_the_switch, timeout_s=150, what="the schedule to fire on the dedicated side"
    )
    assert max(minutes.values()) == 1, minutes
    # Same key, same URLs, same API key: credentials decrypt, the API answers, both hosts serve.
    counts = decrypted_credentials(runtime, slug)
    assert counts["decrypted"] == counts["listed"] >= 1, counts
    fresh = TenantN8n(settings, vault, tenant)
    assert fresh.http.get("/api/v1/workflows", params={"limit": 1}).status_code == 200
    again = api.post(f"/tenants/{slug}/promote")
    assert again.status_code == 409, again.text
    assert again.json()["error"]["code"] == "already_dedicated"
    custom = httpx.get(
        f"{settings.traefik_url}/healthz/readiness", headers={"Host": f"{slug}.customer.test"}
    )
    assert custom.status_code == 200


def test_a_promoted_tenant_goes_back_to_its_shared_schema_and_then_it_is_removed(
    api: Api,
    settings: Settings,
    vault: VaultResource,
    runtime: DockerRuntimeResource,
    dagster_webserver: Served,
    tenant_db: TenantDatabaseResource,
    promoted: Promoted,
) -> None:
    slug = promoted.tenant["slug"]
    # An execution on the dedicated side, which the rollback leaves behind.
    assert promoted.n8n.call(promoted.path, {"id": "after-switch"}).status_code == 200
    load = Load(promoted.n8n, promoted.path, retry=True)

    def roll_back() -> dict[str, Any]:
        asked = api.post(
            f"/tenants/{slug}/promotion/rollback", **{"Idempotency-Key": str(uuid.uuid4())}
        )
        assert asked.status_code == 202, asked.text
        run = api.wait_run(asked.json()["run_id"], timeout_s=600)
        assert run["status"] == "SUCCESS", run
        found: dict[str, Any] = api.get(f"/tenants/{slug}/promotions").json()["promotions"][0]
        return found

    started = time.monotonic()
    back = run_under_load(load, roll_back)
    elapsed = time.monotonic() - started
    tenant = api.get(f"/tenants/{slug}").json()
    assert (tenant["tier"], tenant["status"]) == ("shared", "active"), tenant
    assert back["status"] == "rolled_back", back
    assert back["figures"]["executions_left_behind"] >= 1, back["figures"]
    why = "\n".join([load.report(), str(back["steps"])])
    assert not load.failures(), why
    assert not load.retried, why
    # Each request ran once: on the dedicated side until its freeze (left behind there), on
    # the shared side after.
    ran = executions_by_id(settings, TenantNames(slug, "shared"), load.token)
    ran += executions_by_id(settings, TenantNames(slug, "dedicated"), load.token)
    assert set(ran) == set(load.answers)
    assert max(ran.values()) == 1
    counts = decrypted_credentials(runtime, slug)
    assert counts["decrypted"] == counts["listed"] >= 1, counts
    fresh = TenantN8n(settings, vault, tenant)
    assert fresh.http.get("/api/v1/workflows", params={"limit": 1}).status_code == 200
    assert elapsed < 600

    # Promoted again, then the window closes: the shared schema and role go.
    again = api.post(f"/tenants/{slug}/promote", **{"Idempotency-Key": str(uuid.uuid4())})
    assert again.status_code == 202, again.text
    assert api.wait_run(again.json()["run_id"], timeout_s=600)["status"] == "SUCCESS"
    promotion_id = again.json()["promotion_id"]
    engine = sa.create_engine(sqlalchemy_url(settings.database_url), poolclass=sa.NullPool)
    with engine.begin() as connection:
        connection.execute(
            sa.update(promotions)
            .where(promotions.c.id == promotion_id)
            .values(rollback_until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))
        )
    engine.dispose()
    dagster = DagsterClient(f"{dagster_webserver.url}/graphql")
    run_id = dagster.launch(
        launches.promotion("remove_shared_schema", promotion_id, tenant["id"], slug, "test")
    )
    assert api.wait_run(run_id)["status"] == "SUCCESS"
    assert not tenant_db.exists(TenantNames(slug, "shared"))
    listed = api.get(f"/tenants/{slug}/promotions").json()["promotions"][0]
    assert listed["shared_removed_at"] is not None
    refused = api.post(f"/tenants/{slug}/promotion/rollback")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "rollback_window_over", refused.text
    assert promoted.n8n.http.get("/healthz/readiness").status_code == 200
