"""Runs: their contract with a fake Dagster."""

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
