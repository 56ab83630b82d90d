"""What is refused before any route reads it, and how every error stays a 4xx JSON body: bodies
over the limit (413), control characters in a path, query or JSON string (422), a tenant ref
that cannot name a tenant (404, the catalog not asked), a value the catalog refuses (422)."""

import json

import anyio
import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from rp9_pipelines.api.deps import get_tenants, tenant_by_ref
from rp9_pipelines.api.errors import ApiError
from rp9_pipelines.api.limits import MAX_BODY_BYTES, RequestLimits
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.api.fakes import FakeDagster, FakeSignatures, FakeTenants
from rp9_pipelines_tests.api_client import Api


def error_of(response: httpx.Response) -> tuple[int, str]:
    assert response.headers["content-type"] == "application/json"
    return response.status_code, response.json()["error"]["code"]


def test_a_body_over_the_limit_is_413_by_its_content_length_before_it_is_read(
    api: Api, dagster: FakeDagster, signatures: FakeSignatures
) -> None:
    body = b"{" + b" " * MAX_BODY_BYTES + b"}"
    response = api.http.post("/tenants", content=body, headers=api.headers())
    assert error_of(response) == (413, "payload_too_large")
    assert (dagster.launched, signatures.accepted) == ([], set())


def test_a_streamed_body_is_413_once_it_passes_the_limit() -> None:
    """No Content-Length (a chunked body): counted as it comes, refused past the limit, and
    the rest never read."""
    chunk = b" " * (64 * 1024)
    received: list[bytes] = []
    sent: list[Message] = []
    reached: list[Scope] = []

    async def receive() -> Message:
        received.append(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: Message) -> None:
        sent.append(message)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/tenants",
        "query_string": b"",
        "headers": [],
    }
    anyio.run(RequestLimits(app), scope, receive, send)
    assert reached == []
    assert len(received) == MAX_BODY_BYTES // len(chunk) + 1
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "payload_too_large"


def test_a_body_within_the_limit_is_read(api: Api) -> None:
    body = b'{"tenants": ["acme"]' + b" " * (MAX_BODY_BYTES - 40) + b"}"
    assert len(body) <= MAX_BODY_BYTES
    response = api.http.post("/tenants/acme/suspend", content=body, headers=api.headers())
    assert error_of(response) == (404, "tenant_not_found")


@pytest.mark.parametrize(
    "target",
    [
        "/tenants/a%00b",
        "/tenants/acme%0A",
        "/tenants/%07bell/suspend",
        "/runs/run%001",
        "/metrics/tenant/x%00",
        "/tenants?include_deleted=%00",
        "/enforcement/events?tenant=a%00b",
        "/enforcement/events?period=2026-1%00",
        "/tenants?x=%0D%0A",
    ],
)
def test_control_characters_in_a_path_or_query_are_422(
    api: Api, tenants: FakeTenants, target: str
) -> None:
    for method in ("GET", "POST", "DELETE"):
        response = api.http.request(method, target, headers=api.headers())
        assert error_of(response) == (422, "invalid_request"), (method, target)


@pytest.mark.parametrize(
    "payload",
    [
        {"slug": "a\u0000b", "name": "x"},
        {"slug": "acme-co", "name": "Acme\u0000"},
        {"slug": "acme-co", "name": "Acme", "plan": "pro\u0000"},
        {"slug": "acme-co", "name": "Acme", "region": "eu\n1"},
        {"slug": "acme-co", "name": "Acme", "custom_domain": "acme.org\n"},
    ],
)
def test_control_characters_in_a_json_body_are_422(
    api: Api, dagster: FakeDagster, tenants: FakeTenants, payload: dict[str, str]
) -> None:
    assert error_of(api.post("/tenants", payload)) == (422, "invalid_request")
    assert (dagster.launched, tenants.rows) == ([], {})


def test_a_nul_in_a_scale_plan_is_422(api: Api, tenants: FakeTenants) -> None:
    tenants.put("acme")
    assert error_of(api.post("/tenants/acme/scale", {"plan": "\u0000"})) == (422, "invalid_request")


class Untouchable(FakeTenants):
    def get(self, ref: str) -> None:
        raise AssertionError(f"the catalog was asked for {ref!r}")


@pytest.mark.parametrize("ref", ["a\u0000b", "acme\n", "ACME", "a b", "x" * 64, "é", ""])
def test_a_ref_that_can_name_no_tenant_is_404_without_asking_the_catalog(ref: str) -> None:
    with pytest.raises(ApiError) as error:
        tenant_by_ref(ref, Untouchable())
    assert (error.value.status_code, error.value.code) == (404, "tenant_not_found")


class Refusing(FakeTenants):
    def get(self, ref: str) -> None:
        raise sa.exc.DataError("SELECT", {}, ValueError("text fields cannot contain NUL"))


def test_a_value_the_catalog_refuses_is_422_not_500(app: FastAPI, api: Api) -> None:
    app.dependency_overrides[get_tenants] = Refusing
    assert error_of(api.get("/tenants/acme")) == (422, "invalid_request")


def test_an_unexpected_error_is_still_a_json_body(app: FastAPI, api_settings: Settings) -> None:
    app.dependency_overrides[get_tenants] = Untouchable
    caller = Api(
        "http://testserver", api_settings, http=TestClient(app, raise_server_exceptions=False)
    )
    assert error_of(caller.get("/tenants/acme")) == (500, "internal_error")
