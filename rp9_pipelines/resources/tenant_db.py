"""The tenants' databases, administered: one role and schema per shared tenant in the shared
database, one role and database per dedicated tenant, and the pre-migrated n8n schema of each
n8n version (the template) that new tenants start from.

The login is the platform's tenant administrator (TENANT_ADMIN_DATABASE_URL: CREATEDB and
CREATEROLE, not a superuser), which owns the shared and template databases and is granted each
tenant role it creates, so that it can clone, dump, drop and sign out as that role. What only a
superuser can do was done once by `deploy/postgres/tenant_boundary.sql` (run by
`deploy/local/stack.sh`): in the shared database an event trigger refuses any tenant's
`CREATE SCHEMA`, `ALTER SCHEMA`, `CREATE EXTENSION` and other objects outside its own schema,
and no tenant may connect to the platform's databases. A tenant role reaches only its own
database, with a connection limit and a statement timeout from its plan."""

import dataclasses
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
from rp9_pipelines.domain.tenants import (
    DEFAULT_ROLE_LIMITS,
    SHARED_DATABASE,
    RoleLimits,
    TenantNames,
    check_tenant_database,
)
from rp9_pipelines.resources.postgres_admin import PostgresAdminResource, execute, raw_connection
from rp9_pipelines.resources.postgres_dump import PgServer, past_autovacuum

_PSQL_META = re.compile(r"^\\(un)?restrict ")
# The event trigger of `deploy/postgres/tenant_boundary.sql` in the shared database.
BOUNDARY_TRIGGER = "rp9_tenant_boundary"
# The template builder's n8n (main only, its pool of 2) and spares; its migrations take long.
TEMPLATE_ROLE_LIMITS = RoleLimits(connection_limit=6, statement_timeout_ms=0)


class NotTheExpectedOwner(RuntimeError):
    """A role, schema or database of a tenant's name exists but is not what the platform made
    (another owner, or privileges a tenant role never has): nothing was changed."""


class BoundaryMissing(RuntimeError):
    """The shared database lacks what only a superuser can set up (its owner, the event trigger
    that keeps tenants inside their schemas)."""


@dataclass(frozen=True)
class Template:
    """A pre-migrated n8n schema as SQL (no owner, no grants, no data of any instance)."""

    schema: str
    sql: str


def _scalar(connection: sa.Connection, query: str, **values: object) -> object:
    return connection.execute(sa.text(query), values).scalar()


