import httpx
import pytest
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient

from rp9_pipelines.api.main import create_app
from rp9_pipelines.catalog.migrate import alembic_config
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.conftest import Served


def test_liveness_needs_no_dependency() -> None:
    response = TestClient(create_app()).get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_unknown_route_is_a_json_error_with_a_stable_code() -> None:
    response = TestClient(create_app()).get("/nope")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.stack
def test_readiness_reports_the_migrated_catalog(api_server: Served, settings: Settings) -> None:
    head = ScriptDirectory.from_config(alembic_config(settings.database_url)).get_current_head()
    response = httpx.get(f"{api_server.url}/readyz", timeout=10)
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "catalog_revision": head}


@pytest.mark.stack
def test_openapi_is_served(api_server: Served) -> None:
    assert httpx.get(f"{api_server.url}/docs", timeout=10).status_code == 200
    assert "/healthz" in httpx.get(f"{api_server.url}/openapi.json", timeout=10).json()["paths"]
