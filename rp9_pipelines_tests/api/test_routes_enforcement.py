"""The enforcement routes' contract: which run `POST /enforcement/run` launches, and the tenant
refs it and `GET /enforcement/events` refuse before the catalog sees them."""

import uuid
from typing import Any

import pytest

from rp9_pipelines.api.routes.enforcement import RunEnforcement
from rp9_pipelines.launches import Launch
from rp9_pipelines_tests.api.fakes import FakeDagster
from rp9_pipelines_tests.api_client import Api


def test_enforcement_on_demand_judges_every_tenant(api: Api, dagster: FakeDagster) -> None:
    response = api.post("/enforcement/run", {})
    assert response.status_code == 202, response.text
    assert response.json() == {"run_id": "run-1", "tenants": "all"}
    assert dagster.launched == [
        Launch(
            "enforce_limits",
            {"ops": {"enforce_quotas": {"config": {"tenants": []}}}},
            {"rp9/requested_by": "api"},
        )
    ]


def test_enforcement_refuses_an_empty_list_of_tenants(api: Api, dagster: FakeDagster) -> None:
    response = api.post("/enforcement/run", {"tenants": []})
    assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_request")
    assert dagster.launched == []


def test_enforcement_on_demand_replays(api: Api, dagster: FakeDagster) -> None:
    key = {"Idempotency-Key": "enforce-now"}
    first = api.post("/enforcement/run", {}, **key)
    again = api.post("/enforcement/run", {}, **key)
    assert (again.json(), again.headers["Idempotent-Replayed"]) == (first.json(), "true")
    assert len(dagster.launched) == 1


# Nothing listens at the fast tests' catalog address: a ref that reached the catalog would fail
# with a 500, so a 422 here proves it was refused by the request's shape.
BAD_REFS = ["a\u0000b", "acme\n", "ACME", "a b", "acme;drop", "-acme", "x" * 41, "", "\u0007bell"]


def test_enforcement_takes_slugs_and_uuids_in_any_spelling() -> None:
    tenant_id = uuid.uuid4()
    refs = ["acme", "a-1-b", "x" * 40, str(tenant_id), str(tenant_id).upper(), tenant_id.hex]
    assert RunEnforcement(tenants=refs).tenants == refs


@pytest.mark.parametrize("ref", BAD_REFS, ids=repr)
def test_enforcement_refuses_a_tenant_ref_that_is_no_slug_or_uuid(
    api: Api, dagster: FakeDagster, ref: str
) -> None:
    response = api.post("/enforcement/run", {"tenants": ["acme", ref]})
    assert response.headers["content-type"] == "application/json"
    assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_request")
    assert response.json()["error"]["message"].startswith("tenants.1: ")
    assert dagster.launched == []


@pytest.mark.parametrize(
    "query", [{"tenant": ref} for ref in BAD_REFS] + [{"period": "2026-1\u0000"}]
)
def test_the_events_refuse_a_query_that_is_no_tenant_ref_or_period(
    api: Api, query: dict[str, Any]
) -> None:
    response = api.http.get("/enforcement/events", params=query, headers=api.headers())
    assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_request")
