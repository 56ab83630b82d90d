import datetime as dt
import os
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog import billing as billing_catalog
from rp9_pipelines.catalog.supabase_migrate import migrate
from rp9_pipelines.catalog.tables import chargeback, resource_samples, tenants, usage, usage_reports
from rp9_pipelines.catalog.tenants import Tenant, get_tenant
from rp9_pipelines.defs.partitions import TENANTS_PARTITION, tenant_day_key
from rp9_pipelines.domain.billing import LedgerEntry
from rp9_pipelines.domain.usage import supabase_identifier
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.supabase import SupabaseResource
from rp9_pipelines.services.chargeback import CHARGEBACK_TABLE
from rp9_pipelines.services.usage import BUSINESS_METRICS_TABLE
from rp9_pipelines.settings import Settings

# The tenant fixtures (an API client, Vault, the tenant databases, a provisioned shared-tier
# tenant) are shared with the lifecycle tests.
from rp9_pipelines_tests.tenants.conftest import api, shared_tenant, tenant_db, vault

__all__ = ["api", "shared_tenant", "tenant_db", "vault"]


@pytest.fixture(scope="session")
def catalog(settings: Settings) -> CatalogResource:
    return CatalogResource(database_url=settings.database_url)


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


def materialize_day(
    instance: dg.DagsterInstance,
    assets: Sequence[dg.AssetsDefinition],
    slug: str,
    day: dt.date,
    resources: dict[str, Any],
    *,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    """Materialise a tenant's day of `assets`, its partition key registered first."""
    if slug not in instance.get_dynamic_partitions(TENANTS_PARTITION):
        instance.add_dynamic_partitions(TENANTS_PARTITION, [slug])
    return dg.materialize(
        list(assets),
        partition_key=tenant_day_key(day.isoformat(), slug),
        resources=resources,
        instance=instance,
        raise_on_error=raise_on_error,
    )


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


def supabase_ledger_entry(
    catalog: CatalogResource, tenant_id: uuid.UUID, day: dt.date
) -> LedgerEntry | None:
    """The ledger's entry of the tenant's day in Supabase (one at most: the day is upserted)."""
    with catalog.begin() as connection:
        entries = billing_catalog.ledger(connection, billing_catalog.SUPABASE, tenant_id, day)
    assert [e.identifier for e in entries] in ([], [supabase_identifier(str(tenant_id), day)])
    return entries[0] if entries else None
