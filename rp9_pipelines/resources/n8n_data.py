"""Reads of what the tenants' n8n recorded in their own tables (`execution_entity`): the
autoscaler's recent windows, enforcement's daily counts and usage's day, for one tenant or a
whole fleet in bulk.

Functions are called by their schema-qualified names (`pg_catalog.…`): the platform must never
resolve one that a tenant could have defined in a schema it owns."""

import concurrent.futures
import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from psycopg import sql

from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.domain.usage import ExecutionDay, day_bounds
from rp9_pipelines.resources.postgres_admin import PostgresAdminResource, execute

Rows = list[tuple[Any, ...]]

# Each statement is one parenthesised SELECT per tenant schema, its first column the schema's
# name (`{schema}`), from its `execution_entity` (`{table}`), so that many of them form one
# UNION ALL.

# Executions, failures, and the p95s in milliseconds of the run time (started → stopped) and
# of the queue wait (created → started).
_AGGREGATES = """
    pg_catalog.count(*),
    pg_catalog.count(*) FILTER (WHERE status IN ('error', 'crashed')),
    pg_catalog.percentile_cont(0.95) WITHIN GROUP (
        ORDER BY extract(epoch FROM "stoppedAt" - "startedAt") * 1000),
    pg_catalog.percentile_cont(0.95) WITHIN GROUP (
        ORDER BY extract(epoch FROM "startedAt" - "createdAt") * 1000)
"""

# What finished in the last `{window_s}` seconds.
_WINDOW = sql.SQL(
    "(SELECT {schema}, "
    + _AGGREGATES
    + """
    FROM {table}
    WHERE "stoppedAt" >= pg_catalog.now() - pg_catalog.make_interval(secs => {window_s}))"""
)

# A tenant's day as `usage` counts it: production executions (every mode but `manual`, the
# editor's test runs) by the day they were created, as enforcement counts them, with their
# durations (summed last) and waits once they have them.
_DAY = sql.SQL(
    "(SELECT {schema}, "
    + _AGGREGATES
    + """,
    coalesce(pg_catalog.round(pg_catalog.sum(
        extract(epoch FROM "stoppedAt" - "startedAt") * 1000)), 0)
    FROM {table}
    WHERE "createdAt" >= {start} AND "createdAt" < {end} AND mode <> 'manual')"""
)

# Production executions per UTC day created since `{since}` (the connection is in UTC).
_BY_DAY = sql.SQL(
    """
    (SELECT {schema}, "createdAt"::date, pg_catalog.count(*)
     FROM {table}
     WHERE "createdAt" >= {since} AND mode <> 'manual'
     GROUP BY 2)
    """
)

# At most this many schemas in one UNION ALL.
_BATCH = 100


def _table(schema: str) -> sql.Composed:
    return sql.SQL("{}.execution_entity").format(sql.Identifier(schema))


@dataclass(frozen=True)
class ExecutionWindow:
    """What a tenant's n8n recorded over a recent window (its `execution_entity`)."""

    window_s: int
    total: int
    failed: int
    per_minute: float
    latency_p95_ms: float | None
    queue_wait_p95_ms: float | None

    @classmethod
    def from_row(
        cls, window_s: int, total: int, failed: int, latency: float | None, wait: float | None
    ) -> "ExecutionWindow":
        """From the window query's aggregates (count, failures, p95s in milliseconds)."""
        return cls(
            window_s=window_s,
            total=int(total),
            failed=int(failed),
            per_minute=round(total / (window_s / 60), 3),
            latency_p95_ms=round(latency, 1) if latency is not None else None,
            queue_wait_p95_ms=round(wait, 1) if wait is not None else None,
        )


@dataclass(frozen=True)
class ExecutionWindows:
    """`execution_window` of many tenants: by slug, and the databases that could not be read."""

    windows: dict[str, ExecutionWindow]
    errors: dict[str, str]