class TenantDatabaseResource(PostgresAdminResource):
    """Administers the tenants' databases on the platform's Postgres server: the shared database
    with one schema and role per tenant, and one database and role per dedicated tenant."""

    def _role_exists(self, server: sa.Connection, role: str) -> bool:
        return (
            _scalar(server, "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = :r", r=role)
            is not None
        )

    def _database_owner(self, server: sa.Connection, database: str) -> str | None:
        owner = _scalar(
            server,
            "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database"
            " WHERE datname = :d",
            d=database,
        )
        return str(owner) if owner is not None else None

    @staticmethod
    def _schema_owner(connection: sa.Connection, schema: str) -> str | None:
        owner = _scalar(
            connection,
            "SELECT pg_catalog.pg_get_userbyid(nspowner) FROM pg_catalog.pg_namespace"
            " WHERE nspname = :s",
            s=schema,
        )
        return str(owner) if owner is not None else None

    @staticmethod
    def _me(connection: sa.Connection) -> tuple[str, bool]:
        """The login's name and whether it is a superuser (tests may administer as one)."""
        row = connection.execute(
            sa.text(
                "SELECT current_user, rolsuper FROM pg_catalog.pg_roles"
                " WHERE rolname = current_user"
            )
        ).one()
        return str(row[0]), bool(row[1])

    def _check_role(self, server: sa.Connection, role: str) -> None:
        """An existing role of a tenant's name is reused only as a plain login: no attribute a
        tenant role never has, and a member of no other role."""
        row = server.execute(
            sa.text(
                "SELECT rolsuper OR rolcreaterole OR rolcreatedb OR rolreplication OR rolbypassrls,"
                " EXISTS (SELECT 1 FROM pg_catalog.pg_auth_members WHERE member = r.oid)"
                " FROM pg_catalog.pg_roles r WHERE rolname = :r"
            ),
            {"r": role},
        ).first()
        if row is not None and (row[0] or row[1]):
            raise NotTheExpectedOwner(
                f"role {role} exists with privileges or memberships a tenant role never has; "
                "nothing was changed"
            )

    def _check_owner(self, what: str, owner: str | None, expected: str) -> None:
        if owner is not None and owner != expected:
            raise NotTheExpectedOwner(
                f"{what} exists, owned by {owner} instead of {expected}; nothing was changed"
            )

    def _adopt(self, server: sa.Connection, role: str) -> None:
        """Make the login a member of `role` (with its privileges), which CREATE DATABASE …
        OWNER, SET ROLE, dumps, terminating its sessions and dropping its objects need."""
        held = _scalar(server, "SELECT pg_catalog.pg_has_role(current_user, :r, 'USAGE')", r=role)
        if not held and not self._me(server)[1]:
            execute(server, sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(role)))

    def _ensure_role(
        self, server: sa.Connection, role: str, password: str, limits: RoleLimits | None
    ) -> None:
        exists = self._role_exists(server, role)
        if limits is None:
            # Without its plan's limits, an existing role keeps the connection limit it has.
            kept = _scalar(
                server, "SELECT rolconnlimit FROM pg_catalog.pg_roles WHERE rolname = :r", r=role
            )
            limits = DEFAULT_ROLE_LIMITS
            if kept is not None and int(str(kept)) >= 0:
                limits = dataclasses.replace(limits, connection_limit=int(str(kept)))
        # An existing role was checked to be a plain login (`_check_role`); restating its
        # superuser, replication or bypassrls attribute is for superusers only.
        attributes = (
            "LOGIN"
            if exists
            else "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
        )
        execute(
            server,
            sql.SQL(
                ("ALTER" if exists else "CREATE")
                + " ROLE {} "
                + attributes
                + " CONNECTION LIMIT {} PASSWORD {}"
            ).format(
                sql.Identifier(role), sql.Literal(limits.connection_limit), sql.Literal(password)
            ),
        )
        execute(
            server,
            sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(
                sql.Identifier(role), sql.Literal(limits.statement_timeout_ms)
            ),
        )
        self._adopt(server, role)

    def _create_database(self, server: sa.Connection, database: str, owner: str) -> None:
        """Create `database` for `owner` unless it exists (its owner was checked); nobody else
        may connect to it."""
        if self._database_owner(server, database) is None:
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

    def _check_shared_database(self, server: sa.Connection) -> None:
        """The shared database belongs to the platform's login, with the boundary trigger."""
        login, superuser = self._me(server)
        owner = self._database_owner(server, SHARED_DATABASE)
        setup = "run deploy/postgres/tenant_boundary.sql as a superuser (stack.sh up does)"
        if owner is None:
            raise BoundaryMissing(f"database {SHARED_DATABASE} does not exist: {setup}")
        if owner != login and not superuser:
            raise BoundaryMissing(f"{SHARED_DATABASE} is owned by {owner}, not {login}: {setup}")
        with self.connect(SHARED_DATABASE) as shared:
            enabled = _scalar(
                shared,
                "SELECT evtenabled <> 'D' FROM pg_catalog.pg_event_trigger WHERE evtname = :e",
                e=BOUNDARY_TRIGGER,
            )
        if not enabled:
            raise BoundaryMissing(
                f"{SHARED_DATABASE} has no enabled event trigger {BOUNDARY_TRIGGER}: {setup}"
            )

    def ensure(
        self,
        names: TenantNames,
        password: str,
        template: Template | None = None,
        limits: RoleLimits | None = None,
    ) -> bool:
        """Create (or repair) the tenant's role and its schema or database. Idempotent.

        An existing role, schema or database is reused only when it is the one the platform
        made (else `NotTheExpectedOwner`, before anything changes). The role gets `limits`
        (its plan's; without, an existing role keeps its connection limit). With a template,
        a schema that has no tables yet is created as a copy of it; returns whether the
        tenant's schema holds n8n's tables (migrated) when this returns.
        """
        check_tenant_database(names)
        role, schema = sql.Identifier(names.db_role), sql.Identifier(names.db_schema)
        with self.connect("postgres") as server:
            self._check_role(server, names.db_role)
            if names.tier == "dedicated":
                self._check_owner(
                    f"database {names.db_name}",
                    self._database_owner(server, names.db_name),
                    names.db_role,
                )
            else:
                self._check_shared_database(server)
                with self.connect(SHARED_DATABASE) as shared:
                    self._check_owner(
                        f"schema {names.db_schema}",
                        self._schema_owner(shared, names.db_schema),
                        names.db_role,
                    )
            self._ensure_role(server, names.db_role, password, limits)
            if names.tier == "dedicated":
                self._create_database(server, names.db_name, names.db_role)
            else:
                execute(
                    server,
                    sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(
                        sql.Identifier(SHARED_DATABASE), role
                    ),
                )
        with self.connect(names.db_name) as database:
            if self._has_tables(database, names.db_schema):
                return True
            if template is not None:
                self._clone(database, names, template)
                return True
            if names.tier == "shared":
                execute(
                    database,
                    sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(schema, role),
                )
                execute(database, sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(schema))
        return False

    def set_limits(self, names: TenantNames, limits: RoleLimits) -> None:
        """Apply the plan's limits to the tenant's role (a plan change)."""
        check_tenant_database(names)
        role = sql.Identifier(names.db_role)
        with self.connect("postgres") as server:
            execute(
                server,
                sql.SQL("ALTER ROLE {} CONNECTION LIMIT {}").format(
                    role, sql.Literal(limits.connection_limit)
                ),
            )
            execute(
                server,
                sql.SQL("ALTER ROLE {} SET statement_timeout = {}").format(
                    role, sql.Literal(limits.statement_timeout_ms)
                ),
            )

    def set_login(self, names: TenantNames, enabled: bool) -> None:
        """Let the tenant's role log in again, or take its login away and end its sessions
        (suspend, delete). Nothing to do when the role is gone (purged)."""
        check_tenant_database(names)
        with self.connect("postgres") as server:
            if not self._role_exists(server, names.db_role):
                return
            self._check_role(server, names.db_role)
            self._adopt(server, names.db_role)
            self._set_login(server, names.db_role, enabled)

    def _set_login(self, server: sa.Connection, role: str, enabled: bool) -> None:
        execute(
            server,
            sql.SQL("ALTER ROLE {} " + ("LOGIN" if enabled else "NOLOGIN")).format(
                sql.Identifier(role)
            ),
        )
        if not enabled:
            server.execute(
                sa.text(
                    "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity"
                    " WHERE usename = :r"
                ),
                {"r": role},
            )

    # An upgrade's new main booting beside the serving one (`services/upgrades.switch`): it
    # waits at its first read of n8n's `migrations` table, which the serving main does not
    # read again, until the old stack is stopped.

    def withhold_migrations(self, names: TenantNames) -> None:
        """The tenant's role loses its rights on its `migrations` table, committed: a main
        booted for an upgrade whose run dies fails at that read (n8n exits) instead of
        migrating the data under the serving main. `migrations_locked`'s commit, or
        `restore_migrations`, gives them back."""
        self._on_migrations(names, "REVOKE ALL ON TABLE {} FROM {}")

    def restore_migrations(self, names: TenantNames) -> None:
        self._on_migrations(names, "GRANT ALL ON TABLE {} TO {}")

    def _on_migrations(self, names: TenantNames, statement: str) -> None:
        check_tenant_database(names)
        table = sql.Identifier(names.db_schema, "migrations")
        with self.connect(names.db_name) as connection:
            self._adopt(connection, names.db_role)
            execute(connection, sql.SQL(statement).format(table, sql.Identifier(names.db_role)))

    @contextmanager
    def migrations_locked(self, names: TenantNames, lock_timeout_s: float = 10) -> Iterator[None]:
        """One transaction holding the tenant's `migrations` table (`ACCESS EXCLUSIVE`), which
        gives its role its rights back and commits when the block ends without an error (else
        it is rolled back, the rights still withheld). A lock the tenant holds itself is
        waited for at most `lock_timeout_s`."""
        check_tenant_database(names)
        table = sql.Identifier(names.db_schema, "migrations")
        role = sql.Identifier(names.db_role)
        with self.connect(names.db_name) as connection:
            self._adopt(connection, names.db_role)
            raw = raw_connection(connection)
            raw.execute("BEGIN")
            try:
                raw.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout_s * 1000)}ms'")
                raw.execute(sql.SQL("GRANT ALL ON TABLE {} TO {}").format(table, role))
                raw.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(table))
                yield
            except BaseException:
                raw.execute("ROLLBACK")
                raise
            raw.execute("COMMIT")

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
        """Delete the tenant's data and role for good (purge): its sessions first, then its
        database (dedicated) or schema and objects (shared), then the role. Never a platform
        database, nor a schema or database someone else owns."""
        check_tenant_database(names)
        role = sql.Identifier(names.db_role)
        with self.connect("postgres") as server:
            role_exists = self._role_exists(server, names.db_role)
            if role_exists:
                self._check_role(server, names.db_role)
                self._adopt(server, names.db_role)
                self._set_login(server, names.db_role, False)
            if names.tier == "dedicated":
                owner = self._database_owner(server, names.db_name)
                self._check_owner(f"database {names.db_name}", owner, names.db_role)
                if owner is not None:
                    self._drop_database(server, names.db_name)
        if names.tier == "shared" and role_exists:
            with self.connect(SHARED_DATABASE) as shared:
                owner = self._schema_owner(shared, names.db_schema)
                self._check_owner(f"schema {names.db_schema}", owner, names.db_role)
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

    @staticmethod
    def _drop_database(server: sa.Connection, database: str) -> None:
        """DROP ... WITH (FORCE) ends the database's sessions, but not an autovacuum worker's
        (only a superuser or `pg_signal_backend` may): one busy on a database just filled (a
        promotion's copy) fails the drop for the moment it lasts."""
        statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(database)
        )
        past_autovacuum(lambda: execute(server, statement))

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
            if self._database_owner(server, TEMPLATE_DATABASE) is None:
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
            self._check_role(server, TEMPLATE_ROLE)
            login, superuser = self._me(server)
            owner = self._database_owner(server, TEMPLATE_DATABASE)
            if not superuser:
                self._check_owner(f"database {TEMPLATE_DATABASE}", owner, login)
            self._ensure_role(server, TEMPLATE_ROLE, password, TEMPLATE_ROLE_LIMITS)
            self._create_database(server, TEMPLATE_DATABASE, login)
            execute(
                server,
                sql.SQL("GRANT CONNECT, CREATE ON DATABASE {} TO {}").format(
                    sql.Identifier(TEMPLATE_DATABASE), sql.Identifier(TEMPLATE_ROLE)
                ),
            )
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
        with self.connect("postgres") as connection:
            self._adopt(connection, TEMPLATE_ROLE)
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
