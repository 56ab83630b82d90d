"""A real tenant (provisioned through the API: n8n in Docker behind Traefik) runs N webhook
executions; its containers are sampled; `tenant_usage_daily` for (today, slug) shows N, and so
do the Supabase row and the Stripe meter's summary (the project's Stripe-compatible server,
through the real SDK); materialising again leaves all three at N."""

import datetime as dt
import os
import uuid
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog import usage as store
from rp9_pipelines.catalog.tables import resource_samples, usage
from rp9_pipelines.defs.billing.stripe import stripe_meter_events
from rp9_pipelines.defs.usage.assets import supabase_business_metrics, tenant_usage_daily
from rp9_pipelines.defs.usage.schedules import sample_resources_job
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.docker_runtime import DockerRuntimeResource
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.resources.stripe import StripeResource
from rp9_pipelines.resources.supabase import SupabaseResource
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.services.billing import meter_summary
from rp9_pipelines.services.usage import BUSINESS_METRICS_TABLE
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.tenants.conftest import TenantN8n
from rp9_pipelines_tests.usage.conftest import (
    forget_usage,
    materialize_day,
    supabase_ledger_entry,
)
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack

# A tenant's day: usage, then what is downstream of it (Supabase, Stripe).
DAY_ASSETS = (tenant_usage_daily, supabase_business_metrics, stripe_meter_events)

N = 5


def test_n_executions_reach_usage_supabase_and_stripe_once(
    settings: Settings,
    vault: VaultResource,
    shared_tenant: dict[str, Any],
    catalog: CatalogResource,
    n8n_data: N8nDataResource,
    supabase: SupabaseResource,
    instance: dg.DagsterInstance,
) -> None:
    tenant_id = uuid.UUID(shared_tenant["id"])
    slug, names = shared_tenant["slug"], TenantNames(shared_tenant["slug"], "shared")
    runtime = DockerRuntimeResource(docker_host=settings.docker_host)
    n8n = TenantN8n(settings, vault, shared_tenant)
    path = f"usage-{uuid.uuid4().hex[:8]}"
    n8n.install_echo(path)
    today = dt.datetime.now(dt.UTC).date()
    before = n8n_data.execution_day(names, today)
    already = before.executions if before else 0  # the session's tenant may have run others
    try:
        for i in range(N):
            answer = n8n.call(path, {"i": i})
            assert answer.status_code == 200, answer.text

        def recorded() -> bool:
            day = n8n_data.execution_day(names, today)
            return day is not None and day.executions == already + N

        wait_until(recorded, timeout_s=60, what=f"{N} executions in {slug}'s execution_entity")

        # Two samples of each running container, as the every-minute schedule takes them.
        sampling = {
            "catalog": catalog,
            "docker_runtime": runtime,
            "n8n_data": n8n_data,
            "settings": settings,
        }
        for _ in range(2):
            assert sample_resources_job.execute_in_process(resources=sampling).success
        with catalog.begin() as connection:
            samples = connection.execute(
                sa.select(resource_samples)
                .where(resource_samples.c.tenant_id == tenant_id)
                .order_by(resource_samples.c.container_name, resource_samples.c.sampled_at)
            ).all()
        containers = {row.container_name for row in samples}
        assert len(containers) == 2, containers  # main and its worker
        assert len(samples) >= 4
        for name in containers:
            series = [row for row in samples if row.container_name == name]
            assert series[0].cpu_total_ns > 0
            assert series[-1].cpu_total_ns >= series[0].cpu_total_ns
            assert all(row.memory_bytes > 50 * 1024 * 1024 for row in series)  # a live n8n

        stripe = StripeResource(
            api_key=settings.stripe_secret_key.get_secret_value(),
            api_base=os.environ["STRIPE_API_BASE"],
        )
        resources = {
            "catalog": catalog,
            "n8n_data": n8n_data,
            "supabase": supabase,
            "stripe": stripe,
            "settings": settings,
        }
        rows = []
        for _ in range(2):  # materialising again leaves everything at N
            result = materialize_day(instance, DAY_ASSETS, slug, today, resources)
            assert result.success
            with catalog.begin() as connection:
                rows.append(store.get_usage(connection, tenant_id, today))
                mine = usage.c.tenant_id == tenant_id
                count = connection.execute(
                    sa.select(sa.func.count()).select_from(usage).where(mine)
                ).scalar_one()
            assert count == 1
            ledger = supabase_ledger_entry(catalog, tenant_id, today)
            row = rows[-1]
            assert row is not None
            assert (row["executions"], row["failures"]) == (already + N, 0)
            assert row["duration_ms_sum"] > 0
            assert row["latency_p95_ms"] is not None
            assert row["queue_wait_p95_ms"] is not None
            assert row["cpu_seconds"] > 0
            assert row["memory_gb_hours"] > 0
            remote = supabase.select(BUSINESS_METRICS_TABLE, {"tenant_id": str(tenant_id)})
            assert [(r["day"], r["executions"]) for r in remote] == [
                (today.isoformat(), already + N)
            ]
            assert ledger is not None
            assert (ledger.status, ledger.quantity) == ("sent", already + N)
            billed = meter_summary(stripe.client, catalog.engine, slug, today)
            assert billed == already + N
            metadata = result.asset_materializations_for_node("tenant_usage_daily")[0].metadata
            assert metadata["executions"].value == already + N
        assert rows[0] == rows[1]  # the second run found nothing to change
    finally:
        forget_usage(catalog, supabase, tenant_id)