class N8nDataResource(PostgresAdminResource):
    """The tenants' n8n tables, read through the platform's admin role: one connection per
    database, in UTC, whatever the number of tenants in it."""

    def execution_window(self, names: TenantNames, window_s: int = 900) -> ExecutionWindow:
        """Executions finished in the last `window_s` seconds, from the tenant's own tables
        (all zero when its n8n has none yet)."""
        rows = self._read(names.db_name, [names.db_schema], _WINDOW, window_s=window_s)
        aggregates = rows[names.db_schema][0][1:] if names.db_schema in rows else (0, 0, None, None)
        return ExecutionWindow.from_row(window_s, *aggregates)

    def execution_windows(
        self, tenants: Sequence[TenantNames], window_s: int, *, parallel: int = 4
    ) -> ExecutionWindows:
        """`execution_window` of many tenants at once (see `_fan_out`). Tenants whose n8n
        has no tables yet are left out."""
        rows, errors = self._fan_out(tenants, parallel, _WINDOW, window_s=window_s)
        windows = {
            slug: ExecutionWindow.from_row(window_s, *found[0][1:]) for slug, found in rows.items()
        }
        return ExecutionWindows(windows, errors)

    def executions_by_day(
        self, tenants: Sequence[TenantNames], since: dt.datetime, *, parallel: int = 4
    ) -> tuple[dict[str, dict[dt.date, int]], dict[str, str]]:
        """Production executions (every mode but `manual`, the editor's test runs) created since
        `since`, per tenant slug and UTC day (see `_fan_out`). Returns the counts and, by
        database, the errors of those that could not be read."""
        rows, errors = self._fan_out(tenants, parallel, _BY_DAY, since=since)
        counts = {slug: {day: int(n) for _, day, n in found} for slug, found in rows.items()}
        return counts, errors

    def execution_day(self, names: TenantNames, day: dt.date) -> ExecutionDay | None:
        """What the tenant's n8n recorded for its production executions (every mode but
        `manual`) created on `day` (UTC); None when its n8n has no tables (never started, or
        purged), which is not the same as a day without executions."""
        return self.execution_day_in(names.db_name, names.db_schema, day)

    def execution_day_in(self, database: str, schema: str, day: dt.date) -> ExecutionDay | None:
        """`execution_day` of the `execution_entity` in `database`.`schema`."""
        start, end = day_bounds(day)
        rows = self._read(database, [schema], _DAY, start=start, end=end)
        if schema not in rows:
            return None
        _, total, failed, latency, wait, duration_ms = rows[schema][0]
        return ExecutionDay(
            executions=int(total),
            failures=int(failed),
            duration_ms_sum=int(duration_ms),
            latency_p95_ms=float(latency) if latency is not None else None,
            queue_wait_p95_ms=float(wait) if wait is not None else None,
        )

    def count_executions(self, names: TenantNames) -> int:
        """Every row of the tenant's `execution_entity` (which must exist)."""
        with self.connect(names.db_name) as connection:
            statement = sql.SQL("SELECT pg_catalog.count(*) FROM {}").format(
                _table(names.db_schema)
            )
            return int(execute(connection, statement)[0][0])

    def _read(
        self, database: str, schemas: Sequence[str], statement: sql.SQL, **values: object
    ) -> dict[str, Rows]:
        """`statement` (one of the SELECTs above, `values` filling its other placeholders) for
        each of `schemas` in `database` that holds an `execution_entity`, one UNION ALL per
        hundred schemas. Returns the rows by schema, for those schemas only (possibly none)."""
        literals = {name: sql.Literal(value) for name, value in values.items()}
        with self.connect(database) as connection:
            connection.execute(sa.text("SET TIME ZONE 'UTC'"))
            present = [
                str(schema)
                for schema in connection.execute(
                    sa.text(
                        "SELECT n.nspname FROM pg_catalog.pg_class c"
                        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
                        " WHERE c.relname = 'execution_entity' AND c.relkind IN ('r', 'p')"
                        " AND n.nspname = ANY(:schemas)"
                    ),
                    {"schemas": sorted(set(schemas))},
                ).scalars()
            ]
            rows: dict[str, Rows] = {schema: [] for schema in present}
            for start in range(0, len(present), _BATCH):
                parts = [
                    statement.format(schema=sql.Literal(schema), table=_table(schema), **literals)
                    for schema in present[start : start + _BATCH]
                ]
                for row in execute(connection, sql.SQL(" UNION ALL ").join(parts)):
                    rows[row[0]].append(row)
        return rows

    def _fan_out(
        self, tenants: Sequence[TenantNames], parallel: int, statement: sql.SQL, **values: object
    ) -> tuple[dict[str, Rows], dict[str, str]]:
        """`_read` for many tenants: their databases read in parallel (the shared database
        holds every shared tenant's schema). Returns the rows of each tenant whose n8n has
        tables (tenants without are left out) and, by database, the errors of those that
        could not be read: reported, not raised, so the others still count."""
        slugs: dict[str, dict[str, str]] = {}  # database → schema → slug
        for names in tenants:
            slugs.setdefault(names.db_name, {})[names.db_schema] = names.slug

        def read(database: str) -> dict[str, Rows]:
            found = self._read(database, list(slugs[database]), statement, **values)
            return {slugs[database][schema]: rows for schema, rows in found.items()}

        found: dict[str, Rows] = {}
        errors: dict[str, str] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = {pool.submit(read, database): database for database in slugs}
            for future in concurrent.futures.as_completed(futures):
                try:
                    found.update(future.result())
                except Exception as error:
                    first_line = (str(error).splitlines() or [""])[0]
                    errors[futures[future]] = f"{type(error).__name__}: {first_line}"[:300]
        return found, errors
