"""The tenant routes' contract: what each answers, and exactly which run it launches (job,
config, tags); refusals launch nothing and leave no tenant behind."""

import datetime as dt
import json
import uuid
from typing import Any

import pytest

from rp9_pipelines.api.auth import fingerprint
from rp9_pipelines.api.idempotency import IN_PROGRESS_TTL_S
from rp9_pipelines.api.routes.tenants import TenantPublic
from rp9_pipelines.launches import Launch
from rp9_pipelines.services.tenants import InFlight
from rp9_pipelines_tests.api.conftest import BASE_DOMAIN
from rp9_pipelines_tests.api.fakes import FakeDagster, FakeKeyStore, FakeQueues, FakeTenants
from rp9_pipelines_tests.api_client import Api


def tags(tenant_id: str, slug: str) -> dict[str, str]:
    return {"rp9/tenant": slug, "rp9/tenant_id": tenant_id, "rp9/requested_by": "api"}


def test_creating_a_tenant_records_it_and_launches_its_provisioning(
    api: Api, dagster: FakeDagster, tenants: FakeTenants
) -> None:
    response = api.post("/tenants", {"slug": "acme", "name": "Acme", "custom_domain": "acme.org"})
    assert response.status_code == 202, response.text
    body = response.json()
    tenant_id = body["tenant_id"]
    assert body == {
        "tenant_id": tenant_id,
        "slug": "acme",
        "status": "provisioning",
        "run_id": "run-1",
        "hosts": [f"acme.{BASE_DOMAIN}", "acme.org"],
    }
    assert list(body) == ["tenant_id", "slug", "status", "run_id", "hosts"]
    assert dagster.launched == [
        Launch(
            "provision_tenant",
            {"ops": {"register_secrets": {"config": {"tenant_id": tenant_id}}}},
            tags(tenant_id, "acme"),
        )
    ]
    tenant = tenants.rows[uuid.UUID(tenant_id)]
    assert (tenant.plan, tenant.tier, tenant.workers, tenant.region) == (
        "starter",
        "shared",
        1,
        "eu-1",
    )
    assert tenants.quotas[tenant.id]["max_workers"] == 1


def test_a_tenant_gets_the_workers_it_asks_for_within_its_plan(
    api: Api, tenants: FakeTenants
) -> None:
    response = api.post(
        "/tenants", {"slug": "big", "name": "Big", "plan": "pro", "tier": "dedicated", "workers": 3}
    )
    assert response.status_code == 202, response.text
    tenant = tenants.rows[uuid.UUID(response.json()["tenant_id"])]
    assert (tenant.plan, tenant.tier, tenant.workers) == ("pro", "dedicated", 3)


BAD_INPUT: list[tuple[dict[str, Any], str]] = [
    ({"slug": "Bad_Slug", "name": "x"}, "invalid_slug"),
    ({"slug": "ab", "name": "x"}, "invalid_slug"),
    ({"slug": "admin", "name": "x"}, "invalid_slug"),
    ({"slug": "ok-slug", "name": "x", "plan": "gold"}, "unknown_plan"),
    ({"slug": "ok-slug", "name": "x", "custom_domain": "not a domain"}, "invalid_custom_domain"),
    (
        {"slug": "ok-slug", "name": "x", "custom_domain": f"x.{BASE_DOMAIN}"},
        "invalid_custom_domain",
    ),
    ({"slug": "ok-slug", "name": "x", "plan": "pro", "workers": 9}, "workers_out_of_range"),
    ({"slug": "ok-slug", "name": "x", "plan": "starter", "workers": 0}, "workers_out_of_range"),
    ({"slug": "ok-slug", "name": "x", "requires_dedicated": True}, "compliance_requires_dedicated"),
    ({"slug": "ok-slug"}, "invalid_request"),
    ({"slug": "ok-slug", "name": "x", "surprise": 1}, "invalid_request"),
    ({"slug": "ok-slug", "name": "x", "tier": "premium"}, "invalid_request"),
]


@pytest.mark.parametrize(("payload", "code"), BAD_INPUT, ids=[c for _, c in BAD_INPUT])
def test_bad_input_is_refused_with_a_stable_code(
    api: Api, dagster: FakeDagster, tenants: FakeTenants, payload: dict[str, Any], code: str
) -> None:
    response = api.post("/tenants", payload)
    assert (response.status_code, response.json()["error"]["code"]) == (422, code)
    assert (dagster.launched, tenants.rows) == ([], {})


