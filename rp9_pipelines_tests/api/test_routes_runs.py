"""Runs, enforcement on demand and restore drills: their contract with a fake Dagster."""

from rp9_pipelines.launches import Launch
from rp9_pipelines_tests.api.fakes import FakeDagster, FakeTenants
from rp9_pipelines_tests.api_client import Api


def test_a_run_is_read_with_the_tenant_it_changes(
    api: Api, dagster: FakeDagster, tenants: FakeTenants
) -> None:
    tenants.put("acme")
    run_id = api.post("/tenants/acme/suspend").json()["run_id"]
    assert api.get(f"/runs/{run_id}").json() == {
        "run_id": run_id,
        "job": "suspend_tenant",
        "status": "QUEUED",
        "tenant": "acme",
        "start_time": None,
        "end_time": None,
    }


def test_an_unknown_run_is_404_and_an_unreachable_dagster_503(
    api: Api, dagster: FakeDagster
) -> None:
    response = api.get("/runs/nope")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "run_not_found")
    dagster.down = True
    response = api.get("/runs/nope")
    assert (response.status_code, response.json()["error"]["code"]) == (503, "dagster_unavailable")


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


def test_a_drill_of_a_tenant_not_running_is_a_conflict(
    api: Api, dagster: FakeDagster, tenants: FakeTenants
) -> None:
    tenants.put("acme", status="provisioning")
    response = api.post("/tenants/acme/restore-drills", {})
    assert (response.status_code, response.json()["error"]["code"]) == (409, "invalid_state")
    assert dagster.launched == []


def test_a_drill_names_a_backup_by_uuid(api: Api, tenants: FakeTenants) -> None:
    tenants.put("acme")
    response = api.post("/tenants/acme/restore-drills", {"backup_id": "latest"})
    assert (response.status_code, response.json()["error"]["code"]) == (422, "invalid_request")
