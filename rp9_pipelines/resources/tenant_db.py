import concurrent.futures
import datetime as dt
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dagster as dg
import sqlalchemy as sa
from psycopg import sql

from rp9_pipelines.domain.template import (
    INSTANCE_TABLES,
    READY_COMMENT,
    TEMPLATE_DATABASE,
    TEMPLATE_ROLE,
)
from rp9_pipelines.domain.tenants import SHARED_DATABASE, TenantNames
from rp9_pipelines.domain.usage import ExecutionDay, day_bounds
from rp9_pipelines.settings import sqlalchemy_url

_PSQL_META = re.compile(r"^\\(un)?restrict ")


@dataclass(frozen=True)
class Template:
    """A pre-migrated n8n schema as SQL (no owner, no grants, no data of any instance)."""

    schema: str
    sql: str


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


class TenantDatabaseResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Administers the tenants' databases on the platform's Postgres server: the shared database
    with one schema and role per tenant, and one database and role per dedicated tenant."""

    admin_url: str
    connect_timeout_s: int = 5

    def _url(self, database: str) -> sa.URL:
        return sa.make_url(sqlalchemy_url(self.admin_url)).set(database=database)

    @contextmanager
    def _connect(self, database: str) -> Iterator[sa.Connection]:
        engine = sa.create_engine(
            self._url(database),
            poolclass=sa.NullPool,
            isolation_level="AUTOCOMMIT",
            connect_args={"connect_timeout": self.connect_timeout_s},
        )
        try:
            with engine.connect() as connection:
                yield connection
        finally:
            engine.dispose()

    @staticmethod
    def _exec(connection: sa.Connection, statement: sql.Composable) -> None:
        raw = connection.connection.dbapi_connection
        assert raw is not None
        with raw.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.execute(statement)

    def _ensure_role(self, connection: sa.Connection, role: str, password: str) -> None:
        exists = connection.execute(
            sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role}
        ).scalar()
        verb = "ALTER" if exists else "CREATE"
        self._exec(
            connection,
            sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            ),
        )

    def _ensure_database(self, connection: sa.Connection, database: str, owner: str) -> None:
        exists = connection.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": database}
        ).scalar()
        if not exists:
            self._exec(
                connection,
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(database), sql.Identifier(owner)
                ),
            )
        self._exec(
            connection,
            sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)),
        )

    def ensure(self, names: TenantNames, password: str, template: Template | None = None) -> bool:
        """Create (or repair) the tenant's role and its schema or database. Idempotent.

        With a template, a schema that has no tables yet is created as a copy of it; returns
        whether the tenant's schema holds n8n's tables (migrated) when this returns.
        """
        with self._connect("postgres") as server:
            self._ensure_role(server, names.db_role, password)
            if names.tier == "dedicated":
                self._ensure_database(server, names.db_name, names.db_role)
            else:
                # The shared database belongs to the platform; tenants only get their schema.
                owner = server.execute(sa.text("SELECT current_user")).scalar_one()
                self._ensure_database(server, SHARED_DATABASE, owner)
        if names.tier == "shared":
            with self._connect(SHARED_DATABASE) as shared:
                role = sql.Identifier(names.db_role)
                self._exec(shared, sql.SQL("REVOKE ALL ON SCHEMA public FROM PUBLIC"))
                # n8n's driver runs `CREATE SCHEMA IF NOT EXISTS` on every connection, and
                # Postgres checks the database privilege before it sees that the schema exists.
                self._exec(
                    shared,
                    sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(
                        sql.Identifier(SHARED_DATABASE), role
                    ),
                )
        with self._connect(names.db_name) as database:
            if self._has_tables(database, names.db_schema):
                return True
            if template is not None:
                self._clone(database, names, template)
                return True
            if names.tier == "shared":
                schema, role = sql.Identifier(names.db_schema), sql.Identifier(names.db_role)
                self._exec(
                    database,
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(schema, role),
                )
                self._exec(database, sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(schema))
        return False

    def migrated(self, names: TenantNames) -> bool:
        """Whether n8n's migrations table exists in the tenant's schema."""
        with self._connect(names.db_name) as database:
            found = database.execute(
                sa.text("SELECT to_regclass(:t)"), {"t": f"{names.db_schema}.migrations"}
            ).scalar()
        return found is not None

    @staticmethod
    def _has_tables(connection: sa.Connection, schema: str) -> bool:
        query = sa.text("SELECT 1 FROM pg_tables WHERE schemaname = :s LIMIT 1")
        return connection.execute(query, {"s": schema}).scalar() is not None

    def _clone(self, connection: sa.Connection, names: TenantNames, template: Template) -> None:
        """Copy the template into the tenant's schema in one transaction, as the tenant's role
        (so it owns every object): either the whole migrated schema appears or nothing does."""
        raw = connection.connection.dbapi_connection
        assert raw is not None
        target, source = sql.Identifier(names.db_schema), sql.Identifier(template.schema)
        raw.autocommit = False
        try:
            with raw.cursor() as cursor:  # type: ignore[attr-defined]
                # Concurrent clones into one database would collide on the template's name.
                cursor.execute("SELECT pg_advisory_xact_lock(hashtext('rp9-template-clone'))")
                cursor.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(names.db_role)))
                # An empty schema of that name (created before templates, or `public` in a new
                # dedicated database) gives way to the copy.
                cursor.execute(sql.SQL("DROP SCHEMA IF EXISTS {}").format(target))
                cursor.execute(template.sql)
                cursor.execute(sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(source, target))
            raw.commit()
        except BaseException:
            raw.rollback()
            raise
        finally:
            raw.autocommit = True

    # Templates ----------------------------------------------------------------------------

    @contextmanager
    def template_lock(self, schema: str) -> Iterator[None]:
        """One builder per template at a time, across processes."""
        with self._connect("postgres") as server:
            server.execute(sa.text("SELECT pg_advisory_lock(hashtext(:k))"), {"k": schema})
            try:
                yield
            finally:
                server.execute(sa.text("SELECT pg_advisory_unlock(hashtext(:k))"), {"k": schema})

    def template_ready(self, schema: str) -> bool:
        with self._connect("postgres") as server:
            exists = server.execute(
                sa.text("SELECT 1 FROM pg_database WHERE datname = :d"), {"d": TEMPLATE_DATABASE}
            ).scalar()
        if not exists:
            return False
        with self._connect(TEMPLATE_DATABASE) as templates:
            comment = templates.execute(
                sa.text(
                    "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace"
                    " WHERE nspname = :s"
                ),
                {"s": schema},
            ).scalar()
        return comment == READY_COMMENT

    def prepare_template(self, schema: str, password: str) -> None:
        """An empty schema for the builder n8n, owned by a login role it alone uses."""
        with self._connect("postgres") as server:
            self._ensure_role(server, TEMPLATE_ROLE, password)
            owner = server.execute(sa.text("SELECT current_user")).scalar_one()
            self._ensure_database(server, TEMPLATE_DATABASE, owner)
            self._exec(
                server,
                sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(
                    sql.Identifier(TEMPLATE_DATABASE), sql.Identifier(TEMPLATE_ROLE)
                ),
            )
        with self._connect(TEMPLATE_DATABASE) as templates:
            self._exec(
                templates,
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)),
            )
            self._exec(
                templates,
                sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                    sql.Identifier(schema), sql.Identifier(TEMPLATE_ROLE)
                ),
            )

    def seal_template(self, schema: str) -> None:
        """Remove what the builder's n8n wrote about itself, mark the template ready, and take
        the builder role's login away."""
        with self._connect(TEMPLATE_DATABASE) as templates:
            for table in INSTANCE_TABLES:
                self._exec(
                    templates,
                    sql.SQL("DELETE FROM {}.{}").format(
                        sql.Identifier(schema), sql.Identifier(table)
                    ),
                )
            self._exec(
                templates,
                sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                    sql.Identifier(schema), sql.Literal(READY_COMMENT)
                ),
            )
        with self._connect("postgres") as server:
            self._exec(
                server,
                sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(
                    sql.Identifier(TEMPLATE_ROLE)
                ),
            )

    def template(self, schema: str) -> Template:
        """The template as SQL, from `pg_dump` (objects unowned, no grants, no comments)."""
        url = self._url(TEMPLATE_DATABASE)
        pg_dump = shutil.which("pg_dump") or "/usr/lib/postgresql/15/bin/pg_dump"
        command = [
            pg_dump,
            "--schema",
            schema,
            "--no-owner",
            "--no-privileges",
            "--no-comments",
            "--rows-per-insert=1000",
            "--host",
            url.host or "127.0.0.1",
            "--port",
            str(url.port or 5432),
            "--username",
            url.username or "postgres",
            "--dbname",
            TEMPLATE_DATABASE,
        ]
        env = {**os.environ, "PGPASSWORD": url.password or "", "PGCONNECT_TIMEOUT": "10"}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"pg_dump of template {schema} failed: {done.stderr.strip()}")
        # Newer pg_dump wraps its script in psql's `\restrict` meta-commands, which only psql
        # understands; the statements between them are plain SQL.
        lines = [line for line in done.stdout.splitlines() if not _PSQL_META.match(line)]
        return Template(schema=schema, sql="\n".join(lines))

    def drop(self, names: TenantNames) -> None:
        """Delete the tenant's data and role for good (purge)."""
        role = sql.Identifier(names.db_role)
        with self._connect("postgres") as server:
            role_exists = server.execute(
                sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": names.db_role}
            ).scalar()
            if names.tier == "dedicated":
                self._exec(
                    server,
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(names.db_name)
                    ),
                )
        if names.tier == "shared" and role_exists:
            with self._connect(SHARED_DATABASE) as shared:
                self._exec(
                    shared,
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                        sql.Identifier(names.db_schema)
                    ),
                )
                self._exec(shared, sql.SQL("DROP OWNED BY {}").format(role))
        if role_exists:
            with self._connect("postgres") as server:
                self._exec(server, sql.SQL("DROP ROLE IF EXISTS {}").format(role))

    def exists(self, names: TenantNames) -> bool:
        """Whether the tenant's role still exists (it goes last when the data is purged)."""
        with self._connect("postgres") as server:
            query = sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r")
            return server.execute(query, {"r": names.db_role}).scalar() is not None

    def tenant_url(self, names: TenantNames, password: str, host: str | None = None) -> sa.URL:
        """How the tenant's own role connects (tests and checks use this; n8n gets env vars)."""
        url = self._url(names.db_name).set(username=names.db_role, password=password)
        return url.set(host=host) if host else url

    def execution_window(self, names: TenantNames, window_s: int = 900) -> ExecutionWindow:
        """Executions finished in the last `window_s` seconds, from the tenant's own tables."""
        table = sql.SQL("{}.execution_entity").format(sql.Identifier(names.db_schema))
        query = sql.SQL(
            """
            SELECT count(*),
                   count(*) FILTER (WHERE status IN ('error', 'crashed')),
                   percentile_cont(0.95) WITHIN GROUP (
                       ORDER BY extract(epoch FROM "stoppedAt" - "startedAt") * 1000),
                   percentile_cont(0.95) WITHIN GROUP (
                       ORDER BY extract(epoch FROM "startedAt" - "createdAt") * 1000)
            FROM {table}
            WHERE "stoppedAt" >= now() - make_interval(secs => %s)
            """
        ).format(table=table)
        with self._connect(names.db_name) as connection:
            exists = connection.execute(
                sa.text("SELECT to_regclass(:t)"), {"t": f"{names.db_schema}.execution_entity"}
            ).scalar()
            row: tuple[int, int, float | None, float | None] = (0, 0, None, None)
            if exists:
                raw = connection.connection.dbapi_connection
                assert raw is not None
                with raw.cursor() as cursor:  # type: ignore[attr-defined]
                    cursor.execute(query, (window_s,))
                    row = cursor.fetchone()
        return ExecutionWindow.from_row(window_s, *row)

    def count_executions(self, names: TenantNames) -> int:
        with self._connect(names.db_name) as connection:
            table = f'"{names.db_schema}".execution_entity'
            return int(connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())

    def _each_schema(
        self,
        tenants: Sequence[TenantNames],
        statement: Callable[[TenantNames], sql.Composable],
        parallel: int,
    ) -> tuple[dict[str, list[tuple[Any, ...]]], dict[str, str]]:
        """Run `statement(names)` (a parenthesised SELECT whose first column is the slug) for
        many tenants: one connection per database (in UTC), one UNION ALL per hundred schemas
        (the shared database holds every shared tenant), the databases read in parallel.
        Returns the rows of each tenant whose n8n has tables (possibly none; tenants without
        tables are left out) and, by database, the errors of those that could not be read:
        reported, not raised, so the others still count."""
        by_database: dict[str, list[TenantNames]] = {}
        for names in tenants:
            by_database.setdefault(names.db_name, []).append(names)

        def read(database: str) -> dict[str, list[tuple[Any, ...]]]:
            members = by_database[database]
            with self._connect(database) as connection:
                connection.execute(sa.text("SET TIME ZONE 'UTC'"))
                present = set(
                    connection.execute(
                        sa.text(
                            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n"
                            " ON n.oid = c.relnamespace WHERE c.relname = 'execution_entity'"
                            " AND c.relkind IN ('r', 'p') AND n.nspname = ANY(:schemas)"
                        ),
                        {"schemas": [m.db_schema for m in members]},
                    ).scalars()
                )
                ready = [m for m in members if m.db_schema in present]
                rows: dict[str, list[tuple[Any, ...]]] = {m.slug: [] for m in ready}
                raw = connection.connection.dbapi_connection
                assert raw is not None
                for start in range(0, len(ready), 100):
                    parts = [statement(m) for m in ready[start : start + 100]]
                    with raw.cursor() as cursor:  # type: ignore[attr-defined]
                        cursor.execute(sql.SQL(" UNION ALL ").join(parts))
                        for row in cursor.fetchall():
                            rows[row[0]].append(tuple(row))
            return rows

        found: dict[str, list[tuple[Any, ...]]] = {}
        errors: dict[str, str] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = {pool.submit(read, database): database for database in by_database}
            for future in concurrent.futures.as_completed(futures):
                try:
                    found.update(future.result())
                except Exception as error:
                    first_line = (str(error).splitlines() or [""])[0]
                    errors[futures[future]] = f"{type(error).__name__}: {first_line}"[:300]
        return found, errors

    def execution_windows(
        self, tenants: Sequence[TenantNames], window_s: int, *, parallel: int = 4
    ) -> "ExecutionWindows":
        """`execution_window` of many tenants at once (see `_each_schema`). Tenants whose n8n
        has no tables yet are left out."""

        def statement(m: TenantNames) -> sql.Composable:
            return _WINDOW_OF_ONE.format(
                slug=sql.Literal(m.slug),
                table=sql.SQL("{}.execution_entity").format(sql.Identifier(m.db_schema)),
                window=sql.Literal(window_s),
            )

        rows, errors = self._each_schema(tenants, statement, parallel)
        windows: dict[str, ExecutionWindow] = {}
        for slug, found in rows.items():
            for _, *aggregates in found:
                windows[slug] = ExecutionWindow.from_row(window_s, *aggregates)
        return ExecutionWindows(windows, errors)

    def executions_by_day(
        self, tenants: Sequence[TenantNames], since: dt.datetime, *, parallel: int = 4
    ) -> tuple[dict[str, dict[dt.date, int]], dict[str, str]]:
        """Production executions (every mode but `manual`, the editor's test runs) created since
        `since`, per tenant slug and UTC day (see `_each_schema`). Returns the counts and, by
        database, the errors of those that could not be read."""

        def statement(m: TenantNames) -> sql.Composable:
            return sql.SQL(
                '(SELECT {slug}, "createdAt"::date, count(*) FROM {table}'
                " WHERE \"createdAt\" >= {since} AND mode <> 'manual' GROUP BY 2)"
            ).format(
                slug=sql.Literal(m.slug),
                table=sql.SQL("{}.execution_entity").format(sql.Identifier(m.db_schema)),
                since=sql.Literal(since),
            )

        rows, errors = self._each_schema(tenants, statement, parallel)
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
        with self._connect(database) as connection:
            connection.execute(sa.text("SET TIME ZONE 'UTC'"))
            exists = connection.execute(
                sa.text("SELECT to_regclass(:t)"), {"t": f"{schema}.execution_entity"}
            ).scalar()
            if not exists:
                return None
            raw = connection.connection.dbapi_connection
            assert raw is not None
            with raw.cursor() as cursor:  # type: ignore[attr-defined]
                cursor.execute(
                    _EXECUTION_DAY.format(
                        table=sql.SQL("{}.execution_entity").format(sql.Identifier(schema))
                    ),
                    (start, end),
                )
                total, failed, duration_ms, latency, wait = cursor.fetchone()
        return ExecutionDay(
            executions=int(total),
            failures=int(failed),
            duration_ms_sum=int(duration_ms),
            latency_p95_ms=float(latency) if latency is not None else None,
            queue_wait_p95_ms=float(wait) if wait is not None else None,
        )


