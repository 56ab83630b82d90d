"""The tenants' databases, administered: one role and schema per shared tenant in the shared
database, one role and database per dedicated tenant, and the pre-migrated n8n schema of each
n8n version (the template) that new tenants start from."""

import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from psycopg import sql

from rp9_pipelines.domain.template import (
    INSTANCE_TABLES,
    READY_COMMENT,
    TEMPLATE_DATABASE,
    TEMPLATE_ROLE,
)
from rp9_pipelines.domain.tenants import SHARED_DATABASE, TenantNames
from rp9_pipelines.resources.postgres_admin import PostgresAdminResource, execute
from rp9_pipelines.resources.postgres_dump import PgServer

_PSQL_META = re.compile(r"^\\(un)?restrict ")


@dataclass(frozen=True)
class Template:
    """A pre-migrated n8n schema as SQL (no owner, no grants, no data of any instance)."""

    schema: str
    sql: str


class TenantDatabaseResource(PostgresAdminResource):
    """Administers the tenants' databases on the platform's Postgres server: the shared database
    with one schema and role per tenant, and one database and role per dedicated tenant."""

    def _role_exists(self, server: sa.Connection, role: str) -> bool:
        query = sa.text("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = :r")
        return server.execute(query, {"r": role}).scalar() is not None

    def _database_exists(self, server: sa.Connection, database: str) -> bool:
        query = sa.text("SELECT 1 FROM pg_catalog.pg_database WHERE datname = :d")
        return server.execute(query, {"d": database}).scalar() is not None

    def _ensure_role(self, server: sa.Connection, role: str, password: str) -> None:
        verb = "ALTER" if self._role_exists(server, role) else "CREATE"
        execute(
            server,
            sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            ),
        )

    def _ensure_database(self, server: sa.Connection, database: str, owner: str) -> None:
        if not self._database_exists(server, database):
            execute(
                server,
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(database), sql.Identifier(owner)
                ),
            )
        execute(
            server,
            sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(database)),
        )

    def _ensure_platform_database(self, server: sa.Connection, database: str, role: str) -> None:
        """A database the platform owns, where `role` may connect and create its schema (n8n's
        driver runs `CREATE SCHEMA IF NOT EXISTS` on every connection, and Postgres checks the
        database privilege before it sees that the schema exists)."""
        self._ensure_database(
            server, database, server.execute(sa.text("SELECT current_user")).scalar_one()
        )
        execute(
            server,
            sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(
                sql.Identifier(database), sql.Identifier(role)
            ),
        )

    def ensure(self, names: TenantNames, password: str, template: Template | None = None) -> bool:
        """Create (or repair) the tenant's role and its schema or database. Idempotent.

        With a template, a schema that has no tables yet is created as a copy of it; returns
        whether the tenant's schema holds n8n's tables (migrated) when this returns.
        """
        with self.connect("postgres") as server:
            self._ensure_role(server, names.db_role, password)
            if names.tier == "dedicated":
                self._ensure_database(server, names.db_name, names.db_role)
            else:
                # The shared database belongs to the platform; tenants only get their schema.
                self._ensure_platform_database(server, SHARED_DATABASE, names.db_role)
        if names.tier == "shared":
            with self.connect(SHARED_DATABASE) as shared:
                execute(shared, sql.SQL("REVOKE ALL ON SCHEMA public FROM PUBLIC"))
        with self.connect(names.db_name) as database:
            if self._has_tables(database, names.db_schema):
                return True
            if template is not None:
                self._clone(database, names, template)
                return True
            if names.tier == "shared":
                schema, role = sql.Identifier(names.db_schema), sql.Identifier(names.db_role)
                execute(
                    database,
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(schema, role),
                )
                execute(database, sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(schema))
        return False

    def migrated(self, names: TenantNames) -> bool:
        """Whether n8n's migrations table exists in the tenant's schema."""
        with self.connect(names.db_name) as database:
            found = database.execute(
                sa.text("SELECT pg_catalog.to_regclass(:t)"),
                {"t": f"{names.db_schema}.migrations"},
            ).scalar()
        return found is not None

    @staticmethod
    def _has_tables(connection: sa.Connection, schema: str) -> bool:
        query = sa.text("SELECT 1 FROM pg_catalog.pg_tables WHERE schemaname = :s LIMIT 1")
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
                cursor.execute(
                    "SELECT pg_catalog.pg_advisory_xact_lock("
                    "pg_catalog.hashtext('rp9-template-clone'))"
                )
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

    def drop(self, names: TenantNames) -> None:
        """Delete the tenant's data and role for good (purge)."""
        role = sql.Identifier(names.db_role)
        with self.connect("postgres") as server:
            role_exists = self._role_exists(server, names.db_role)
            if names.tier == "dedicated":
                execute(
                    server,
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                        sql.Identifier(names.db_name)
                    ),
                )
        if names.tier == "shared" and role_exists:
            with self.connect(SHARED_DATABASE) as shared:
                execute(
                    shared,
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                        sql.Identifier(names.db_schema)
                    ),
                )
                execute(shared, sql.SQL("DROP OWNED BY {}").format(role))
        if role_exists:
            with self.connect("postgres") as server:
                execute(server, sql.SQL("DROP ROLE IF EXISTS {}").format(role))

    def exists(self, names: TenantNames) -> bool:
        """Whether the tenant's role still exists (it goes last when the data is purged)."""
        with self.connect("postgres") as server:
            return self._role_exists(server, names.db_role)

    def tenant_url(self, names: TenantNames, password: str, host: str | None = None) -> sa.URL:
        """How the tenant's own role connects (tests and checks use this; n8n gets env vars)."""
        url = self.url(names.db_name).set(username=names.db_role, password=password)
        return url.set(host=host) if host else url

    # The template of an n8n version: built once by a throwaway n8n, copied by `ensure`.

    @contextmanager
    def template_lock(self, schema: str) -> Iterator[None]:
        """One builder per template at a time, across processes."""
        with self.connect("postgres") as server:
            key = {"k": schema}
            server.execute(
                sa.text("SELECT pg_catalog.pg_advisory_lock(pg_catalog.hashtext(:k))"), key
            )
            try:
                yield
            finally:
                server.execute(
                    sa.text("SELECT pg_catalog.pg_advisory_unlock(pg_catalog.hashtext(:k))"), key
                )

    def template_ready(self, schema: str) -> bool:
        with self.connect("postgres") as server:
            if not self._database_exists(server, TEMPLATE_DATABASE):
                return False
        with self.connect(TEMPLATE_DATABASE) as templates:
            comment = templates.execute(
                sa.text(
                    "SELECT pg_catalog.obj_description(oid, 'pg_namespace')"
                    " FROM pg_catalog.pg_namespace WHERE nspname = :s"
                ),
                {"s": schema},
            ).scalar()
        return comment == READY_COMMENT

    def prepare_template(self, schema: str, password: str) -> None:
        """An empty schema for the builder n8n, owned by a login role it alone uses."""
        with self.connect("postgres") as server:
            self._ensure_role(server, TEMPLATE_ROLE, password)
            self._ensure_platform_database(server, TEMPLATE_DATABASE, TEMPLATE_ROLE)
        with self.connect(TEMPLATE_DATABASE) as templates:
            target = sql.Identifier(schema)
            execute(templates, sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(target))
            execute(
                templates,
                sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(
                    target, sql.Identifier(TEMPLATE_ROLE)
                ),
            )

    def seal_template(self, schema: str) -> None:
        """Remove what the builder's n8n wrote about itself, mark the template ready, and take
        the builder role's login away."""
        with self.connect(TEMPLATE_DATABASE) as templates:
            for table in INSTANCE_TABLES:
                execute(
                    templates,
                    sql.SQL("DELETE FROM {}.{}").format(
                        sql.Identifier(schema), sql.Identifier(table)
                    ),
                )
            execute(
                templates,
                sql.SQL("COMMENT ON SCHEMA {} IS {}").format(
                    sql.Identifier(schema), sql.Literal(READY_COMMENT)
                ),
            )
        with self.connect("postgres") as server:
            execute(
                server,
                sql.SQL("ALTER ROLE {} NOLOGIN PASSWORD NULL").format(
                    sql.Identifier(TEMPLATE_ROLE)
                ),
            )

    def template(self, schema: str) -> Template:
        """The template as SQL, from `pg_dump` (objects unowned, no grants, no comments) of the
        server's major version."""
        server = PgServer.from_url(self.admin_url)
        command = [
            server.tool("pg_dump"),
            f"--schema={schema}",
            "--no-owner",
            "--no-privileges",
            "--no-comments",
            "--rows-per-insert=1000",
            "--no-password",
        ]
        env = {**server.env(TEMPLATE_DATABASE), "PGAPPNAME": "rp9-template"}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"pg_dump of template {schema} failed: {done.stderr.strip()}")
        # Newer pg_dump wraps its script in psql's `\restrict` meta-commands, which only psql
        # understands; the statements between them are plain SQL.
        lines = [line for line in done.stdout.splitlines() if not _PSQL_META.match(line)]
        return Template(schema=schema, sql="\n".join(lines))
