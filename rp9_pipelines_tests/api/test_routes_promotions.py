"""The promotion routes' contract: 202 with the run, 409 with a stable code for every tenant that
cannot be promoted (or rolled back) now, nothing recorded when the run cannot be launched."""

import datetime as dt
import uuid

import pytest

from rp9_pipelines_tests.api.fakes import FakeDagster, FakePromotions, FakeTenants
from rp9_pipelines_tests.api_client import Api


def key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


def test_promote_launches_the_run_and_marks_the_tenant_promoting(
    api: Api, dagster: FakeDagster, tenants: FakeTenants, promotions: FakePromotions
) -> None:
    tenant = tenants.put("acme")
    answer = api.post("/tenants/acme/promote", **key())
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert body["run_id"] == "run-1"
    launch = dagster.launched[0]
    assert launch.job == "promote_tenant"
    assert launch.run_config["ops"]["prepare_dedicated"]["config"] == {
        "promotion_id": body["promotion_id"]
    }
    assert launch.tags["rp9/tenant"] == "acme"
    assert tenants.rows[tenant.id].status == "promoting"
    listed = api.get("/tenants/acme/promotions").json()["promotions"]
    assert [p["id"] for p in listed] == [body["promotion_id"]]
    assert listed[0]["status"] == "running"


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"tier": "dedicated"}, "already_dedicated"),
        ({"status": "suspended"}, "invalid_state"),
        ({"status": "deleted"}, "invalid_state"),
        ({"status": "promoting"}, "promotion_in_progress"),
    ],
)
def test_promote_refuses_what_cannot_be_promoted_now(
    api: Api, dagster: FakeDagster, tenants: FakeTenants, fields: dict[str, str], code: str
) -> None:
    tenants.put("acme", **fields)
    answer = api.post("/tenants/acme/promote", **key())
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"]["code"] == code
    assert dagster.launched == []


def test_one_promotion_at_a_time(api: Api, dagster: FakeDagster, tenants: FakeTenants) -> None:
    tenants.put("acme")
    assert api.post("/tenants/acme/promote", **key()).status_code == 202
    again = api.post("/tenants/acme/promote", **key())
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "promotion_in_progress"
    assert len(dagster.launched) == 1


def test_no_run_no_promotion(
    api: Api, dagster: FakeDagster, tenants: FakeTenants, promotions: FakePromotions
) -> None:
    tenant = tenants.put("acme")
    dagster.down = True
    answer = api.post("/tenants/acme/promote", **key())
    assert answer.status_code == 503
    assert promotions.rows == {}
    assert tenants.rows[tenant.id].status == "active"


def test_a_rollback_needs_a_completed_promotion_inside_its_window(
    api: Api, dagster: FakeDagster, tenants: FakeTenants, promotions: FakePromotions
) -> None:
    tenant = tenants.put("acme", tier="dedicated")
    refused = api.post("/tenants/acme/promotion/rollback", **key())
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "no_promotion"
    shared = tenants.put("beta")
    promotion_id = promotions.start(shared, "manual")
    now = dt.datetime.now(dt.UTC)
    promotions.rows[promotion_id] |= {
        "tenant_id": tenant.id,
        "status": "succeeded",
        "switched_at": now - dt.timedelta(hours=2),
        "rollback_until": now - dt.timedelta(hours=1),
    }
    late = api.post("/tenants/acme/promotion/rollback", **key())
    assert late.status_code == 409
    assert late.json()["error"]["code"] == "rollback_window_over"
    promotions.rows[promotion_id]["rollback_until"] = now + dt.timedelta(hours=1)
    accepted = api.post("/tenants/acme/promotion/rollback", **key())
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["promotion_id"] == str(promotion_id)
    assert dagster.launched[-1].job == "roll_back_promotion"
    assert tenants.rows[tenant.id].status == "promoting"
