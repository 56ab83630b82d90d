"""Races between requests a hostile or careless caller can send back to back: each run re-reads
the tenant under its lock and acts only when the tenant's state allows it."""

import concurrent.futures
import uuid
from typing import Any

import docker
import httpx
import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog.tables import tenants
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.security.conftest import unique_slug
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack


def launched(response: httpx.Response) -> str:
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


def containers(client: docker.DockerClient, slug: str) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"io.rp9.tenant={slug}"}))


def test_a_scale_queued_behind_a_suspend_leaves_the_tenant_stopped(
    api: Api, settings: Settings, docker_client: docker.DockerClient
) -> None:
    tenant = api.create_tenant(slug=unique_slug("race"), name="Race Co", plan="pro")
    slug = tenant["slug"]
    try:
        suspend = launched(api.post(f"/tenants/{slug}/suspend"))
        # Accepted: the tenant is still active in the catalog until the suspension runs.
        scale = launched(api.post(f"/tenants/{slug}/scale", {"workers": 2}))
        assert api.wait_run(suspend)["status"] == "SUCCESS"
        assert api.wait_run(scale)["status"] == "SUCCESS"
        state = api.get(f"/tenants/{slug}").json()
        assert state["status"] == "suspended"
        assert state["workers"] == 2  # recorded, applied when it resumes
        found = containers(docker_client, slug)
        assert found
        assert all(c.status == "exited" for c in found), [(c.name, c.status) for c in found]
        answer = wait_until(
            lambda: (
                r
                if (
                    r := httpx.get(settings.traefik_url, headers={"Host": f"{slug}.localhost"})
                ).status_code
                == 503
                else None
            ),
            timeout_s=30,
            what="the suspended answer",
        )
        assert answer.json()["error"]["code"] == "tenant_suspended"
    finally:
        assert (
            api.wait_run(launched(api.request("DELETE", f"/tenants/{slug}?purge=true")))["status"]
            == "SUCCESS"
        )


def test_a_provision_queued_behind_a_delete_does_not_bring_the_tenant_back(
    api: Api, docker_client: docker.DockerClient
) -> None:
    tenant = api.create_tenant(slug=unique_slug("race"), name="Race Co", plan="starter")
    slug = tenant["slug"]
    delete = launched(api.request("DELETE", f"/tenants/{slug}?purge=true"))
    provision = launched(api.post(f"/tenants/{slug}/provision"))
    assert api.wait_run(delete)["status"] == "SUCCESS"
    refused = api.wait_run(provision)
    assert refused["status"] == "FAILURE"
    state = api.get(f"/tenants/{slug}").json()
    assert state["status"] == "deleted"
    assert "refused" not in (state["last_error"] or "")  # a refusal changes nothing
    assert containers(docker_client, slug) == []


def test_four_concurrent_creates_of_one_slug_make_one_tenant_and_one_run(
    api: Api, settings: Settings
) -> None:
    slug = unique_slug("race")
    body = {"slug": slug, "name": "Race Co", "plan": "starter"}

    def create(_: int) -> httpx.Response:
        return api.post("/tenants", body, **{"Idempotency-Key": str(uuid.uuid4())})

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(create, range(4)))
    codes = sorted(a.status_code for a in answers)
    assert codes == [202, 409, 409, 409], [a.text for a in answers]
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 409} == {"slug_taken"}
    (accepted,) = [a for a in answers if a.status_code == 202]
    engine = sa.create_engine(sqlalchemy_url(settings.database_url))
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(sa.func.count()).select_from(tenants).where(tenants.c.slug == slug)
            ).scalar_one()
        assert rows == 1
    finally:
        engine.dispose()
    assert api.wait_run(accepted.json()["run_id"])["status"] == "SUCCESS"
    assert (
        api.wait_run(launched(api.request("DELETE", f"/tenants/{slug}?purge=true")))["status"]
        == "SUCCESS"
    )
