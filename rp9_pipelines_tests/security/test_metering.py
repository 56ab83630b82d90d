"""Metering and enforcement count executions from a source the tenant cannot edit: executions it
deletes afterwards, through n8n's API or straight from its tables with its own database login,
still count for usage and for its quota."""

import datetime as dt
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog import tenants as catalog
from rp9_pipelines.catalog.tables import enforcement_events
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.services.usage import collect_day
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.security.conftest import unique_slug
from rp9_pipelines_tests.tenants.conftest import TenantN8n
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack

RUNS = 5


def enforce(api: Api, slug: str) -> None:
    response = api.post("/enforcement/run", {"tenants": [slug]})
    assert response.status_code == 202, response.text
    assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"


def delete_as_the_tenant(settings: Settings, vault: VaultResource, tenant: Tenant) -> int:
    """What a tenant with code execution can do with the password its containers hold."""
    names = tenant.names
    secrets = vault.read(names.vault_path) or {}
    url = urlsplit(settings.database_url)
    with psycopg.connect(
        host=url.hostname,
        port=url.port,
        dbname=names.db_name,
        user=names.db_role,
        password=secrets["db_password"],
        connect_timeout=5,
    ) as connection:
        deleted = connection.execute(f'DELETE FROM "{names.db_schema}".execution_entity').rowcount
    return int(deleted)


def test_executions_deleted_after_they_ran_still_count_for_usage_and_the_quota(
    api: Api, settings: Settings, vault: VaultResource
) -> None:
    created = api.create_tenant(slug=unique_slug("meter"), name="Meter Co", plan="starter")
    slug = created["slug"]
    catalog_db = CatalogResource(database_url=settings.database_url)
    n8n_data = N8nDataResource(admin_url=settings.tenant_admin_url)
    try:
        with catalog_db.begin() as connection:
            tenant = catalog.require_tenant(connection, slug)
            catalog.set_quota(connection, tenant.id, "manual", {"executions_per_month": RUNS})
        n8n = TenantN8n(settings, vault, created)
        n8n.install_echo("metered")
        for i in range(RUNS):
            assert n8n.call("metered", {"i": i}).status_code == 200
        today = dt.datetime.now(dt.UTC).date()

        def recorded() -> bool:
            day = n8n_data.execution_day(tenant.names, today)
            return day is not None and day.executions == RUNS

        wait_until(recorded, timeout_s=60, what=f"{RUNS} executions recorded by n8n")
        # An enforcement run sees them appear (with a quota they are far from).
        with catalog_db.begin() as connection:
            catalog.set_quota(connection, tenant.id, "manual", {"executions_per_month": 1000})
        enforce(api, slug)  # the platform saw the executions appear

        # Then the tenant deletes them: through n8n's API, then what is left, from its own tables.
        listed = n8n.http.get("/api/v1/executions", params={"limit": 100}).json()["data"]
        assert len(listed) == RUNS
        for execution in listed:
            assert n8n.http.delete(f"/api/v1/executions/{execution['id']}").status_code == 200
        delete_as_the_tenant(settings, vault, tenant)
        assert n8n_data.count_executions(tenant.names) == 0

        collected = collect_day(catalog_db, n8n_data, tenant, today, dt.timedelta(minutes=5))
        assert collected.usage.executions == RUNS

        with catalog_db.begin() as connection:
            catalog.set_quota(connection, tenant.id, "manual", {"executions_per_month": RUNS})
        enforce(api, slug)
        state: dict[str, Any] = api.get(f"/tenants/{slug}").json()
        assert state["status"] == "suspended"
        with catalog_db.begin() as connection:
            actions = connection.execute(
                sa.select(enforcement_events.c.action, enforcement_events.c.value).where(
                    enforcement_events.c.tenant_id == tenant.id
                )
            ).all()
        assert ("suspend", RUNS) in [(a.action, a.value) for a in actions]
    finally:
        response = api.request("DELETE", f"/tenants/{slug}?purge=true")
        assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"
