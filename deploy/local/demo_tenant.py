"""`make dev`'s last step: a demo tenant provisioned through the API, as a caller would."""

import sys
import time

import httpx

from rp9_pipelines.api.auth import signature_headers
from rp9_pipelines.settings import Settings, get_settings

SLUG = "demo"


def answers(settings: Settings) -> bool:
    host = f"{SLUG}.{settings.base_domain}"
    try:
        ready = httpx.get(
            f"{settings.traefik_url}/healthz/readiness", headers={"Host": host}, timeout=5
        )
    except httpx.HTTPError:
        return False
    return ready.status_code == 200


def main() -> int:
    settings = get_settings()
    api = f"http://127.0.0.1:{settings.orch_port}"
    token = settings.orch_token.get_secret_value()
    secret = settings.orch_hmac_secret.get_secret_value() if settings.orch_hmac_secret else ""

    def call(method: str, path: str, body: bytes = b"") -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        if secret:  # over the method, the path as sent and the body; each signature used once
            headers |= signature_headers(secret, method, path, body)
        return httpx.request(method, api + path, content=body, headers=headers, timeout=60)

    port = settings.traefik_url.rsplit(":", 1)[1]
    existing = call("GET", f"/tenants/{SLUG}")
    if existing.status_code == 200 and existing.json()["status"] == "active" and answers(settings):
        run_id = None
    else:
        # New, failed, or active in the catalog without a stack that answers (its containers
        # were removed since): provisioning converges it.
        body = b'{"slug": "demo", "name": "Demo tenant", "plan": "starter"}'
        created = call("POST", "/tenants", body) if existing.status_code == 404 else None
        if created is None:
            created = call("POST", f"/tenants/{SLUG}/provision", b"{}")
        if created.status_code != 202:
            print(f"demo tenant: {created.status_code} {created.text}", file=sys.stderr)
            return 1
        run_id = created.json()["run_id"]
        print(f"provisioning the demo tenant (run {run_id}) ...", flush=True)
    deadline = time.monotonic() + 300
    while run_id and time.monotonic() < deadline:
        status = call("GET", f"/runs/{run_id}").json()["status"]
        if status in {"SUCCESS", "FAILURE", "CANCELED"}:
            if status != "SUCCESS":
                print(f"demo tenant provisioning ended {status}", file=sys.stderr)
                return 1
            break
        time.sleep(1)
    print(f"  demo tenant n8n   http://{SLUG}.{settings.base_domain}:{port}/")
    print("  its owner login   `make demo-credentials`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
