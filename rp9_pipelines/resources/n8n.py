import time
from typing import Any

import dagster as dg
import httpx

API_KEY_LABEL = "rp9-control-plane"


class N8nBootstrapError(RuntimeError):
    pass


class N8nResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Talks to tenants' n8n through Traefik's entrypoint, by Host header."""

    traefik_url: str
    timeout_s: float = 30.0

    def client(self, host: str, api_key: str | None = None) -> httpx.Client:
        headers = {"Host": host}
        if api_key:
            headers["X-N8N-API-KEY"] = api_key
        return httpx.Client(base_url=self.traefik_url, headers=headers, timeout=self.timeout_s)

    def is_ready(self, host: str) -> bool:
        try:
            with self.client(host) as client:
                return client.get("/healthz/readiness", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, host: str, timeout_s: float) -> float:
        """Seconds until `host` answers readiness through the proxy; raises at the deadline."""
        started = time.monotonic()
        while not self.is_ready(host):
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"n8n at {host} not ready through Traefik after {timeout_s} s")
            time.sleep(0.5)
        return time.monotonic() - started

    def create_api_key(self, host: str, email: str, password: str) -> str:
        """Log in as the owner and mint the control plane's API key (shown once by n8n)."""
        with self.client(host) as client:
            login = client.post(
                "/rest/login", json={"emailOrLdapLoginId": email, "password": password}
            )
            if login.status_code != 200:
                raise N8nBootstrapError(f"owner login refused at {host}: HTTP {login.status_code}")
            # The cookie is Secure when served over TLS; pass it explicitly either way.
            cookie = {"Cookie": f"n8n-auth={login.cookies.get('n8n-auth')}"}
            scopes = client.get("/rest/api-keys/scopes", headers=cookie)
            scopes.raise_for_status()
            existing = client.get("/rest/api-keys", headers=cookie)
            existing.raise_for_status()
            for key in existing.json()["data"]:
                # A key from an interrupted earlier run cannot be read back: replace it.
                if key.get("label") == API_KEY_LABEL:
                    client.delete(f"/rest/api-keys/{key['id']}", headers=cookie).raise_for_status()
            created = client.post(
                "/rest/api-keys",
                headers=cookie,
                json={"label": API_KEY_LABEL, "scopes": scopes.json()["data"], "expiresAt": None},
            )
            if created.status_code != 200:
                raise N8nBootstrapError(f"API key creation failed: HTTP {created.status_code}")
            body: dict[str, Any] = created.json()["data"]
            return str(body["rawApiKey"])

    def api_key_works(self, host: str, api_key: str) -> bool:
        with self.client(host, api_key) as client:
            return client.get("/api/v1/workflows", params={"limit": 1}).status_code == 200
