"""Reads of what the tenants' n8n recorded in their own tables (`execution_entity`): the
autoscaler's recent windows, enforcement's daily counts and usage's day, for one tenant or a
whole fleet in bulk.

The tenant owns those tables and may define functions, operators, views, rules and policies in
its schema: the platform never runs any of them (see `postgres_admin`). Its sessions resolve
names in `pg_catalog` only and are read-only, functions are called by their qualified names,
tables are read with `ONLY`, and before each read one catalog query per database checks that
the tables read are still plain tables of the tenant with built-in column types: a tenant that
fails it is reported unreadable, like a database that cannot be reached, and is not read."""

import concurrent.futures
import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.domain.usage import ExecutionDay, day_bounds
from rp9_pipelines.resources.postgres_admin import (
    SESSION_OPTIONS,
    PostgresAdminResource,
    Reads,
    UnsafeRelation,
    check_relations,
    execute,
    raw_connection,
)

Rows = list[tuple[Any, ...]]

# Each statement is one parenthesised SELECT per tenant schema, its first column the schema's
# name (`{schema}`), from its `execution_entity` (`{table}`, `ONLY`: no inheritance child), so
# that many of them form one UNION ALL; with it, the columns it reads (checked first).

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
    FROM ONLY {table}
    WHERE "stoppedAt" >= pg_catalog.now() - pg_catalog.make_interval(secs => {window_s}))"""
)
_AGGREGATED = ("status", "createdAt", "startedAt", "stoppedAt")
_WINDOW_READS: Reads = {"execution_entity": _AGGREGATED}

# A tenant's day as `usage` counts it: production executions (every mode but `manual`, the
# editor's test runs) by the day they were created, as enforcement counts them, with their
# durations (summed last) and waits once they have them.
_DAY = sql.SQL(
    "(SELECT {schema}, "
    + _AGGREGATES
    + """,
    coalesce(pg_catalog.round(pg_catalog.sum(
        extract(epoch FROM "stoppedAt" - "startedAt") * 1000)), 0)
    FROM ONLY {table}
    WHERE "createdAt" >= {start} AND "createdAt" < {end} AND mode <> 'manual')"""
)
_DAY_READS: Reads = {"execution_entity": (*_AGGREGATED, "mode")}

# Production executions per UTC day created since `{since}` (the connection is in UTC).
_BY_DAY = sql.SQL(
    """
    (SELECT {schema}, "createdAt"::date, pg_catalog.count(*)
     FROM ONLY {table}
     WHERE "createdAt" >= {since} AND mode <> 'manual'
     GROUP BY 2)
    """
)
_BY_DAY_READS: Reads = {"execution_entity": ("createdAt", "mode")}

# Rows added since the platform last looked (`id` above `{after}`: ids only grow): production
# executions per UTC day of creation, and the highest id seen (manual runs included).
_NEW = sql.SQL(
    """
    (SELECT {schema}, "createdAt"::date, pg_catalog.count(*) FILTER (WHERE mode <> 'manual'),
            pg_catalog.max(id)
     FROM ONLY {table}
     WHERE id > {after}
     GROUP BY 2)
    """
)
_NEW_READS: Reads = {"execution_entity": ("id", "createdAt", "mode")}
_COUNT_READS: Reads = {"execution_entity": ()}

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
class NewExecutions:
    """Executions a tenant's n8n recorded after the id the platform had seen through."""

    through_id: int
    by_day: dict[dt.date, int]


@dataclass(frozen=True)
class ExecutionWindows:
    """`execution_window` of many tenants: by slug, and by slug the tenants that could not be
    read (their database unreachable, or their tables unsafe to read)."""

    windows: dict[str, ExecutionWindow]
    errors: dict[str, str]