_WINDOW_OF_ONE = sql.SQL(
    """
    (SELECT {slug}, count(*),
            count(*) FILTER (WHERE status IN ('error', 'crashed')),
            percentile_cont(0.95) WITHIN GROUP (
                ORDER BY extract(epoch FROM "stoppedAt" - "startedAt") * 1000),
            percentile_cont(0.95) WITHIN GROUP (
                ORDER BY extract(epoch FROM "startedAt" - "createdAt") * 1000)
     FROM {table}
     WHERE "stoppedAt" >= now() - make_interval(secs => {window}))
    """
)


@dataclass(frozen=True)
class ExecutionWindows:
    """`execution_window` of many tenants: by slug, and the databases that could not be read."""

    windows: dict[str, ExecutionWindow]
    errors: dict[str, str]


# A tenant's day, as `usage` counts it: production executions by the day they were created
# (as enforcement counts them), their durations and waits once they have them.
_EXECUTION_DAY = sql.SQL(
    """
    SELECT count(*),
           count(*) FILTER (WHERE status IN ('error', 'crashed')),
           coalesce(round(sum(extract(epoch FROM "stoppedAt" - "startedAt") * 1000)), 0),
           percentile_cont(0.95) WITHIN GROUP (
               ORDER BY extract(epoch FROM "stoppedAt" - "startedAt") * 1000),
           percentile_cont(0.95) WITHIN GROUP (
               ORDER BY extract(epoch FROM "startedAt" - "createdAt") * 1000)
    FROM {table}
    WHERE "createdAt" >= %s AND "createdAt" < %s AND mode <> 'manual'
    """
)
