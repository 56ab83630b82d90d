"""A caller of the internal API as real clients call it: Bearer token and HMAC signature."""

import json
import time
import uuid
from typing import Any

import httpx

from rp9_pipelines.api.auth import sign
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.waiting import wait_until

FINAL = {"SUCCESS", "FAILURE", "CANCELED"}


class Api:
    def __init__(self, base_url: str, settings: Settings) -> None:
        self.base_url = base_url
        self.token = settings.orch_token.get_secret_value()
        self.hmac = (
            settings.orch_hmac_secret.get_secret_value() if settings.orch_hmac_secret else ""
        )
        self.http = httpx.Client(base_url=base_url, timeout=60)

    def headers(self, body: bytes = b"", **extra: str) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"}
        if self.hmac:
            timestamp = str(int(time.time()))
            headers |= {"X-Timestamp": timestamp, "X-Signature": sign(self.hmac, timestamp, body)}
        return headers | extra

    def request(
        self, method: str, path: str, payload: Any = None, **headers: str
    ) -> httpx.Response:
        body = b"" if payload is None else json.dumps(payload).encode()
        return self.http.request(method, path, content=body, headers=self.headers(body, **headers))

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
