"""A tenant's day from real Postgres: the aggregation over an `execution_entity` shaped like
n8n's, and the `tenant_usage_daily` asset over container samples in the catalog."""

import datetime as dt
import uuid

import dagster as dg
import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog import usage as store
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.defs.usage.assets import tenant_usage_daily
from rp9_pipelines.domain.usage import BYTES_PER_GB, NS_PER_S, percentile_cont
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.settings import PlatformSettings, sqlalchemy_url
from rp9_pipelines_tests.usage.conftest import materialize_day

pytestmark = pytest.mark.stack

DAY = dt.date(2026, 11, 20)
MIDNIGHT = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
# n8n 2.20's `execution_entity` (the columns the aggregation reads, with their types).
EXECUTION_ENTITY = """
CREATE TABLE {schema}.execution_entity (
    id serial PRIMARY KEY, finished boolean NOT NULL, mode varchar NOT NULL,
    "startedAt" timestamp(3) with time zone, "stoppedAt" timestamp(3) with time zone,
    status varchar NOT NULL, "workflowId" varchar(36) NOT NULL,
    "deletedAt" timestamp(3) with time zone,
    "createdAt" timestamp(3) with time zone NOT NULL DEFAULT CURRENT_TIMESTAMP(3)
)
"""


def _execution(
    created_s: float,
    wait_s: float | None,
    run_s: float | None,
    status: str = "success",
    mode: str = "webhook",
) -> dict[str, object]:
    created = MIDNIGHT + dt.timedelta(seconds=created_s)
    started = created + dt.timedelta(seconds=wait_s) if wait_s is not None else None
    stopped = started + dt.timedelta(seconds=run_s) if started and run_s is not None else None
    return {
        "finished": status == "success",
        "mode": mode,
        "startedAt": started,
        "stoppedAt": stopped,
        "status": status,
        "workflowId": "wf1",
        "createdAt": created,
    }


def test_execution_day_aggregates_like_the_definition(fresh_database_url: str) -> None:
    engine = sa.create_engine(sqlalchemy_url(fresh_database_url), poolclass=sa.NullPool)
    waits = [0.05, 0.1, 0.2, 0.4, 1.5, 3.0]
    runs = [0.3, 0.5, 1.25, 2.0, 0.75, 9.0]
    counted = [_execution(3600 + i, w, r) for i, (w, r) in enumerate(zip(waits, runs, strict=True))]
    counted += [
        _execution(7200, 0.2, 0.1, status="error"),
        _execution(
            86_399.5, 0.1, 1.0, status="crashed"
        ),  # created 23:59:59.5, stops after midnight
        _execution(50_000, 0.5, None, status="running"),  # counted, no duration yet
    ]
    ignored = [
        _execution(4000, 0.1, 0.1, mode="manual"),  # the editor's test run
        _execution(-0.5, 0.1, 0.1),  # the day before
        _execution(86_400, 0.1, 0.1),  # the day after
    ]
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE SCHEMA t_synthetic"))
        connection.execute(sa.text(EXECUTION_ENTITY.format(schema="t_synthetic")))
        connection.execute(
            sa.text(
                'INSERT INTO t_synthetic.execution_entity (finished, mode, "startedAt",'
                ' "stoppedAt", status, "workflowId", "createdAt") VALUES (:finished, :mode,'
                " :startedAt, :stoppedAt, :status, :workflowId, :createdAt)"
            ),
            counted + ignored,
        )
    engine.dispose()
    n8n_data = N8nDataResource(admin_url=fresh_database_url)
    database = sa.make_url(fresh_database_url).database
    assert database

    day = n8n_data.execution_day_in(database, "t_synthetic", DAY)

    durations = [r * 1000 for r in runs] + [100.0, 1000.0]
    queue_waits = [w * 1000 for w in waits] + [200.0, 100.0, 500.0]
    assert day is not None
    assert (day.executions, day.failures) == (9, 2)
    assert day.duration_ms_sum == round(sum(durations))
    assert day.latency_p95_ms == pytest.approx(percentile_cont(durations, 0.95))
    assert day.queue_wait_p95_ms == pytest.approx(percentile_cont(queue_waits, 0.95))
    # No n8n tables (never started, or purged) is not a day without executions.
    assert n8n_data.execution_day_in(database, "t_absent", DAY) is None