def test_a_taken_slug_or_domain_is_a_conflict(
    api: Api, dagster: FakeDagster, tenants: FakeTenants
) -> None:
    tenants.put("acme", custom_domain="acme.org")
    for payload, code in [
        ({"slug": "acme", "name": "again"}, "slug_taken"),
        ({"slug": "other", "name": "x", "custom_domain": "acme.org"}, "domain_taken"),
    ]:
        response = api.post("/tenants", payload)
        assert (response.status_code, response.json()["error"]["code"]) == (409, code)
    assert dagster.launched == []
    assert len(tenants.rows) == 1


def test_no_run_no_tenant_and_the_key_is_free_again(
    api: Api, dagster: FakeDagster, tenants: FakeTenants, keys: FakeKeyStore
) -> None:
    dagster.down = True
    key = {"Idempotency-Key": "create-acme"}
    response = api.post("/tenants", {"slug": "acme", "name": "Acme"}, **key)
    assert (response.status_code, response.json()["error"]["code"]) == (503, "dagster_unavailable")
    assert (tenants.rows, tenants.quotas, keys.kept) == ({}, {}, {})
    dagster.down = False
    again = api.post("/tenants", {"slug": "acme", "name": "Acme"}, **key)
    assert again.status_code == 202, again.text
    assert "Idempotent-Replayed" not in again.headers


def test_a_replay_gets_the_first_answer_and_launches_nothing(
    api: Api, dagster: FakeDagster, tenants: FakeTenants
) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = api.post("/tenants", {"slug": "acme", "name": "Acme"}, **key)
    again = api.post("/tenants", {"slug": "acme", "name": "Acme"}, **key)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert (len(dagster.launched), len(tenants.rows)) == (1, 1)
    other = api.post("/tenants", {"slug": "acme", "name": "Other"}, **key)
    assert (other.status_code, other.json()["error"]["code"]) == (422, "idempotency_key_reused")


def test_a_key_still_at_work_is_a_conflict_until_its_request_is_known_dead(
    api: Api, dagster: FakeDagster, keys: FakeKeyStore
) -> None:
    body = {"slug": "acme", "name": "Acme"}
    # The first request claimed the key, then its process died before it answered.
    assert keys.claim("k", fingerprint("POST", "/tenants", "", json.dumps(body).encode())) is None
    keys.now += dt.timedelta(seconds=IN_PROGRESS_TTL_S - 1)
    response = api.post("/tenants", body, **{"Idempotency-Key": "k"})
    assert (response.status_code, response.json()["error"]["code"]) == (409, "request_in_progress")
    assert dagster.launched == []
    keys.now += dt.timedelta(seconds=2)
    carried_on = api.post("/tenants", body, **{"Idempotency-Key": "k"})
    assert carried_on.status_code == 202, carried_on.text
    assert api.post("/tenants", body, **{"Idempotency-Key": "k"}).json() == carried_on.json()
    assert len(dagster.launched) == 1


def test_an_overlong_key_is_refused(api: Api, dagster: FakeDagster) -> None:
    response = api.post(
        "/tenants", {"slug": "acme", "name": "Acme"}, **{"Idempotency-Key": "k" * 201}
    )
    assert (response.status_code, response.json()["error"]["code"]) == (
        422,
        "invalid_idempotency_key",
    )
    assert dagster.launched == []


# (method, path after /tenants/{ref}, JSON body, from state, job, first op, its config)
ACTIONS: list[tuple[str, str, Any, str, str, str, dict[str, Any]]] = [
    ("POST", "/provision", {}, "failed", "provision_tenant", "register_secrets", {}),
    ("POST", "/suspend", {}, "active", "suspend_tenant", "stop_stack", {}),
    ("POST", "/resume", {}, "suspended", "resume_tenant", "restart_stack", {}),
    ("POST", "/backup", {}, "suspended", "backup_tenant", "backup_database", {"kind": "on_demand"}),
    ("POST", "/scale", {"cpu": 0.5}, "active", "scale_tenant", "apply_scale", {"cpu": 0.5}),
    ("DELETE", "?purge=true", None, "suspended", "delete_tenant", "remove_tenant", {"purge": True}),
    ("DELETE", "", None, "deleted", "delete_tenant", "remove_tenant", {"purge": False}),
]


