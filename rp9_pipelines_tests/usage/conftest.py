import os
import uuid
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog.tables import chargeback, resource_samples, tenants, usage, usage_reports
from rp9_pipelines.catalog.tenants import Tenant, get_tenant
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.supabase import SupabaseResource
from rp9_pipelines.resources.tenant_db import TenantDatabaseResource
from rp9_pipelines.settings import Settings
from rp9_pipelines.usage.collect import BUSINESS_METRICS_TABLE, CHARGEBACK_TABLE
from rp9_pipelines.usage.supabase_migrate import migrate

# The tenant fixtures (an API client, Vault, a provisioned shared-tier tenant) are shared with
# the lifecycle tests.
from rp9_pipelines_tests.tenants.conftest import api, shared_tenant, vault

__all__ = ["api", "shared_tenant", "vault"]


@pytest.fixture(scope="session")
def catalog(settings: Settings) -> CatalogResource:
    return CatalogResource(database_url=settings.database_url)


@pytest.fixture(scope="session")
def tenant_db(settings: Settings) -> TenantDatabaseResource:
    return TenantDatabaseResource(admin_url=settings.database_url)


@pytest.fixture(scope="session")
def supabase(settings: Settings) -> SupabaseResource:
    """The real Supabase REST API (PostgREST behind Traefik), migrated."""
    database_url = os.environ.get("SUPABASE_DB_URL", "")
    if not (settings.supabase_url and database_url):
        pytest.fail("SUPABASE_URL / SUPABASE_DB_URL missing: load .stack/env (stack.sh up)")
    migrate(database_url)
    resource = SupabaseResource(
        url=settings.supabase_url,
        service_role_key=settings.supabase_service_role_key.get_secret_value(),
    )
    health = resource.ping()
    assert health.ok, health.detail
    return resource


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.DagsterInstance.ephemeral() as ephemeral:
        yield ephemeral


def usage_resources(
    catalog: CatalogResource, tenant_db: TenantDatabaseResource, supabase: SupabaseResource
) -> dict[str, Any]:
    return {"catalog": catalog, "tenant_db": tenant_db, "supabase": supabase}


def forget_usage(
    catalog: CatalogResource, supabase: SupabaseResource, tenant_id: uuid.UUID
) -> None:
    """Remove what usage wrote for a tenant: catalog rows and Supabase rows."""
    with catalog.begin() as connection:
        for table in (usage_reports, usage, resource_samples, chargeback):
            connection.execute(sa.delete(table).where(table.c.tenant_id == tenant_id))
    for name in (BUSINESS_METRICS_TABLE, CHARGEBACK_TABLE):
        supabase.delete(name, {"tenant_id": str(tenant_id)})


@pytest.fixture
def catalog_tenant(catalog: CatalogResource, supabase: SupabaseResource) -> Iterator[Tenant]:
    """A tenant that exists only in the catalog (no n8n, no containers), marked `deleted` so
    that no schedule or sensor of any session acts on it; removed with its usage afterwards."""
    slug = f"us-{uuid.uuid4().hex[:8]}"
    with catalog.begin() as connection:
        tenant_id = connection.execute(
            sa.insert(tenants)
            .values(
                slug=slug, name="Usage Co", plan="starter", status="deleted", n8n_version="2.20.12"
            )
            .returning(tenants.c.id)
        ).scalar_one()
        tenant = get_tenant(connection, tenant_id)
    assert tenant is not None
    yield tenant
    forget_usage(catalog, supabase, tenant_id)
    with catalog.begin() as connection:
        connection.execute(sa.delete(tenants).where(tenants.c.id == tenant_id))