class N8nDataResource(PostgresAdminResource):
    """The tenants' n8n tables, read through the platform's tenant administration login: one
    read-only connection per database, in UTC, whatever the number of tenants in it."""

    def session_options(self) -> str:
        return f"{SESSION_OPTIONS} -c default_transaction_read_only=on -c TimeZone=UTC"

    def execution_window(self, names: TenantNames, window_s: int = 900) -> ExecutionWindow:
        """Executions finished in the last `window_s` seconds, from the tenant's own tables
        (all zero when its n8n has none yet). Raises `UnsafeRelation` when they must not be
        read."""
        rows = self._read_one(
            names.db_name, names.db_schema, names.db_role, _WINDOW, _WINDOW_READS, window_s=window_s
        )
        aggregates = rows[0][1:] if rows else (0, 0, None, None)
        return ExecutionWindow.from_row(window_s, *aggregates)

    def execution_windows(
        self, tenants: Sequence[TenantNames], window_s: int, *, parallel: int = 4
    ) -> ExecutionWindows:
        """`execution_window` of many tenants at once (see `_fan_out`). Tenants whose n8n
        has no tables yet are left out."""
        rows, errors = self._fan_out(tenants, parallel, _WINDOW, _WINDOW_READS, window_s=window_s)
        windows = {
            slug: ExecutionWindow.from_row(window_s, *found[0][1:]) for slug, found in rows.items()
        }
        return ExecutionWindows(windows, errors)

    def executions_by_day(
        self, tenants: Sequence[TenantNames], since: dt.datetime, *, parallel: int = 4
    ) -> tuple[dict[str, dict[dt.date, int]], dict[str, str]]:
        """Production executions (every mode but `manual`, the editor's test runs) created since
        `since`, per tenant slug and UTC day (see `_fan_out`). Returns the counts and, by slug,
        the errors of the tenants that could not be read."""
        rows, errors = self._fan_out(tenants, parallel, _BY_DAY, _BY_DAY_READS, since=since)
        counts = {slug: {day: int(n) for _, day, n in found} for slug, found in rows.items()}
        return counts, errors

    def new_executions(
        self, seen: Sequence[tuple[TenantNames, int]], *, parallel: int = 4
    ) -> tuple[dict[str, NewExecutions], dict[str, str]]:
        """Per tenant slug, the executions recorded since each tenant's id in `seen` (tenants
        with none are left out), and the errors of the tenants that could not be read."""
        after = {names.slug: {"after": mark} for names, mark in seen}
        rows, errors = self._fan_out(
            [names for names, _ in seen], parallel, _NEW, _NEW_READS, per_tenant=after
        )
        new = {
            slug: NewExecutions(
                through_id=max(int(row[3]) for row in found),
                by_day={row[1]: int(row[2]) for row in found},
            )
            for slug, found in rows.items()
            if found
        }
        return new, errors

    def execution_day(self, names: TenantNames, day: dt.date) -> ExecutionDay | None:
        """What the tenant's n8n recorded for its production executions (every mode but
        `manual`) created on `day` (UTC); None when its n8n has no tables (never started, or
        purged), which is not the same as a day without executions. Raises `UnsafeRelation`
        when its tables must not be read."""
        return self.execution_day_in(names.db_name, names.db_schema, day, owner=names.db_role)

    def execution_day_in(
        self, database: str, schema: str, day: dt.date, *, owner: str = ""
    ) -> ExecutionDay | None:
        """`execution_day` of the `execution_entity` in `database`.`schema`, which must belong
        to `owner` (or to a superuser: with no owner, only a superuser's table is read)."""
        start, end = day_bounds(day)
        rows = self._read_one(database, schema, owner, _DAY, _DAY_READS, start=start, end=end)
        if rows is None:
            return None
        _, total, failed, latency, wait, duration_ms = rows[0]
        return ExecutionDay(
            executions=int(total),
            failures=int(failed),
            duration_ms_sum=int(duration_ms),
            latency_p95_ms=float(latency) if latency is not None else None,
            queue_wait_p95_ms=float(wait) if wait is not None else None,
        )

    def count_executions(self, names: TenantNames) -> int:
        """Every row of the tenant's `execution_entity` (which must exist and be safe to read)."""
        with self.connect(names.db_name) as connection:
            _, problems = check_relations(
                raw_connection(connection), {names.db_schema: names.db_role}, _COUNT_READS
            )
            if problems:
                raise UnsafeRelation(problems[names.db_schema])
            statement = sql.SQL("SELECT pg_catalog.count(*) FROM ONLY {}").format(
                _table(names.db_schema)
            )
            return int(execute(connection, statement)[0][0])

    def _read_one(
        self,
        database: str,
        schema: str,
        owner: str,
        statement: sql.SQL,
        reads: Reads,
        **values: object,
    ) -> Rows | None:
        """`_read` of one schema: its rows, None when it has no tables; raises
        `UnsafeRelation` when they must not be read."""
        rows, problems = self._read(database, {schema: owner}, statement, reads, None, **values)
        if schema in problems:
            raise UnsafeRelation(problems[schema])
        return rows.get(schema)

    def _read(
        self,
        database: str,
        owners: dict[str, str],
        statement: sql.SQL,
        reads: Reads,
        per_schema: Mapping[str, Mapping[str, object]] | None,
        **values: object,
    ) -> tuple[dict[str, Rows], dict[str, str]]:
        """`statement` (one of the SELECTs above, `values` and each schema's `per_schema`
        values filling its other placeholders) for
        each schema of `owners` (schema → the tenant's role) in `database` whose tables pass
        `check_relations`, one UNION ALL per hundred schemas. Returns the rows by schema, for
        those schemas only (possibly none; schemas without the tables are left out), and what
        is wrong with the schemas that were not read."""
        literals = {name: sql.Literal(value) for name, value in values.items()}
        with self.connect(database) as connection:
            absent, problems = check_relations(raw_connection(connection), owners, reads)
            readable = sorted(set(owners) - absent - set(problems))
            rows: dict[str, Rows] = {schema: [] for schema in readable}
            for start in range(0, len(readable), _BATCH):
                parts = [
                    statement.format(
                        schema=sql.Literal(schema),
                        table=_table(schema),
                        **literals,
                        **{
                            name: sql.Literal(value)
                            for name, value in (per_schema or {}).get(schema, {}).items()
                        },
                    )
                    for schema in readable[start : start + _BATCH]
                ]
                for row in execute(connection, sql.SQL(" UNION ALL ").join(parts)):
                    rows[row[0]].append(row)
        return rows, problems

    def _fan_out(
        self,
        tenants: Sequence[TenantNames],
        parallel: int,
        statement: sql.SQL,
        reads: Reads,
        per_tenant: Mapping[str, Mapping[str, object]] | None = None,
        **values: object,
    ) -> tuple[dict[str, Rows], dict[str, str]]:
        """`_read` for many tenants (`per_tenant`: each tenant's own values, by slug): their
        databases read in parallel (the shared database holds every shared tenant's schema).
        Returns the rows of each tenant whose n8n has
        tables (tenants without are left out) and, by slug, the errors of the tenants that
        could not be read (every tenant of a database that failed, and each whose tables are
        unsafe to read): reported, not raised, so the others still count."""
        by_database: dict[str, dict[str, TenantNames]] = {}  # database → schema → tenant
        for names in tenants:
            by_database.setdefault(names.db_name, {})[names.db_schema] = names

        def read(database: str) -> tuple[dict[str, Rows], dict[str, str]]:
            schemas = by_database[database]
            owners = {schema: names.db_role for schema, names in schemas.items()}
            own = {schema: (per_tenant or {}).get(n.slug, {}) for schema, n in schemas.items()}
            found, problems = self._read(database, owners, statement, reads, own, **values)
            return (
                {schemas[schema].slug: rows for schema, rows in found.items()},
                {
                    schemas[schema].slug: f"{UnsafeRelation.__name__}: {problem}"[:300]
                    for schema, problem in problems.items()
                },
            )

        found: dict[str, Rows] = {}
        errors: dict[str, str] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = {pool.submit(read, database): database for database in by_database}
            for future in concurrent.futures.as_completed(futures):
                database = futures[future]
                try:
                    rows, problems = future.result()
                except Exception as error:
                    first_line = (str(error).splitlines() or [""])[0]
                    message = f"{type(error).__name__}: {first_line}"[:300]
                    problems = {names.slug: message for names in by_database[database].values()}
                    rows = {}
                found.update(rows)
                errors.update(problems)
        return found, errors