@pytest.mark.parametrize(
    ("method", "path", "payload", "state", "job", "op", "config"),
    ACTIONS,
    ids=[f"{a[0]} {a[1]} of {a[3]}" for a in ACTIONS],
)
def test_each_change_launches_its_job_for_the_tenant(
    api: Api,
    dagster: FakeDagster,
    tenants: FakeTenants,
    method: str,
    path: str,
    payload: Any,
    state: str,
    job: str,
    op: str,
    config: dict[str, Any],
) -> None:
    tenant = tenants.put("acme", status=state)
    response = api.request(method, f"/tenants/acme{path}", payload)
    assert response.status_code == 202, response.text
    assert response.json() == {"tenant_id": str(tenant.id), "slug": "acme", "run_id": "run-1"}
    (launch,) = dagster.launched
    assert launch.job == job
    assert launch.run_config == {"ops": {op: {"config": {"tenant_id": str(tenant.id), **config}}}}
    expected_tags = tags(str(tenant.id), "acme")
    if job == "backup_tenant":
        expected_tags["rp9/backup_kind"] = "on_demand"
    assert launch.tags == expected_tags


@pytest.mark.parametrize(
    ("method", "path", "state"),
    [
        ("POST", "/provision", "suspended"),
        ("POST", "/suspend", "suspended"),
        ("POST", "/suspend", "provisioning"),
        ("POST", "/resume", "active"),
        ("POST", "/backup", "failed"),
        ("POST", "/backup", "deleted"),
        ("POST", "/scale", "suspended"),
        ("DELETE", "", "upgrading"),
    ],
)
def test_a_change_the_tenants_state_does_not_allow_is_a_conflict(
    api: Api, dagster: FakeDagster, tenants: FakeTenants, method: str, path: str, state: str
) -> None:
    tenants.put("acme", status=state)
    response = api.request(
        method, f"/tenants/acme{path}", {"workers": 1} if "scale" in path else None
    )
    assert (response.status_code, response.json()["error"]["code"]) == (409, "invalid_state")
    assert state in response.json()["error"]["message"]
    assert dagster.launched == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/tenants/nobody"),
        ("GET", "/tenants/nobody/backups"),
        ("GET", "/tenants/nobody/restore-drills"),
        ("POST", "/tenants/nobody/restore-drills"),
        ("GET", "/metrics/tenant/nobody"),
        ("POST", "/tenants/nobody/provision"),
        ("POST", "/tenants/nobody/suspend"),
        ("POST", "/tenants/nobody/resume"),
        ("POST", "/tenants/nobody/backup"),
        ("POST", "/tenants/nobody/scale"),
        ("DELETE", "/tenants/nobody"),
        ("DELETE", f"/tenants/{uuid.uuid4()}"),
    ],
)
def test_a_route_naming_an_unknown_tenant_answers_404(
    api: Api, dagster: FakeDagster, method: str, path: str
) -> None:
    response = api.request(method, path, {"workers": 1} if method == "POST" else None)
    assert response.status_code == 404, response.text
    assert response.json()["error"]["code"] == "tenant_not_found"
    assert dagster.launched == []


def test_a_tenant_is_found_by_id_as_by_slug(
    api: Api, dagster: FakeDagster, tenants: FakeTenants
) -> None:
    tenant = tenants.put("acme")
    assert api.post(f"/tenants/{tenant.id}/suspend").status_code == 202
    assert dagster.launched[0].tags["rp9/tenant"] == "acme"


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"workers": 5}, "workers_out_of_range"),
        ({"plan": "pro", "workers": 5}, "workers_out_of_range"),
        ({"plan": "gold"}, "unknown_plan"),
        ({"cpu": 0}, "invalid_resources"),
        ({"memory_mb": 100}, "invalid_resources"),
        ({}, "nothing_to_change"),
        ({"workers": "many"}, "invalid_request"),
        ({"replicas": 2}, "invalid_request"),
    ],
)
def test_scale_outside_the_plan_is_refused(
    api: Api, dagster: FakeDagster, tenants: FakeTenants, payload: dict[str, Any], code: str
) -> None:
    tenants.put("acme")
    response = api.post("/tenants/acme/scale", payload)
    assert (response.status_code, response.json()["error"]["code"]) == (422, code)
    assert dagster.launched == []


def test_scaling_to_a_plan_checks_the_workers_against_that_plan(
    api: Api, dagster: FakeDagster, tenants: FakeTenants
) -> None:
    tenant = tenants.put("acme")
    response = api.post("/tenants/acme/scale", {"plan": "pro", "workers": 4})
    assert response.status_code == 202, response.text
    config = {"tenant_id": str(tenant.id), "plan": "pro", "workers": 4}
    assert dagster.launched[0].run_config == {"ops": {"apply_scale": {"config": config}}}


