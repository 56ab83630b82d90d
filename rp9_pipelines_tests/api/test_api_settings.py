"""The API's secrets (production unless said otherwise, no empty token anywhere), and the
request id a keyed request's launches carry."""

import pytest
from pydantic import ValidationError
from starlette.requests import Request

from rp9_pipelines.api.auth import fingerprint
from rp9_pipelines.api.deps import get_dagster
from rp9_pipelines.api.idempotency import Idempotency, request_id
from rp9_pipelines_tests.api.fakes import FakeKeyStore
from rp9_pipelines_tests.test_settings import STRONG, make


def test_the_default_environment_is_production(monkeypatch: pytest.MonkeyPatch) -> None:
    assert make(monkeypatch, ORCH_TOKEN=STRONG).rp9_env == "production"
    with pytest.raises(ValidationError, match="ORCH_TOKEN"):
        make(monkeypatch, ORCH_TOKEN="super_long_token")


@pytest.mark.parametrize("env", ["development", "test", "production"])
@pytest.mark.parametrize("token", ["", "   "])
def test_an_empty_token_is_refused_in_every_environment(
    monkeypatch: pytest.MonkeyPatch, env: str, token: str
) -> None:
    with pytest.raises(ValidationError, match="ORCH_TOKEN"):
        make(monkeypatch, RP9_ENV=env, ORCH_TOKEN=token)


@pytest.mark.parametrize("secret", ["short", "changeme" * 5, "x" * 31])
def test_production_refuses_a_weak_hmac_secret(
    monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    with pytest.raises(ValidationError, match="ORCH_HMAC_SECRET"):
        make(monkeypatch, ORCH_TOKEN=STRONG, ORCH_HMAC_SECRET=secret)


def test_an_empty_hmac_secret_means_unsigned_requests(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make(monkeypatch, ORCH_TOKEN=STRONG, ORCH_HMAC_SECRET="")
    assert settings.orch_hmac_secret is not None
    assert settings.orch_hmac_secret.get_secret_value() == ""
    assert make(monkeypatch, ORCH_TOKEN=STRONG, ORCH_HMAC_SECRET="h" * 40).orch_hmac_secret


def test_a_keyed_requests_launches_carry_an_id_of_that_request_only() -> None:
    keys = FakeKeyStore()
    first = Idempotency(keys, "k", "fingerprint-1").request_id
    assert first is not None
    assert first == request_id("k", "fingerprint-1")
    assert first != request_id("k", "fingerprint-2") != request_id("j", "fingerprint-1")
    assert request_id(None, "fingerprint-1") is None


def test_the_dagster_client_gets_the_requests_id(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make(monkeypatch, ORCH_TOKEN=STRONG)
    body = b'{"workers": 1}'
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/tenants/acme/scale",
        "raw_path": b"/tenants/acme/scale",
        "query_string": b"",
        "headers": [(b"idempotency-key", b"k")],
    }
    client = get_dagster(settings, Request(scope), body)
    assert client.request_id == request_id(
        "k", fingerprint("POST", "/tenants/acme/scale", "", body)
    )
    scope["headers"] = []
    assert get_dagster(settings, Request(scope), body).request_id is None
