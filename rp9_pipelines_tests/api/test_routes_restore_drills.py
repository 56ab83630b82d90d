"""The restore-drill routes' contract: which drill run a request launches (job, config, tags),
what is refused before any run, and the drills as the catalog lists them."""

import datetime as dt
import uuid
from typing import Any

import pytest

from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.launches import Launch
from rp9_pipelines_tests.api.fakes import FakeDagster, FakeDrills, FakeTenants
from rp9_pipelines_tests.api_client import Api


def drill_launch(tenant: Tenant, **config: str) -> Launch:
    return Launch(
        "restore_drill",
        {"ops": {"run_restore_drill": {"config": {"tenant_id": str(tenant.id), **config}}}},
        {
            "rp9/drill_tenant": tenant.slug,
            "rp9/tenant_id": str(tenant.id),
            "rp9/requested_by": "api",
        },
    )


@pytest.mark.parametrize("state", ["active", "suspended"])
def test_a_drill_restores_a_recent_backup_of_a_running_tenant(
    api: Api, dagster: FakeDagster, tenants: FakeTenants, drills: FakeDrills, state: str
) -> None:
    tenant = tenants.put("acme", status=state)
    drills.put_backup(tenant)
    response = api.post("/tenants/acme/restore-drills", {})
    assert response.status_code == 202, response.text
    assert response.json() == {"tenant_id": str(tenant.id), "slug": "acme", "run_id": "run-1"}
    # The run chooses the backup itself: the request only proved there is one to choose.
    assert dagster.launched == [drill_launch(tenant)]


def test_a_drill_takes_the_backup_it_is_given_even_an_old_one(
    api: Api, dagster: FakeDagster, tenants: FakeTenants, drills: FakeDrills
) -> None:
    tenant = tenants.put("acme")
    old = drills.put_backup(tenant, age=dt.timedelta(days=90))
    response = api.post(f"/tenants/{tenant.id}/restore-drills", {"backup_id": str(old.id)})
    assert response.status_code == 202, response.text
    assert dagster.launched == [drill_launch(tenant, backup_id=str(old.id))]


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


@pytest.mark.parametrize(
    ("backup", "requested", "status", "code"),
    [
        (None, None, 409, "no_recent_backup"),
        ("ok", "old", 409, "no_recent_backup"),
        ("failed", None, 409, "no_recent_backup"),
        ("ok", "another tenant's", 404, "backup_not_found"),
        ("ok", "unknown", 404, "backup_not_found"),
        ("failed", "it", 409, "backup_not_restorable"),
        ("expired", "it", 409, "backup_not_restorable"),
    ],
)
def test_a_drill_with_nothing_to_restore_is_refused_before_any_run(
    api: Api,
    dagster: FakeDagster,
    tenants: FakeTenants,
    drills: FakeDrills,
    backup: str | None,
    requested: str | None,
    status: int,
    code: str,
) -> None:
    tenant = tenants.put("acme")
    other = tenants.put("globex")
    payload: dict[str, Any] = {}
    if backup is not None:
        age = dt.timedelta(days=31 if requested == "old" else 1)
        owner = other if requested == "another tenant's" else tenant
        record = drills.put_backup(owner, status=backup, age=age)
        if requested in {"it", "another tenant's"}:
            payload["backup_id"] = str(record.id)
    if requested == "unknown":
        payload["backup_id"] = str(uuid.uuid4())
    response = api.post("/tenants/acme/restore-drills", payload)
    assert (response.status_code, response.json()["error"]["code"]) == (status, code)
    assert dagster.launched == []


def test_a_replayed_drill_gets_the_same_run_and_dagster_down_is_503(
    api: Api, dagster: FakeDagster, tenants: FakeTenants, drills: FakeDrills
) -> None:
    drills.put_backup(tenants.put("acme"))
    key = {"Idempotency-Key": "drill-acme"}
    dagster.down = True
    response = api.post("/tenants/acme/restore-drills", {}, **key)
    assert (response.status_code, response.json()["error"]["code"]) == (503, "dagster_unavailable")
    dagster.down = False
    first = api.post("/tenants/acme/restore-drills", {}, **key)
    again = api.post("/tenants/acme/restore-drills", {}, **key)
    assert (first.status_code, again.json()) == (202, first.json())
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(dagster.launched) == 1


def test_the_drills_are_listed_newest_first_in_the_catalogs_shape(
    api: Api, tenants: FakeTenants, drills: FakeDrills
) -> None:
    tenant = tenants.put("acme")
    started = dt.datetime(2026, 4, 1, 5, 0, tzinfo=dt.UTC)
    for days in range(3):
        drills.rows.append(
            {
                "id": uuid.UUID(int=days + 1),
                "tenant_id": tenant.id,
                "backup_id": uuid.UUID(int=100 + days),
                "sandbox": f"rp9-drill-{days}",
                "status": "passed",
                "run_id": f"run-{days}",
                "started_at": started + dt.timedelta(days=days),
                "finished_at": started + dt.timedelta(days=days, minutes=3),
                "rto_seconds": 42.5,
                "checks": [{"name": "restore", "ok": True, "detail": "pg_restore in 1.0 s"}],
                "error": None,
            }
        )
    response = api.get("/tenants/acme/restore-drills?limit=2")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tenant_id"] == str(tenant.id)
    assert [d["id"] for d in body["restore_drills"]] == [
        str(uuid.UUID(int=3)),
        str(uuid.UUID(int=2)),
    ]
    assert body["restore_drills"][0] == {
        "id": str(uuid.UUID(int=3)),
        "tenant_id": str(tenant.id),
        "backup_id": str(uuid.UUID(int=102)),
        "sandbox": "rp9-drill-2",
        "status": "passed",
        "run_id": "run-2",
        "started_at": "2026-04-03T05:00:00+00:00",
        "finished_at": "2026-04-03T05:03:00+00:00",
        "rto_seconds": 42.5,
        "checks": [{"name": "restore", "ok": True, "detail": "pg_restore in 1.0 s"}],
        "error": None,
    }
    refused = api.get("/tenants/acme/restore-drills?limit=0")
    assert (refused.status_code, refused.json()["error"]["code"]) == (422, "invalid_request")
