"""A caller of the internal API as real clients call it: the Bearer token and, when the API has
an HMAC secret, a signature of each request (method, path and query, body) made as it is sent."""

import json
import time
import uuid
from collections.abc import Generator
from typing import Any

import httpx

from rp9_pipelines.api.auth import signature_headers
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.waiting import wait_until

FINAL = {"SUCCESS", "FAILURE", "CANCELED"}
# The X-Signature of `Api.headers()`: the `Signer` replaces it with the request's signature.
SIGN_ON_SEND = "sha256=(signed-when-sent)"


class Signer(httpx.Auth):
    """Signs a request over exactly what goes on the wire, at its X-Timestamp: only a request
    with an X-Timestamp and the X-Signature `SIGN_ON_SEND`, so a test's missing, wrong or
    replayed signature is sent as the test made it, and a test that changes X-Timestamp gets a
    request signed at that time."""

    requires_request_body = True

    def __init__(self, secret: str) -> None:
        self.secret = secret

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        timestamp = request.headers.get("X-Timestamp")
        if timestamp is not None and request.headers.get("X-Signature") == SIGN_ON_SEND:
            target = request.url.raw_path.decode("ascii")
            request.headers.update(
                signature_headers(self.secret, request.method, target, request.content, timestamp)
            )
        yield request


class Api:
    def __init__(self, base_url: str, settings: Settings, http: httpx.Client | None = None) -> None:
        self.base_url = base_url
        self.token = settings.orch_token.get_secret_value()
        self.hmac = (
            settings.orch_hmac_secret.get_secret_value() if settings.orch_hmac_secret else ""
        )
        self.http = http or httpx.Client(base_url=base_url, timeout=60)
        if self.hmac:
            self.http.auth = Signer(self.hmac)

    def headers(self, body: bytes = b"", /, **extra: str) -> dict[str, str]:
        """A good request's headers; its signature is made when it is sent, over what is sent
        (so `body` is not needed; it is accepted for the callers that pass it)."""
        del body
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        if self.hmac:
            headers |= {"X-Timestamp": f"{time.time():.6f}", "X-Signature": SIGN_ON_SEND}
        return headers | extra

    def signed(self, method: str, target: str, body: bytes = b"", **extra: str) -> dict[str, str]:
        """Headers signed now for one request (`target`: its path and query as sent), to send
        again as they are: a replay."""
        headers = self.headers(**extra)
        if self.hmac:
            headers |= signature_headers(self.hmac, method, target, body)
        return headers

    def request(
        self, method: str, path: str, payload: Any = None, **headers: str
    ) -> httpx.Response:
        body = b"" if payload is None else json.dumps(payload).encode()
        return self.http.request(method, path, content=body, headers=self.headers(**headers))

    def post(self, path: str, payload: Any = None, **headers: str) -> httpx.Response:
        return self.request("POST", path, payload if payload is not None else {}, **headers)

    def get(self, path: str) -> httpx.Response:
        return self.request("GET", path)

    def wait_run(
        self, run_id: str, timeout_s: float = 300, interval_s: float = 1
    ) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            run: dict[str, Any] = self.get(f"/runs/{run_id}").json()
            return run if run.get("status") in FINAL else None

        run: dict[str, Any] = wait_until(
            done, timeout_s=timeout_s, what=f"run {run_id} to finish", interval_s=interval_s
        )
        return run

    def create_tenant(self, poll_s: float = 1, **fields: Any) -> dict[str, Any]:
        response = self.post("/tenants", fields, **{"Idempotency-Key": str(uuid.uuid4())})
        assert response.status_code == 202, response.text
        created: dict[str, Any] = response.json()
        run = self.wait_run(created["run_id"], interval_s=poll_s)
        tenant: dict[str, Any] = self.get(f"/tenants/{created['tenant_id']}").json()
        assert run["status"] == "SUCCESS", f"provision of {fields['slug']} ended {run}: {tenant}"
        return tenant
