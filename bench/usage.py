"""`make bench-usage`: usage aggregation and chargeback, measured on the real components.

1. Aggregation: 10 million synthetic executions across 1,000 tenants, in a throwaway database
   on the stack's Postgres, one schema per tenant with an `execution_entity` shaped like n8n
   2.20's (its columns and indexes), generated server-side with `generate_series`, spread over
   three UTC days. Then every (tenant, day) partition is aggregated with the very call the
   `tenant_usage_daily` asset makes (`N8nDataResource.execution_day_in`: its own
   connection, the same statement), two partitions at a time as two concurrent runs would.
   Generation is timed separately. Goal: aggregation under 60 s.
2. Chargeback: 5,000 tenants x 30 days of `usage` rows (a DataFrame, as the asset reads it)
   through `domain.chargeback.compute` (pandas), plus the CSV the asset writes. Goal under 5 s.

The database is dropped afterwards, whatever happens.
"""

import argparse
import concurrent.futures
import datetime as dt
import io
import statistics
import time
import uuid

import numpy as np
import pandas as pd
import psycopg
import sqlalchemy as sa
from psycopg import sql

from rp9_pipelines.domain import chargeback
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.settings import ChargebackSettings, Settings, sqlalchemy_url

FIRST_DAY = dt.date(2026, 11, 1)

EXECUTION_ENTITY = """
CREATE TABLE {schema}.execution_entity (
    id serial PRIMARY KEY,
    finished boolean NOT NULL,
    mode varchar NOT NULL,
    "retryOf" varchar,
    "retrySuccessId" varchar,
    "startedAt" timestamp(3) with time zone,
    "stoppedAt" timestamp(3) with time zone,
    "waitTill" timestamp(3) with time zone,
    status varchar NOT NULL,
    "workflowId" varchar(36) NOT NULL,
    "deletedAt" timestamp(3) with time zone,
    "createdAt" timestamp(3) with time zone NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
    "storedAt" varchar(2) NOT NULL DEFAULT 'db'
)
"""
# n8n's own indexes on the table, created after the rows (as a restore would).
INDEXES = (
    'CREATE INDEX ON {schema}.execution_entity ("stoppedAt", status, "deletedAt")'
    ' WHERE "stoppedAt" IS NOT NULL AND "deletedAt" IS NULL',
    'CREATE INDEX ON {schema}.execution_entity ("workflowId", "startedAt")'
    ' WHERE "startedAt" IS NOT NULL AND "deletedAt" IS NULL',
    'CREATE INDEX ON {schema}.execution_entity ("deletedAt")',
)
# Spread over `days` days from the first: 2 % manual (not counted), 3 % error, 0.5 % crashed;
# queue waits up to 2 s, run times up to 30 s.
FILL = """
INSERT INTO {schema}.execution_entity
    (finished, mode, "startedAt", "stoppedAt", status, "workflowId", "createdAt")
SELECT s.status = 'success', s.mode, s.created + s.wait, s.created + s.wait + s.run, s.status,
       'wf' || mod(g, 20), s.created
FROM generate_series(1, %(rows)s) AS g,
LATERAL (SELECT
    %(start)s::timestamptz + (g - 1) * (%(span)s::float / %(rows)s) * interval '1 second'
        AS created,
    random() * interval '2 seconds' AS wait,
    random() * random() * interval '30 seconds' AS run,
    CASE WHEN random() < 0.02 THEN 'manual' ELSE 'webhook' END AS mode,
    CASE WHEN random() < 0.03 THEN 'error' WHEN random() < 0.005 THEN 'crashed'
         ELSE 'success' END AS status) AS s
"""


def schema_of(index: int) -> str:
    return f"t_bench_{index:04d}"


def generate(url: str, tenants: int, rows: int, days: int, parallel: int) -> None:
    per_tenant = rows // tenants
    start = dt.datetime.combine(FIRST_DAY, dt.time(0), tzinfo=dt.UTC)
    span_s = days * 86_400

    def fill(indices: range) -> None:
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("SET synchronous_commit = off")
            for index in indices:
                schema = sql.Identifier(schema_of(index))
                connection.execute(sql.SQL("CREATE SCHEMA {}").format(schema))
                connection.execute(sql.SQL(EXECUTION_ENTITY).format(schema=schema))
                connection.execute(
                    sql.SQL(FILL).format(schema=schema),
                    {"rows": per_tenant, "start": start, "span": span_s},
                )
                for index_sql in INDEXES:
                    connection.execute(sql.SQL(index_sql).format(schema=schema))
                connection.execute(sql.SQL("ANALYZE {}.execution_entity").format(schema))

    chunks = [range(i, tenants, parallel) for i in range(parallel)]
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        for future in [pool.submit(fill, chunk) for chunk in chunks]:
            future.result()


