"""Every route but the probes and Stripe's webhook wants the Bearer token and, when
ORCH_HMAC_SECRET is set, a fresh signature of the body: 401 with a stable code otherwise."""

import json
import time

import pytest

from rp9_pipelines.api.auth import sign
from rp9_pipelines_tests.api.conftest import HMAC_SECRET
from rp9_pipelines_tests.api.fakes import FakeDagster, FakeTenants
from rp9_pipelines_tests.api_client import Api

BODY = json.dumps({"slug": "acme", "name": "Acme"}).encode()


def signed_at(timestamp: str) -> dict[str, str | None]:
    return {"X-Timestamp": timestamp, "X-Signature": sign(HMAC_SECRET, timestamp, BODY)}


# What differs from a good request's headers (None: left out), and the code it gets.
CASES: list[tuple[str, dict[str, str | None], str]] = [
    ("missing token", {"Authorization": None}, "unauthorized"),
    ("wrong token", {"Authorization": "Bearer nope"}, "unauthorized"),
    ("basic scheme", {"Authorization": "Basic x"}, "unauthorized"),
    ("no signature", {"X-Signature": None}, "signature_required"),
    ("no timestamp", {"X-Timestamp": None}, "signature_required"),
    ("bad signature", {"X-Signature": "sha256=" + "0" * 64}, "invalid_signature"),
    ("stale timestamp", signed_at(str(int(time.time()) - 301)), "stale_timestamp"),
    ("timestamp not a number", {"X-Timestamp": "yesterday"}, "invalid_timestamp"),
]


@pytest.mark.parametrize(("changes", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_unauthenticated_or_badly_signed_requests_are_refused(
    api: Api,
    dagster: FakeDagster,
    tenants: FakeTenants,
    changes: dict[str, str | None],
    code: str,
) -> None:
    headers = {
        name: value for name, value in (api.headers(BODY) | changes).items() if value is not None
    }
    response = api.http.post("/tenants", content=BODY, headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert (error["code"], sorted(error)) == (code, ["code", "message"])
    assert (dagster.launched, tenants.rows) == ([], {})


def test_a_signature_covers_the_body(api: Api, dagster: FakeDagster) -> None:
    other = json.dumps({"slug": "evil", "name": "Evil"}).encode()
    response = api.http.post("/tenants", content=other, headers=api.headers(BODY))
    assert response.json()["error"]["code"] == "invalid_signature"
    assert dagster.launched == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/tenants"),
        ("GET", "/tenants/acme"),
        ("POST", "/tenants/acme/suspend"),
        ("DELETE", "/tenants/acme"),
        ("GET", "/runs/run-1"),
        ("GET", "/metrics/tenant/acme"),
        ("GET", "/tenants/acme/backups"),
        ("POST", "/enforcement/run"),
        ("GET", "/enforcement/events"),
    ],
)
def test_every_route_of_a_caller_wants_the_token(api: Api, method: str, path: str) -> None:
    response = api.http.request(method, path)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"


def test_the_probes_want_no_token(api: Api) -> None:
    assert api.http.get("/healthz").json() == {"status": "ok"}
