"""Every route but the probes and Stripe's webhook wants the Bearer token and, when
ORCH_HMAC_SECRET is set, a fresh signature of the whole request, accepted once: 401 with a
stable code otherwise, and nothing done."""

import json
import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from rp9_pipelines.api.deps import current_settings
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.api.fakes import FakeDagster, FakeSignatures, FakeTenants
from rp9_pipelines_tests.api_client import Api

BODY = json.dumps({"slug": "acme", "name": "Acme"}).encode()

# What differs from a good request's headers (None: left out), and the code it gets.
CASES: list[tuple[str, dict[str, str | None], str]] = [
    ("missing token", {"Authorization": None}, "unauthorized"),
    ("wrong token", {"Authorization": "Bearer nope"}, "unauthorized"),
    ("basic scheme", {"Authorization": "Basic x"}, "unauthorized"),
    ("no signature", {"X-Signature": None}, "signature_required"),
    ("no timestamp", {"X-Timestamp": None}, "signature_required"),
    ("bad signature", {"X-Signature": "sha256=" + "0" * 64}, "invalid_signature"),
    # Signed properly, but at a time too far from now (set when the request is sent).
    ("stale timestamp", {"X-Timestamp": "-400"}, "stale_timestamp"),
    ("future timestamp", {"X-Timestamp": "+400"}, "stale_timestamp"),
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
        name: value for name, value in (api.headers() | changes).items() if value is not None
    }
    if headers.get("X-Timestamp", "")[:1] in ("-", "+"):
        headers["X-Timestamp"] = str(int(time.time()) + int(headers["X-Timestamp"]))
    response = api.http.post("/tenants", content=BODY, headers=headers)
    assert response.status_code == 401
    error = response.json()["error"]
    assert (error["code"], sorted(error)) == (code, ["code", "message"])
    assert (dagster.launched, tenants.rows) == ([], {})


def test_a_signature_covers_the_body(api: Api, dagster: FakeDagster) -> None:
    other = json.dumps({"slug": "evil", "name": "Evil"}).encode()
    response = api.http.post(
        "/tenants", content=other, headers=api.signed("POST", "/tenants", BODY)
    )
    assert response.json()["error"]["code"] == "invalid_signature"
    assert dagster.launched == []


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/enforcement/events"),
        ("GET", "/tenants?include_deleted=true"),
        ("DELETE", "/tenants/acme"),
        ("DELETE", "/tenants/acme?purge=true"),
        ("POST", "/tenants/acme/suspend"),
    ],
)
def test_a_signature_over_one_request_is_refused_on_any_other(
    api: Api, dagster: FakeDagster, tenants: FakeTenants, method: str, target: str
) -> None:
    tenants.put("acme")
    listing = api.signed("GET", "/tenants")
    response = api.http.request(method, target, headers=listing)
    assert (response.status_code, response.json()["error"]["code"]) == (401, "invalid_signature")
    # Nor is a DELETE's signature good for the same DELETE with ?purge=true.
    delete = api.signed("DELETE", "/tenants/acme")
    purge = api.http.request("DELETE", "/tenants/acme?purge=true", headers=delete)
    assert (purge.status_code, purge.json()["error"]["code"]) == (401, "invalid_signature")
    assert dagster.launched == []


def test_a_signature_is_accepted_once(api: Api, signatures: FakeSignatures) -> None:
    headers = api.signed("GET", "/tenants/acme")
    assert api.http.get("/tenants/acme", headers=headers).status_code == 404  # accepted
    again = api.http.get("/tenants/acme", headers=headers)
    assert (again.status_code, again.json()["error"]["code"]) == (401, "replayed_signature")
    assert len(signatures.accepted) == 1
    # Two requests alike within a second are two signatures (the timestamp has a fraction).
    assert api.get("/tenants/acme").status_code == api.get("/tenants/acme").status_code == 404


def test_a_refused_signature_is_not_recorded(api: Api, signatures: FakeSignatures) -> None:
    headers = api.headers(**{"X-Signature": "sha256=" + "0" * 64})
    assert api.http.get("/tenants/acme", headers=headers).status_code == 401
    assert signatures.accepted == set()


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


def test_an_api_without_a_token_authenticates_nobody(app: FastAPI, api_settings: Settings) -> None:
    # Settings refuses an empty ORCH_TOKEN; this is the API's own refusal under it.
    tokenless = api_settings.model_copy(update={"orch_token": SecretStr("")})
    app.dependency_overrides[current_settings] = lambda: tokenless
    caller = Api("http://testserver", tokenless, http=TestClient(app))
    for authorization in ("Bearer ", "Bearer", ""):
        response = caller.http.get("/tenants", headers=caller.headers(Authorization=authorization))
        assert (response.status_code, response.json()["error"]["code"]) == (401, "unauthorized")


def test_without_an_hmac_secret_the_token_is_enough(app: FastAPI, api_settings: Settings) -> None:
    unsigned = api_settings.model_copy(update={"orch_hmac_secret": None})
    app.dependency_overrides[current_settings] = lambda: unsigned
    caller = Api("http://testserver", unsigned, http=TestClient(app))
    assert "X-Signature" not in caller.headers()
    response = caller.get("/runs/nope")
    assert (response.status_code, response.json()["error"]["code"]) == (404, "run_not_found")


@pytest.mark.parametrize(
    ("target", "status"),
    [
        ("/tenants/a%20b", 404),
        ("/tenants/%C3%A9t%C3%A9", 404),
        ("/enforcement/events?tenant=a%2Bb&limit=5", 422),
        ("/enforcement/events?period=2026-01&period=2026-02&tenant=ACME", 422),
    ],
)
def test_paths_and_queries_are_signed_as_sent(api: Api, target: str, status: int) -> None:
    """Percent-encoding, repeated parameters: what is signed is what goes on the wire (the
    request is judged on its merits, not refused as unauthenticated)."""
    assert api.get(target).status_code == status
