import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.resources.docker_runtime import DockerRuntimeResource
from rp9_pipelines.resources.tenant_db import TenantDatabaseResource
from rp9_pipelines.resources.tenant_runtime import runtime_from_settings
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.conftest import Served
from rp9_pipelines_tests.n8n_workflows import echo_webhook


def unique_slug(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def api(settings: Settings, api_server: Served) -> Api:
    return Api(api_server.url, settings)


@pytest.fixture(scope="session")
def vault(settings: Settings) -> VaultResource:
    return VaultResource(
        vault_addr=settings.vault_addr, vault_token=settings.vault_token.get_secret_value()
    )


@pytest.fixture(scope="session")
def tenant_db(settings: Settings) -> TenantDatabaseResource:
    return TenantDatabaseResource(admin_url=settings.tenant_admin_url)


@pytest.fixture(scope="session")
def runtime(settings: Settings) -> DockerRuntimeResource:
    """The tenant runtime the platform runs on (TENANT_RUNTIME: this engine, or a Swarm)."""
    return runtime_from_settings(settings)


def _provisioned(api: Api, **fields: Any) -> Iterator[dict[str, Any]]:
    tenant = api.create_tenant(**fields)
    yield tenant
    response = api.request("DELETE", f"/tenants/{tenant['id']}?purge=true")
    assert response.status_code == 202, response.text
    assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"


@pytest.fixture(scope="session")
def shared_tenant(api: Api) -> Iterator[dict[str, Any]]:
    """A shared-tier tenant (starter: one worker), provisioned through the API."""
    yield from _provisioned(api, slug=unique_slug("sh"), name="Shared Co", plan="starter")


@pytest.fixture(scope="session")
def dedicated_tenant(api: Api) -> Iterator[dict[str, Any]]:
    """A dedicated-tier tenant in queue mode with two workers."""
    yield from _provisioned(
        api, slug=unique_slug("dd"), name="Dedicated Co", plan="pro", tier="dedicated", workers=2
    )


class TenantN8n:
    """A tenant's n8n as its users reach it: through Traefik, by host name."""

    def __init__(self, settings: Settings, vault: VaultResource, tenant: dict[str, Any]) -> None:
        self.names = TenantNames(tenant["slug"], tenant["tier"])
        self.host = f"{tenant['slug']}.{settings.base_domain}"
        secrets = vault.read(self.names.vault_path) or {}
        self.http = httpx.Client(
            base_url=settings.traefik_url,
            headers={"Host": self.host, "X-N8N-API-KEY": secrets.get("n8n_api_key", "")},
            timeout=60,
        )

    def install_echo(self, path: str) -> str:
        created = self.http.post("/api/v1/workflows", json=echo_webhook(path))
        assert created.status_code == 200, created.text
        workflow_id = str(created.json()["id"])
        activated = self.http.post(f"/api/v1/workflows/{workflow_id}/activate")
        assert activated.status_code == 200, activated.text
        return workflow_id

    def call(self, path: str, payload: dict[str, Any]) -> httpx.Response:
        return self.http.post(f"/webhook/{path}", json=payload)
