"""Business metrics in Supabase: the project's migration on a real Postgres, upserts through
supabase-py against the real PostgREST (behind Traefik at /rest/v1), the ledger."""

import datetime as dt
import os
import shutil
from pathlib import Path

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog import usage as store
from rp9_pipelines.catalog.supabase_migrate import MIGRATIONS, migrate
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.defs.usage.assets import supabase_business_metrics
from rp9_pipelines.domain.usage import DayUsage
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.supabase import SupabaseResource
from rp9_pipelines.services.usage import BUSINESS_METRICS_TABLE
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.usage.conftest import materialize_day, supabase_ledger_entry

pytestmark = pytest.mark.stack

DAY = dt.date(2026, 11, 20)


def test_migrations_apply_once_and_refuse_an_edited_file(
    fresh_database_url: str, tmp_path: Path
) -> None:
    first = migrate(fresh_database_url)
    assert first.applied == [p.name for p in sorted(MIGRATIONS.glob("*.sql"))]
    again = migrate(fresh_database_url)
    assert (again.applied, again.already) == ([], first.applied)

    engine = sa.create_engine(sqlalchemy_url(fresh_database_url), poolclass=sa.NullPool)
    with engine.connect() as connection:
        secured = connection.execute(
            sa.text(
                "SELECT relname, relrowsecurity FROM pg_class WHERE relname IN"
                " ('business_metrics_daily', 'chargeback_monthly') ORDER BY relname"
            )
        ).all()
        anon_can_read = connection.execute(
            sa.text("SELECT has_table_privilege('anon', 'public.business_metrics_daily', 'SELECT')")
        ).scalar()
    engine.dispose()
    assert secured == [("business_metrics_daily", True), ("chargeback_monthly", True)]
    assert anon_can_read is False

    edited = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, edited)
    target = sorted(edited.glob("*.sql"))[0]
    target.write_text(target.read_text() + "\n-- edited\n")
    with pytest.raises(RuntimeError, match="changed after it was applied"):
        migrate(fresh_database_url, edited)


def _materialize(
    instance: dg.DagsterInstance,
    tenant: Tenant,
    catalog: CatalogResource,
    supabase: SupabaseResource,
) -> dg.ExecuteInProcessResult:
    resources = {"catalog": catalog, "supabase": supabase}
    return materialize_day(
        instance, [supabase_business_metrics], tenant.slug, DAY, resources, raise_on_error=False
    )


def test_business_metrics_upsert_is_idempotent_and_follows_corrections(
    catalog_tenant: Tenant,
    catalog: CatalogResource,
    supabase: SupabaseResource,
    instance: dg.DagsterInstance,
) -> None:
    tenant = catalog_tenant
    with catalog.begin() as connection:
        store.upsert_usage(connection, tenant.id, DAY, DayUsage(7, 2, 7000, 950.5, 12.0, 3.5, 0.25))

    for _ in range(2):  # a re-run writes the same single row
        assert _materialize(instance, tenant, catalog, supabase).success
        rows = supabase.select(BUSINESS_METRICS_TABLE, {"tenant_id": str(tenant.id)})
        assert len(rows) == 1
        assert (rows[0]["day"], rows[0]["executions"], rows[0]["failures"]) == (
            DAY.isoformat(),
            7,
            2,
        )
        assert rows[0]["tenant_slug"] == tenant.slug
        assert rows[0]["error_rate"] == pytest.approx(2 / 7, abs=1e-6)
        assert rows[0]["latency_p95_ms"] == 950.5
    ledger = supabase_ledger_entry(catalog, tenant.id, DAY)
    assert ledger is not None
    assert (ledger.status, ledger.quantity, ledger.error) == ("sent", 7, None)
    assert ledger.sent_at is not None

    # The day is corrected (re-measured): Supabase and the ledger follow, still one row each.
    with catalog.begin() as connection:
        store.upsert_usage(connection, tenant.id, DAY, DayUsage(9, 2, 9000, 950.5, 12.0, 3.5, 0.25))
    assert _materialize(instance, tenant, catalog, supabase).success
    rows = supabase.select(BUSINESS_METRICS_TABLE, {"tenant_id": str(tenant.id)})
    assert [row["executions"] for row in rows] == [9]
    ledger = supabase_ledger_entry(catalog, tenant.id, DAY)
    assert ledger is not None
    assert (ledger.status, ledger.quantity) == ("sent", 9)


def test_a_refused_push_is_recorded_as_failed(
    catalog_tenant: Tenant,
    catalog: CatalogResource,
    supabase: SupabaseResource,
    settings: Settings,
    instance: dg.DagsterInstance,
) -> None:
    tenant = catalog_tenant
    with catalog.begin() as connection:
        store.upsert_usage(connection, tenant.id, DAY, DayUsage(3, 0, 300, None, None, 0.0, 0.0))
    # A key PostgREST cannot verify: the real server refuses it.
    forged = SupabaseResource(
        url=settings.supabase_url, service_role_key="eyJhbGciOiJIUzI1NiJ9.e30.bad"
    )
    result = _materialize(instance, tenant, catalog, forged)
    assert not result.success
    ledger = supabase_ledger_entry(catalog, tenant.id, DAY)
    assert ledger is not None
    assert ledger.status == "failed"
    assert ledger.error
    assert ledger.sent_at is None
    assert supabase.select(BUSINESS_METRICS_TABLE, {"tenant_id": str(tenant.id)}) == []

    # The retry with the right key delivers, and the ledger says so.
    assert _materialize(instance, tenant, catalog, supabase).success
    ledger = supabase_ledger_entry(catalog, tenant.id, DAY)
    assert ledger is not None
    assert (ledger.status, ledger.error) == ("sent", None)


def test_the_anon_key_can_neither_read_nor_write_metrics(
    settings: Settings, supabase: SupabaseResource
) -> None:
    anon = os.environ.get("SUPABASE_ANON_KEY", "")
    assert anon, "SUPABASE_ANON_KEY missing from the stack's environment"
    headers = {"apikey": anon, "Authorization": f"Bearer {anon}"}
    url = f"{settings.supabase_url}/rest/v1/{BUSINESS_METRICS_TABLE}"
    read = httpx.get(url, headers=headers, timeout=10)
    assert read.status_code in (401, 403), read.text
    write = httpx.post(url, headers=headers, json={"tenant_id": "x"}, timeout=10)
    assert write.status_code in (401, 403), write.text