def _samples(tenant_id: uuid.UUID) -> list[store.SampleRow]:
    """Two containers sampled every minute from 23:50 the day before to 00:10 the day after:
    main at a quarter core and 1 GiB, a worker restarted at noon at half a core and 2 GiB."""
    rows = []
    start = MIDNIGHT - dt.timedelta(minutes=10)
    for minute in range(24 * 60 + 21):
        at = start + dt.timedelta(minutes=minute)
        rows.append(store.SampleRow(tenant_id, "main", at, minute * 15 * NS_PER_S, BYTES_PER_GB))
        since_restart = minute if at < MIDNIGHT + dt.timedelta(hours=12) else minute - 730
        rows.append(
            store.SampleRow(
                tenant_id, "worker-1", at, since_restart * 30 * NS_PER_S, 2 * BYTES_PER_GB
            )
        )
    return rows


def _materialize(
    instance: dg.DagsterInstance,
    tenant: Tenant,
    catalog: CatalogResource,
    n8n_data: N8nDataResource,
) -> dg.ExecuteInProcessResult:
    resources = {"catalog": catalog, "n8n_data": n8n_data, "settings": PlatformSettings()}
    return materialize_day(instance, [tenant_usage_daily], tenant.slug, DAY, resources)


def test_usage_from_samples_is_an_idempotent_upsert(
    catalog_tenant: Tenant,
    catalog: CatalogResource,
    n8n_data: N8nDataResource,
    instance: dg.DagsterInstance,
) -> None:
    tenant = catalog_tenant
    with catalog.begin() as connection:
        assert store.insert_samples(connection, _samples(tenant.id)) == 2 * (24 * 60 + 21)

    first = _materialize(instance, tenant, catalog, n8n_data)
    with catalog.begin() as connection:
        row = store.get_usage(connection, tenant.id, DAY)
    assert row is not None
    # The tenant has no n8n tables and no row yet: a day of zero executions.
    assert (row["executions"], row["failures"], row["latency_p95_ms"]) == (0, 0, None)
    # main: 0.25 core x 24 h; worker: 0.5 core x 24 h, less the 30 s of the minute in which it
    # restarted (its counter read 0 again at noon: only what came after the restart counts).
    assert row["cpu_seconds"] == pytest.approx(24 * 3600 * 0.75 - 30, abs=0.01)
    assert row["memory_gb_hours"] == pytest.approx(24 * 1 + 24 * 2, rel=1e-6)
    metadata = first.asset_materializations_for_node("tenant_usage_daily")[0].metadata
    assert metadata["changed"].value is True
    assert metadata["samples"].value == 2 * (24 * 60 + 2)  # the day's, plus one each side

    second = _materialize(instance, tenant, catalog, n8n_data)
    with catalog.begin() as connection:
        again = store.get_usage(connection, tenant.id, DAY)
    assert again == row  # collected_at included: nothing was rewritten
    assert (
        second.asset_materializations_for_node("tenant_usage_daily")[0].metadata["changed"].value
        is False
    )


def test_a_purged_tenant_keeps_the_day_it_was_measured(
    catalog_tenant: Tenant,
    catalog: CatalogResource,
    n8n_data: N8nDataResource,
    instance: dg.DagsterInstance,
) -> None:
    tenant = catalog_tenant
    with catalog.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO usage (tenant_id, day, executions, failures, duration_ms_sum)"
                " VALUES (:t, :d, 42, 1, 4200)"
            ),
            {"t": tenant.id, "d": DAY},
        )
    result = _materialize(instance, tenant, catalog, n8n_data)
    with catalog.begin() as connection:
        row = store.get_usage(connection, tenant.id, DAY)
    assert row is not None
    assert (row["executions"], row["failures"], row["duration_ms_sum"]) == (42, 1, 4200)
    metadata = result.asset_materializations_for_node("tenant_usage_daily")[0].metadata
    assert metadata["kept_existing"].value is True
