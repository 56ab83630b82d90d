"""The API in-process with its dependencies overridden by fakes (`fakes.py`): route contracts
in milliseconds, no stack. A caller signs its requests as real callers do."""

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from rp9_pipelines.api.deps import (
    current_settings,
    get_dagster,
    get_key_store,
    get_promotions,
    get_queues,
    get_signatures,
    get_tenants,
)
from rp9_pipelines.api.main import create_app
from rp9_pipelines.api.routes.restore_drills import get_drills
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.api.fakes import (
    FakeDagster,
    FakeDrills,
    FakeKeyStore,
    FakePromotions,
    FakeQueues,
    FakeSignatures,
    FakeTenants,
)
from rp9_pipelines_tests.api_client import Api

BASE_DOMAIN = "rp9.test"
HMAC_SECRET = "h" * 40


@pytest.fixture
def api_settings() -> Settings:
    # Nothing listens at these addresses: a route that reached past the fakes would fail.
    return Settings(
        rp9_env="development",
        orch_token=SecretStr("t" * 40),
        orch_hmac_secret=SecretStr(HMAC_SECRET),
        base_domain=BASE_DOMAIN,
        n8n_version="2.20.12",
        database_url="postgresql://rp9@127.0.0.1:9/nowhere",
        redis_url="redis://127.0.0.1:9/0",
        vault_addr="http://127.0.0.1:9",
        vault_token=SecretStr("not-used"),
        dagster_graphql_url="http://127.0.0.1:9/graphql",
    )


@pytest.fixture
def dagster() -> FakeDagster:
    return FakeDagster()


@pytest.fixture
def tenants() -> FakeTenants:
    return FakeTenants()


@pytest.fixture
def keys() -> FakeKeyStore:
    return FakeKeyStore()


@pytest.fixture
def drills() -> FakeDrills:
    return FakeDrills()


@pytest.fixture
def signatures() -> FakeSignatures:
    return FakeSignatures()


@pytest.fixture
def promotions(tenants: FakeTenants) -> FakePromotions:
    return FakePromotions(tenants)


@pytest.fixture
def queues() -> FakeQueues:
    return FakeQueues()


@pytest.fixture
def app(
    api_settings: Settings,
    dagster: FakeDagster,
    tenants: FakeTenants,
    queues: FakeQueues,
    keys: FakeKeyStore,
    drills: FakeDrills,
    signatures: FakeSignatures,
    promotions: FakePromotions,
) -> FastAPI:
    app = create_app()
    app.dependency_overrides = {
        current_settings: lambda: api_settings,
        get_dagster: lambda: dagster,
        get_tenants: lambda: tenants,
        get_queues: lambda: queues,
        get_key_store: lambda: keys,
        get_drills: lambda: drills,
        get_signatures: lambda: signatures,
        get_promotions: lambda: promotions,
    }
    return app


@pytest.fixture
def api(app: FastAPI, api_settings: Settings) -> Api:
    """A caller with the token and the HMAC signature, as `make test`'s callers."""
    # In-process, and no lifespan (the client is not entered): no Traefik file is written.
    return Api("http://testserver", api_settings, http=TestClient(app))
