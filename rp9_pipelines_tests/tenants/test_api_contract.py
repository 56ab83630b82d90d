"""Auth, idempotency and bad input: refused with a stable JSON code, nothing created or
launched."""

import json
import time
import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from rp9_pipelines.api.auth import signature_headers
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.conftest import Served
from rp9_pipelines_tests.tenants.conftest import unique_slug

pytestmark = pytest.mark.stack

RUN_COUNT = "{ runsOrError { ... on Runs { count } } }"


def run_count(dagster_webserver: Served) -> int:
    response = httpx.post(f"{dagster_webserver.url}/graphql", json={"query": RUN_COUNT}, timeout=30)
    return int(response.json()["data"]["runsOrError"]["count"])


def tenant_count(settings: Settings) -> int:
    engine = sa.create_engine(sqlalchemy_url(settings.database_url), poolclass=sa.NullPool)
    with engine.connect() as connection:
        count = int(connection.execute(sa.text("SELECT count(*) FROM tenants")).scalar_one())
    engine.dispose()
    return count


@pytest.fixture
def nothing_happens(settings: Settings, dagster_webserver: Served):
    """Asserts, after the test, that no tenant row appeared and no run was launched."""
    before = (tenant_count(settings), run_count(dagster_webserver))
    yield
    assert (tenant_count(settings), run_count(dagster_webserver)) == before


def auth_cases(api: Api) -> list[tuple[str, dict[str, str]]]:
    body = json.dumps({"slug": unique_slug("auth"), "name": "x"}).encode()
    now = str(int(time.time()))
    good = api.headers(body)
    return [
        ("missing token", {k: v for k, v in good.items() if k != "Authorization"}),
        ("wrong token", good | {"Authorization": "Bearer not-the-token"}),
        ("bad signature", good | {"X-Signature": "sha256=" + "0" * 64}),
        ("no signature", {k: v for k, v in good.items() if k != "X-Signature"}),
        (
            "stale timestamp",
            good | signature_headers(api.hmac, "POST", "/tenants", body, str(int(now) - 301)),
        ),
    ]


@pytest.mark.usefixtures("nothing_happens")
def test_unauthenticated_or_badly_signed_requests_are_refused(api: Api) -> None:
    assert api.hmac, "the local stack sets ORCH_HMAC_SECRET, so signatures are checked"
    body = json.dumps({"slug": unique_slug("auth"), "name": "x"}).encode()
    for case, headers in auth_cases(api):
        # The body must be the one the headers were built for.
        response = api.http.post("/tenants", content=body, headers=headers)
        assert response.status_code == 401, case
        assert response.json()["error"]["code"] in {
            "unauthorized",
            "invalid_signature",
            "signature_required",
            "stale_timestamp",
        }, case
    assert api.http.get("/tenants").status_code == 401


BAD_INPUT: list[tuple[dict[str, Any], int, str]] = [
    ({"slug": "Bad_Slug", "name": "x"}, 422, "invalid_slug"),
    ({"slug": "ab", "name": "x"}, 422, "invalid_slug"),
    ({"slug": "admin", "name": "x"}, 422, "invalid_slug"),
    ({"slug": "ok-slug-1", "name": "x", "plan": "gold"}, 422, "unknown_plan"),
    (
        {"slug": "ok-slug-2", "name": "x", "custom_domain": "not a domain"},
        422,
        "invalid_custom_domain",
    ),
    (
        {"slug": "ok-slug-3", "name": "x", "custom_domain": "x.localhost"},
        422,
        "invalid_custom_domain",
    ),
    ({"slug": "ok-slug-4", "name": "x", "plan": "pro", "workers": 9}, 422, "workers_out_of_range"),
    (
        {"slug": "ok-slug-5", "name": "x", "plan": "starter", "workers": 0},
        422,
        "workers_out_of_range",
    ),
    ({"slug": "ok-slug-6"}, 422, "invalid_request"),
    ({"slug": "ok-slug-7", "name": "x", "surprise": 1}, 422, "invalid_request"),
]


@pytest.mark.usefixtures("nothing_happens")
@pytest.mark.parametrize(("payload", "status", "code"), BAD_INPUT, ids=[c for _, _, c in BAD_INPUT])
def test_bad_input_is_refused_with_a_stable_code(
    api: Api, payload: dict[str, Any], status: int, code: str
) -> None:
    response = api.post("/tenants", payload)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


@pytest.mark.usefixtures("nothing_happens")
def test_duplicate_slug_is_a_conflict(api: Api, shared_tenant: dict[str, Any]) -> None:
    response = api.post("/tenants", {"slug": shared_tenant["slug"], "name": "again"})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "slug_taken"


@pytest.mark.usefixtures("nothing_happens")
def test_scale_outside_the_plan_is_refused(api: Api, shared_tenant: dict[str, Any]) -> None:
    slug = shared_tenant["slug"]
    for payload, code in [
        ({"workers": 5}, "workers_out_of_range"),
        ({"plan": "gold"}, "unknown_plan"),
        ({"cpu": 0}, "invalid_resources"),
        ({}, "nothing_to_change"),
    ]:
        response = api.post(f"/tenants/{slug}/scale", payload)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["code"] == code
    assert api.post("/tenants/no-such-tenant/scale", {"workers": 1}).status_code == 404


def test_replaying_a_post_with_the_same_idempotency_key_returns_the_same_run(
    api: Api, shared_tenant: dict[str, Any], dagster_webserver: Served
) -> None:
    slug, key = shared_tenant["slug"], str(uuid.uuid4())
    first = api.post(f"/tenants/{slug}/scale", {"workers": 1}, **{"Idempotency-Key": key})
    assert first.status_code == 202, first.text
    runs_after_first = run_count(dagster_webserver)
    again = api.post(f"/tenants/{slug}/scale", {"workers": 1}, **{"Idempotency-Key": key})
    assert again.status_code == 202
    assert again.json()["run_id"] == first.json()["run_id"]
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert run_count(dagster_webserver) == runs_after_first
    other = api.post(f"/tenants/{slug}/scale", {"workers": 1, "cpu": 1}, **{"Idempotency-Key": key})
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert api.wait_run(first.json()["run_id"])["status"] == "SUCCESS"
