from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import dagster as dg
import sqlalchemy as sa
from psycopg import sql

from rp9_pipelines.domain.tenants import SHARED_DATABASE, TenantNames
from rp9_pipelines.settings import sqlalchemy_url


@dataclass(frozen=True)
class ExecutionWindow:
    """What a tenant's n8n recorded over a recent window (its `execution_entity`)."""

    window_s: int
    total: int
    failed: int
    per_minute: float
    latency_p95_ms: float | None
    queue_wait_p95_ms: float | None


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

    def ensure(self, names: TenantNames, password: str) -> None:
        """Create (or repair) the tenant's role and its schema or database. Idempotent."""
        with self._connect("postgres") as server:
            self._ensure_role(server, names.db_role, password)
            if names.tier == "dedicated":
                self._ensure_database(server, names.db_name, names.db_role)
                return
            # The shared database belongs to the platform; tenants only get their schema.
            owner = server.execute(sa.text("SELECT current_user")).scalar_one()
            self._ensure_database(server, SHARED_DATABASE, owner)
        with self._connect(SHARED_DATABASE) as shared:
            role, schema = sql.Identifier(names.db_role), sql.Identifier(names.db_schema)
            self._exec(shared, sql.SQL("REVOKE ALL ON SCHEMA public FROM PUBLIC"))
            self._exec(shared, sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(
                schema, role))  # fmt: skip
            self._exec(shared, sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(schema))
            # n8n's driver runs `CREATE SCHEMA IF NOT EXISTS` on every connection, and Postgres
            # checks the database privilege before it sees that the schema exists.
            self._exec(shared, sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(SHARED_DATABASE), role))  # fmt: skip

    def drop(self, names: TenantNames) -> None:
        """Delete the tenant's data and role for good (purge)."""
        role = sql.Identifier(names.db_role)
        with self._connect("postgres") as server:
            role_exists = server.execute(
                sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": names.db_role}
            ).scalar()
            if names.tier == "dedicated":
                self._exec(server, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(names.db_name)))  # fmt: skip
        if names.tier == "shared" and role_exists:
            with self._connect(SHARED_DATABASE) as shared:
                self._exec(shared, sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(names.db_schema)))  # fmt: skip
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
        total, failed, latency, wait = row
        return ExecutionWindow(
            window_s=window_s,
            total=int(total),
            failed=int(failed),
            per_minute=round(total / (window_s / 60), 3),
            latency_p95_ms=round(latency, 1) if latency is not None else None,
            queue_wait_p95_ms=round(wait, 1) if wait is not None else None,
        )

    def count_executions(self, names: TenantNames) -> int:
        with self._connect(names.db_name) as connection:
            table = f'"{names.db_schema}".execution_entity'
            return int(connection.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