def test_a_scale_down_the_load_in_flight_needs_is_refused_unless_forced(
    api: Api, dagster: FakeDagster, tenants: FakeTenants, queues: FakeQueues
) -> None:
    tenants.put("acme", plan="pro", workers=3)
    # 3 workers of 5 slots: 12 running and 6 waiting would not fit in 2 workers' 10 slots.
    queues.loads["acme"] = InFlight(running=12, waiting=6, slots_per_worker=5)
    refused = api.post("/tenants/acme/scale", {"workers": 2})
    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "capacity_in_use")
    assert "12 executions are running and 6 waiting" in refused.json()["error"]["message"]
    assert dagster.launched == []
    # Scaling up, or down to what still fits, is not held back.
    assert api.post("/tenants/acme/scale", {"workers": 4}).status_code == 202
    queues.loads["acme"] = InFlight(running=8, waiting=2, slots_per_worker=5)
    assert api.post("/tenants/acme/scale", {"workers": 2}).status_code == 202
    # An operator may insist; `force` is not part of the run's configuration.
    queues.loads["acme"] = InFlight(running=15, waiting=40, slots_per_worker=5)
    forced = api.post("/tenants/acme/scale", {"workers": 1, "force": True})
    assert forced.status_code == 202, forced.text
    config = dagster.launched[-1].run_config["ops"]["apply_scale"]["config"]
    assert config == {"tenant_id": str(tenants.get("acme").id), "workers": 1}  # type: ignore[union-attr]
    # A queue that cannot be read is not taken for an idle one.
    queues.loads["acme"] = InFlight(0, 0, 5, error="Redis: connection refused")
    unread = api.post("/tenants/acme/scale", {"workers": 1})
    assert (unread.status_code, unread.json()["error"]["code"]) == (409, "queue_unreadable")


def test_a_replayed_change_gets_the_same_run_and_a_key_serves_one_request_only(
    api: Api, dagster: FakeDagster, tenants: FakeTenants
) -> None:
    tenants.put("acme")
    tenants.put("beta")
    key = {"Idempotency-Key": "nightly"}
    first = api.post("/tenants/acme/scale", {"workers": 1}, **key)
    again = api.post("/tenants/acme/scale", {"workers": 1}, **key)
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    # Another body, tenant, action, method or query: refused, never answered with run-1.
    for method, path, payload in [
        ("POST", "/tenants/acme/scale", {"workers": 1, "cpu": 1}),
        ("POST", "/tenants/beta/scale", {"workers": 1}),
        ("POST", "/tenants/acme/backup", {"workers": 1}),
        ("DELETE", "/tenants/acme", None),
        ("POST", "/tenants/acme/scale?dry=1", {"workers": 1}),
    ]:
        other = api.request(method, path, payload, **key)
        assert other.status_code == 422, (method, path, other.text)
        assert other.json()["error"]["code"] == "idempotency_key_reused", (method, path)
    assert len(dagster.launched) == 1


def test_the_same_key_on_delete_with_and_without_purge_is_refused_not_replayed(
    api: Api, dagster: FakeDagster, tenants: FakeTenants
) -> None:
    tenants.put("acme")
    key = {"Idempotency-Key": "remove-acme"}
    kept = api.request("DELETE", "/tenants/acme", **key)
    assert kept.status_code == 202, kept.text
    purge = api.request("DELETE", "/tenants/acme?purge=true", **key)
    assert (purge.status_code, purge.json()["error"]["code"]) == (422, "idempotency_key_reused")
    purges = [
        launch.run_config["ops"]["remove_tenant"]["config"]["purge"] for launch in dagster.launched
    ]
    assert purges == [False]
    # And the other way round, with another key.
    other = {"Idempotency-Key": "purge-acme"}
    assert api.request("DELETE", "/tenants/acme?purge=true", **other).status_code == 202
    assert api.request("DELETE", "/tenants/acme", **other).status_code == 422
    assert len(dagster.launched) == 2


def test_a_change_dagster_cannot_take_is_503_and_may_be_retried(
    api: Api, dagster: FakeDagster, tenants: FakeTenants
) -> None:
    tenants.put("acme")
    dagster.down = True
    key = {"Idempotency-Key": "suspend-acme"}
    response = api.post("/tenants/acme/suspend", **key)
    assert (response.status_code, response.json()["error"]["code"]) == (503, "dagster_unavailable")
    dagster.down = False
    assert api.post("/tenants/acme/suspend", **key).status_code == 202


def test_the_tenant_shape_is_the_catalogs(tenants: FakeTenants) -> None:
    public = tenants.put("acme").public()
    assert list(TenantPublic.model_fields) == list(public)
    assert TenantPublic(**public).model_dump() == public