def aggregate(
    admin_url: str, database: str, tenants: int, days: int, parallel: int
) -> tuple[float, list[float], int]:
    """Every (tenant, day) partition through the asset's call; returns the wall time, each
    call's duration and the executions counted."""
    n8n_data = N8nDataResource(admin_url=admin_url)
    work = [
        (schema_of(i), FIRST_DAY + dt.timedelta(days=d))
        for i in range(tenants)
        for d in range(days)
    ]

    def one(item: tuple[str, dt.date]) -> tuple[float, int]:
        began = time.perf_counter()
        day = n8n_data.execution_day_in(database, item[0], item[1])
        assert day is not None
        return time.perf_counter() - began, day.executions

    began = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        results = list(pool.map(one, work))
    wall = time.perf_counter() - began
    return wall, [r[0] for r in results], sum(r[1] for r in results)


def bench_aggregation(
    settings: Settings, tenants: int, rows: int, days: int, parallel: int
) -> None:
    admin = sa.make_url(sqlalchemy_url(settings.database_url))
    database = f"rp9_bench_usage_{uuid.uuid4().hex[:8]}"
    server = admin.set(database="postgres").set(drivername="postgresql")
    target = admin.set(database=database).set(drivername="postgresql")
    plain = server.render_as_string(hide_password=False)
    with psycopg.connect(plain, autocommit=True) as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        print(f"generating {rows:,} executions across {tenants:,} tenant schemas, {days} days ...")
        began = time.perf_counter()
        generate(target.render_as_string(hide_password=False), tenants, rows, days, parallel)
        generated = time.perf_counter() - began
        print(f"  generation (generate_series, n8n's indexes, ANALYZE): {generated:.1f} s")
        wall, calls, counted = aggregate(settings.database_url, database, tenants, days, parallel)
        per_call = sorted(calls)
        print(
            f"  aggregation of {tenants * days:,} (tenant, day) partitions, {parallel} at a time: "
            f"{wall:.1f} s (goal < 60 s) -> {'PASS' if wall < 60 else 'FAIL'}"
        )
        print(
            f"    per partition: p50 {statistics.median(per_call) * 1000:.1f} ms, "
            f"p95 {per_call[int(len(per_call) * 0.95)] * 1000:.1f} ms; "
            f"{counted:,} production executions counted (manual runs excluded), "
            f"{rows / wall / 1e6:.2f} M rows/s"
        )
    finally:
        with psycopg.connect(plain, autocommit=True) as connection:
            connection.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
            )
        print(f"  dropped {database}")


def bench_chargeback(tenants: int, days: int) -> None:
    rng = np.random.default_rng(6)
    ids = [str(uuid.UUID(int=i + 1)) for i in range(tenants)]
    frame = pd.DataFrame(
        {
            "tenant_id": np.repeat(ids, days),
            "day": np.tile(pd.date_range("2026-11-01", periods=days).date, tenants),
            "executions": rng.integers(0, 20_000, tenants * days),
            "duration_ms_sum": rng.integers(0, 10**9, tenants * days),
            "cpu_seconds": rng.random(tenants * days) * 20_000,
            "memory_gb_hours": rng.random(tenants * days) * 24,
        }
    )
    prices = {t: chargeback.Price(20.0, 0.002) for t in ids[: tenants // 2]}
    settings = ChargebackSettings(capacity_cpu_cores=5_000, capacity_memory_gb=20_000)
    began = time.perf_counter()
    result = chargeback.compute(
        frame, settings.rates(), settings.capacity(), chargeback.month_hours("2026-11"), prices
    )
    computed = time.perf_counter() - began
    body = io.StringIO()
    result.tenants.to_csv(body, index=False, float_format="%.6f")
    total = time.perf_counter() - began
    totals = result.totals
    print(
        f"chargeback of {tenants:,} tenants x {days} days ({len(frame):,} usage rows): compute "
        f"{computed:.2f} s, with the CSV {total:.2f} s (goal < 5 s) -> "
        f"{'PASS' if total < 5 else 'FAIL'}"
    )
    print(
        f"  used {totals.used_cost:,.2f} + idle {totals.idle_cost:,.2f} = total "
        f"{totals.total_cost:,.2f} {settings.currency} (Σ tenants "
        f"{result.tenants['total_cost'].sum():,.4f}); CPU utilisation "
        f"{(totals.cpu_utilisation or 0):.1%}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenants", type=int, default=1_000)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--chargeback-tenants", type=int, default=5_000)
    parser.add_argument("--skip-aggregation", action="store_true")
    args = parser.parse_args()
    bench_chargeback(args.chargeback_tenants, 30)
    if not args.skip_aggregation:
        bench_aggregation(Settings(), args.tenants, args.rows, args.days, args.parallel)


if __name__ == "__main__":
    main()
