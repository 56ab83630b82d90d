"""Postgres attacks with a tenant's own credentials (its role and the password its containers
hold, from Vault), then the platform's own work over that tenant: the autoscaler's windows, the
metrics window, usage's day, enforcement's counts, a backup and the restore of it into a
sandbox. The figures stay those the tenant's n8n recorded, or the tenant is reported unreadable;
no platform session ever runs the tenant's code; and no role gains a privilege.

Every function the attacks plant announces itself before it tries to escalate:
`pg_notify('rp9_pwned', '<what> <current_user> <session_user>')`. The tests listen on that
channel in the tenants' databases and accept only the tenant's own sessions (its n8n, its own
DDL) or a sandbox's login as the ones that ran them."""

import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import dagster as dg
import psycopg
import pytest
import sqlalchemy as sa

from rp9_pipelines.definitions import defs
from rp9_pipelines.domain.restore_drills import SandboxNames
from rp9_pipelines.domain.template import TEMPLATE_DATABASE, template_schema
from rp9_pipelines.domain.tenants import InvalidRequest, TenantNames
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.resources.postgres_admin import UnsafeRelation
from rp9_pipelines.resources.postgres_dump import (
    PgServer,
    create_sandbox,
    deactivate_workflows,
    drop_sandbox,
    restore_stream,
    restored_counts,
)
from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines.resources.tenant_copy import CopyRefused, TenantCopy
from rp9_pipelines.resources.tenant_db import NotTheExpectedOwner, TenantDatabaseResource
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.tenants.conftest import TenantN8n, unique_slug
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack

CHANNEL = "rp9_pwned"
CALLS = 3  # webhook executions each tenant's n8n runs before the attacks
WINDOW_S = 86_400


@dataclass(frozen=True)
class Attacker:
    tenant: dict[str, Any]
    names: TenantNames
    password: str

    @property
    def schema(self) -> str:
        return self.names.db_schema

    @property
    def role(self) -> str:
        return self.names.db_role


def _provision(api: Api, vault: VaultResource, settings: Settings, **fields: Any) -> Attacker:
    tenant = api.create_tenant(**fields)
    names = TenantNames(tenant["slug"], tenant["tier"])
    n8n = TenantN8n(settings, vault, tenant)
    n8n.install_echo("rp9-attack")
    for call in range(CALLS):
        assert n8n.call("rp9-attack", {"call": call}).status_code == 200
    return Attacker(tenant, names, (vault.read(names.vault_path) or {})["db_password"])


def _purge(api: Api, attacker: Attacker) -> None:
    response = api.request("DELETE", f"/tenants/{attacker.tenant['id']}?purge=true")
    assert response.status_code == 202, response.text
    assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"


@pytest.fixture(scope="module")
def shared(api: Api, vault: VaultResource, settings: Settings) -> Iterator[Attacker]:
    attacker = _provision(
        api, vault, settings, slug=unique_slug("pgs"), name="Pg S", plan="starter"
    )
    yield attacker
    _purge(api, attacker)


@pytest.fixture(scope="module")
def dedicated(api: Api, vault: VaultResource, settings: Settings) -> Iterator[Attacker]:
    attacker = _provision(
        api,
        vault,
        settings,
        slug=unique_slug("pgd"),
        name="Pg D",
        plan="starter",
        tier="dedicated",
    )
    yield attacker
    _purge(api, attacker)


@pytest.fixture(scope="module")
def attackers(shared: Attacker, dedicated: Attacker) -> list[Attacker]:
    return [shared, dedicated]


@pytest.fixture(scope="module")
def n8n_data(settings: Settings) -> N8nDataResource:
    """The platform's reads, through the tenant administrator as the platform binds them."""
    return N8nDataResource(admin_url=settings.tenant_admin_url)


def _url(settings: Settings, database: str, user: str | None = None, password: str = "") -> sa.URL:
    url = sa.make_url(sqlalchemy_url(settings.database_url)).set(database=database)
    return url.set(username=user, password=password) if user else url


@contextmanager
def as_tenant(
    settings: Settings, attacker: Attacker, database: str | None = None
) -> Iterator[sa.Connection]:
    """The tenant's own role on 127.0.0.1, as anything running in its containers could."""
    url = _url(settings, database or attacker.names.db_name, attacker.role, attacker.password)
    engine = sa.create_engine(url, poolclass=sa.NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def _connect(
    settings: Settings, database: str, user: str | None = None, password: str = ""
) -> psycopg.Connection[Any]:
    url = _url(settings, database, user, password)
    return psycopg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname=database,
        autocommit=True,
    )


class Listener:
    """LISTEN on the attacks' channel in each database (as the superuser, who only listens, or
    as `user`): what announced itself, by whom."""

    def __init__(
        self, settings: Settings, databases: set[str], user: str | None = None, password: str = ""
    ) -> None:
        self.connections = [
            _connect(settings, database, user, password) for database in sorted(databases)
        ]
        for connection in self.connections:
            connection.execute(f"LISTEN {CHANNEL}")
        self.heard: list[str] = []

    def drain(self) -> list[str]:
        for connection in self.connections:
            self.heard += [n.payload for n in connection.notifies(timeout=0.5)]
        return self.heard

    def strangers(self, allowed: set[str]) -> list[str]:
        """Announcements by any session other than the allowed roles' own."""
        return [
            payload
            for payload in self.drain()
            if not {payload.split()[-1], payload.split()[-2]} <= allowed
        ]

    def close(self) -> None:
        for connection in self.connections:
            connection.close()


@pytest.fixture(scope="module")
def listener(settings: Settings, attackers: list[Attacker]) -> Iterator[Listener]:
    listening = Listener(settings, {a.names.db_name for a in attackers})
    yield listening
    listening.close()


def _allowed(attackers: list[Attacker]) -> set[str]:
    return {a.role for a in attackers}


ROLE_COLUMNS = (
    "rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolreplication, rolbypassrls"
)


@dataclass(frozen=True)
class Privileges:
    roles: dict[str, tuple[Any, ...]]
    memberships: set[tuple[str, str, bool]]


def _privileges(admin_engine: sa.Engine) -> Privileges:
    with admin_engine.connect() as connection:
        roles = {
            str(row[0]): tuple(row[1:])
            for row in connection.execute(
                sa.text(f"SELECT rolname, {ROLE_COLUMNS} FROM pg_catalog.pg_roles")
            )
        }
        memberships = {
            (str(row[0]), str(row[1]), bool(row[2]))
            for row in connection.execute(
                sa.text(
                    "SELECT roleid::regrole::text, member::regrole::text, admin_option"
                    " FROM pg_catalog.pg_auth_members"
                )
            )
        }
    return Privileges(roles, memberships)


def _tenant_grant(membership: tuple[str, str, bool]) -> bool:
    """A tenant's or a sandbox's role granted to the tenant administrator: what provisioning
    (of any test running meanwhile) adds, and nothing else may."""
    role, member, admin_option = membership
    tenant_like = role.startswith(("t_", "d_", "rp9_drill_", '"t_', '"d_'))
    return tenant_like and member == "rp9_tenant_admin" and not admin_option


@pytest.fixture(scope="module")
def before(admin_engine: sa.Engine, attackers: list[Attacker]) -> Privileges:
    return _privileges(admin_engine)


def assert_no_privilege_gained(
    admin_engine: sa.Engine, before: Privileges, attackers: list[Attacker]
) -> None:
    after = _privileges(admin_engine)
    for role in set(before.roles) & set(after.roles):
        assert after.roles[role] == before.roles[role], role
    # Roles created meanwhile (other tests' tenants, sandboxes) are plain logins.
    for role in set(after.roles) - set(before.roles):
        assert not any(after.roles[role][i] for i in (0, 2, 3, 5, 6)), (role, after.roles[role])
    assert {m for m in after.memberships - before.memberships if not _tenant_grant(m)} == set()
    for attacker in attackers:
        assert [m for m in after.memberships if m[1] == attacker.role] == []
        assert after.roles[attacker.role] == (False, True, False, False, True, False, False)


def _refused(connection: sa.Connection, statement: str, match: str) -> None:
    with pytest.raises(sa.exc.DBAPIError, match=match):
        connection.execute(sa.text(statement))


# Attacks with the tenant's own role, on its own database ------------------------------------


def test_tenant_roles_have_limits_and_nothing_else(
    admin_engine: sa.Engine, attackers: list[Attacker]
) -> None:
    with admin_engine.connect() as connection:
        for attacker in attackers:
            row = connection.execute(
                sa.text(
                    f"SELECT {ROLE_COLUMNS}, rolconnlimit, rolconfig FROM pg_catalog.pg_roles"
                    " WHERE rolname = :r"
                ),
                {"r": attacker.role},
            ).one()
            assert tuple(row[:7]) == (False, True, False, False, True, False, False)
            assert 0 < row[7] <= 100, row  # a connection limit from the plan
            assert any(c.startswith("statement_timeout=") for c in row[8] or []), row


def test_a_shared_tenant_creates_nothing_outside_its_own_schema(
    settings: Settings, shared: Attacker, dedicated: Attacker
) -> None:
    future = TenantNames(unique_slug("future"), "shared").db_schema
    template = template_schema(settings.n8n_version)
    with as_tenant(settings, shared) as connection:
        # n8n's own statement on each connection still passes.
        connection.execute(sa.text(f'CREATE SCHEMA IF NOT EXISTS "{shared.schema}"'))
        for schema in ("rp9", future, template, "n8n_shared"):
            _refused(connection, f'CREATE SCHEMA "{schema}"', "not allowed to tenant role")
        _refused(
            connection,
            f'ALTER SCHEMA "{shared.schema}" RENAME TO "{future}"',
            "not allowed to tenant role",
        )
        _refused(connection, "CREATE TABLE public.rp9_squat (id int)", "permission denied")
        _refused(
            connection,
            "CREATE FUNCTION public.now() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            "permission denied",
        )
        _refused(
            connection,
            f'CREATE EXTENSION IF NOT EXISTS pgcrypto SCHEMA "{shared.schema}"',
            "not allowed to tenant role|permission denied",
        )
        _refused(connection, "CREATE PUBLICATION rp9_pub FOR ALL TABLES", "superuser|not allowed")
        connection.execute(sa.text(f'CREATE TYPE "{shared.schema}".rp9_evil AS (v text)'))
        connection.execute(
            sa.text(
                f'CREATE FUNCTION "{shared.schema}".rp9_evil_text("{shared.schema}".rp9_evil)'
                " RETURNS text LANGUAGE sql AS 'SELECT $1.v'"
            )
        )
        _refused(
            connection,
            f'CREATE CAST ("{shared.schema}".rp9_evil AS text) WITH FUNCTION'
            f' "{shared.schema}".rp9_evil_text("{shared.schema}".rp9_evil) AS IMPLICIT',
            "not allowed to tenant role",
        )


@pytest.mark.parametrize(
    "database", ["rp9_platform", "postgres", "supabase", "template1", TEMPLATE_DATABASE]
)
def test_tenants_connect_to_no_platform_database(
    settings: Settings, attackers: list[Attacker], database: str
) -> None:
    for attacker in attackers:
        with (
            pytest.raises(sa.exc.OperationalError, match="permission denied for database"),
            as_tenant(settings, attacker, database),
        ):
            pass


def test_tenants_connect_to_no_other_tenants_database(
    settings: Settings, shared: Attacker, dedicated: Attacker
) -> None:
    for attacker, other in ((shared, dedicated), (dedicated, shared)):
        with (
            pytest.raises(sa.exc.OperationalError, match="permission denied for database"),
            as_tenant(settings, attacker, other.names.db_name),
        ):
            pass


def _pwn_sql(schema: str, role: str) -> str:
    """A function that announces itself, then tries to make `role` a superuser (or anything
    near it), and everything that shadows what the platform calls, each through it."""
    s = f'"{schema}"'
    return f"""
CREATE FUNCTION {s}.rp9_pwn(what text) RETURNS boolean LANGUAGE plpgsql AS $body$
BEGIN
  PERFORM pg_catalog.pg_notify('{CHANNEL}', what || ' ' || current_user || ' ' || session_user);
  BEGIN EXECUTE 'ALTER ROLE "{role}" SUPERUSER'; EXCEPTION WHEN OTHERS THEN NULL; END;
  BEGIN EXECUTE 'ALTER ROLE "{role}" CREATEROLE CREATEDB BYPASSRLS';
  EXCEPTION WHEN OTHERS THEN NULL; END;
  BEGIN EXECUTE 'GRANT pg_execute_server_program, pg_read_all_data TO "{role}"';
  EXCEPTION WHEN OTHERS THEN NULL; END;
  BEGIN EXECUTE 'GRANT rp9_tenant_admin TO "{role}"'; EXCEPTION WHEN OTHERS THEN NULL; END;
  RETURN true;
END
$body$;
CREATE FUNCTION {s}.rp9_pwn_always(what text) RETURNS boolean LANGUAGE plpgsql IMMUTABLE
AS $body$ BEGIN RETURN {s}.rp9_pwn(what); END $body$;
CREATE FUNCTION {s}.make_interval(secs integer) RETURNS interval LANGUAGE plpgsql
AS $body$ BEGIN PERFORM {s}.rp9_pwn('make_interval(integer)');
  RETURN pg_catalog.make_interval(years => 100); END $body$;
CREATE FUNCTION {s}.make_interval(secs double precision) RETURNS interval LANGUAGE plpgsql
AS $body$ BEGIN PERFORM {s}.rp9_pwn('make_interval(double)');
  RETURN pg_catalog.make_interval(years => 100); END $body$;
CREATE FUNCTION {s}.now() RETURNS timestamptz LANGUAGE plpgsql
AS $body$ BEGIN PERFORM {s}.rp9_pwn('now'); RETURN pg_catalog.now() + interval '100 years';
END $body$;
CREATE FUNCTION {s}.count(anyelement) RETURNS bigint LANGUAGE plpgsql
AS $body$ BEGIN PERFORM {s}.rp9_pwn('count'); RETURN 0; END $body$;
CREATE FUNCTION {s}.pg_export_snapshot() RETURNS text LANGUAGE plpgsql
AS $body$ BEGIN PERFORM {s}.rp9_pwn('pg_export_snapshot'); RETURN 'x'; END $body$;
CREATE FUNCTION {s}.pg_has_role(name, oid, text) RETURNS boolean LANGUAGE plpgsql
AS $body$ BEGIN PERFORM {s}.rp9_pwn('pg_has_role'); RETURN true; END $body$;
CREATE FUNCTION {s}.rp9_varchar_eq(varchar, varchar) RETURNS boolean LANGUAGE plpgsql
AS $body$ BEGIN PERFORM {s}.rp9_pwn('=(varchar)'); RETURN false; END $body$;
CREATE OPERATOR {s}.= (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = {s}.rp9_varchar_eq);
CREATE OPERATOR {s}.<> (LEFTARG = varchar, RIGHTARG = varchar, FUNCTION = {s}.rp9_varchar_eq);
CREATE FUNCTION {s}.rp9_name_eq(name, name) RETURNS boolean LANGUAGE plpgsql
AS $body$ BEGIN PERFORM {s}.rp9_pwn('=(name)'); RETURN false; END $body$;
CREATE OPERATOR {s}.= (LEFTARG = name, RIGHTARG = name, FUNCTION = {s}.rp9_name_eq);
CREATE FUNCTION {s}.rp9_oid_ge(oid, integer) RETURNS boolean LANGUAGE plpgsql
AS $body$ BEGIN PERFORM {s}.rp9_pwn('>=(oid)'); RETURN true; END $body$;
CREATE OPERATOR {s}.>= (LEFTARG = oid, RIGHTARG = integer, FUNCTION = {s}.rp9_oid_ge);
CREATE FUNCTION {s}.rp9_ts_ge(timestamptz, timestamptz) RETURNS boolean LANGUAGE plpgsql
AS $body$ BEGIN PERFORM {s}.rp9_pwn('>=(timestamptz)'); RETURN true; END $body$;
CREATE OPERATOR {s}.>= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = {s}.rp9_ts_ge);
CREATE OPERATOR {s}.< (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = {s}.rp9_ts_ge);
CREATE FUNCTION {s}.rp9_trigger() RETURNS trigger LANGUAGE plpgsql
AS $body$ BEGIN PERFORM {s}.rp9_pwn('trigger ' || TG_TABLE_NAME);
  RETURN COALESCE(NEW, OLD); END $body$;
CREATE TRIGGER rp9_pwn BEFORE INSERT OR UPDATE OR DELETE ON {s}.execution_entity
  FOR EACH ROW EXECUTE FUNCTION {s}.rp9_trigger();
CREATE TRIGGER rp9_pwn BEFORE UPDATE ON {s}.workflow_entity
  FOR EACH ROW EXECUTE FUNCTION {s}.rp9_trigger();
-- Bait for the restore: building this index runs the function as the table's owner.
CREATE TABLE {s}.rp9_bait (id int);
INSERT INTO {s}.rp9_bait VALUES (1);
CREATE FUNCTION {s}.rp9_bait_key(int) RETURNS int LANGUAGE plpgsql IMMUTABLE
AS $body$ BEGIN PERFORM {s}.rp9_pwn('index build'); RETURN $1; END $body$;
CREATE INDEX rp9_bait_index ON {s}.rp9_bait ({s}.rp9_bait_key(id));
"""


# (name, statement, undo): changes to the tables the platform reads, each making the tenant
# unreadable; `{s}` is the tenant's schema.
OWN_TYPE = "columns of the tenant's own type"
TABLE_ATTACKS = [
    (
        "a view calling the tenant's function",
        """ALTER TABLE {s}.execution_entity RENAME TO rp9_real;
        CREATE VIEW {s}.execution_entity AS
          SELECT r.*, {s}.rp9_pwn('view') AS pwned FROM {s}.rp9_real r""",
        """DROP VIEW {s}.execution_entity;
        ALTER TABLE {s}.rp9_real RENAME TO execution_entity""",
    ),
    (
        "a rule",
        """CREATE RULE rp9_pwn AS ON UPDATE TO {s}.execution_entity
          DO ALSO SELECT {s}.rp9_pwn('rule')""",
        "DROP RULE rp9_pwn ON {s}.execution_entity",
    ),
    (
        "row-level security with a policy",
        """ALTER TABLE {s}.execution_entity ENABLE ROW LEVEL SECURITY;
        ALTER TABLE {s}.execution_entity FORCE ROW LEVEL SECURITY;
        CREATE POLICY rp9_pwn ON {s}.execution_entity USING ({s}.rp9_pwn('policy'))""",
        """DROP POLICY rp9_pwn ON {s}.execution_entity;
        ALTER TABLE {s}.execution_entity NO FORCE ROW LEVEL SECURITY;
        ALTER TABLE {s}.execution_entity DISABLE ROW LEVEL SECURITY""",
    ),
    (
        "a partial index the planner folds",
        """CREATE INDEX rp9_pwn ON {s}.execution_entity (id)
          WHERE {s}.rp9_pwn_always('index predicate')""",
        "DROP INDEX {s}.rp9_pwn",
    ),
    (
        "an expression index the planner folds",
        """CREATE INDEX rp9_pwn ON {s}.execution_entity
          ((id + {s}.rp9_bait_key(pg_catalog.length({s}.rp9_pwn_always('index')::text))))""",
        "DROP INDEX {s}.rp9_pwn",
    ),
    (
        "a CHECK constraint",
        """ALTER TABLE {s}.execution_entity ADD CONSTRAINT rp9_pwn
          CHECK ({s}.rp9_pwn_always('check')) NOT VALID""",
        "ALTER TABLE {s}.execution_entity DROP CONSTRAINT rp9_pwn",
    ),
    (
        "extended statistics on an expression",
        """CREATE STATISTICS {s}.rp9_pwn ON
          (id + {s}.rp9_bait_key(pg_catalog.length({s}.rp9_pwn_always('stats')::text))), status
          FROM {s}.execution_entity""",
        "DROP STATISTICS {s}.rp9_pwn",
    ),
    (
        OWN_TYPE,
        """CREATE DOMAIN {s}.rp9_text AS varchar CHECK ({s}.rp9_pwn(VALUE));
        ALTER TABLE {s}.execution_entity ALTER COLUMN mode TYPE {s}.rp9_text,
          ALTER COLUMN status TYPE {s}.rp9_text""",
        """ALTER TABLE {s}.execution_entity ALTER COLUMN mode TYPE varchar,
          ALTER COLUMN status TYPE varchar;
        DROP DOMAIN {s}.rp9_text""",
    ),
    (
        "the tenant's own collation (on indexed columns)",
        """CREATE COLLATION {s}.rp9_c (provider = icu, locale = 'und-u-ks-level2',
          deterministic = false);
        ALTER TABLE {s}.execution_entity ALTER COLUMN status TYPE varchar COLLATE {s}.rp9_c,
          ALTER COLUMN mode TYPE varchar COLLATE {s}.rp9_c""",
        """ALTER TABLE {s}.execution_entity
          ALTER COLUMN status TYPE varchar COLLATE pg_catalog."default",
          ALTER COLUMN mode TYPE varchar COLLATE pg_catalog."default";
        DROP COLLATION {s}.rp9_c""",
    ),
]


@dataclass(frozen=True)
class Figures:
    windows: dict[str, Any]
    window: dict[str, Any]
    by_day: dict[str, dict[dt.date, int]]
    day: dict[str, Any]
    counted: dict[str, int]


def _figures(n8n_data: N8nDataResource, attackers: list[Attacker]) -> Figures:
    names = [a.names for a in attackers]
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    windows = n8n_data.execution_windows(names, WINDOW_S)
    assert windows.errors == {}
    by_day, errors = n8n_data.executions_by_day(names, since)
    assert errors == {}
    today = dt.datetime.now(dt.UTC).date()
    return Figures(
        windows=windows.windows,
        window={a.names.slug: n8n_data.execution_window(a.names, WINDOW_S) for a in attackers},
        by_day=by_day,
        day={a.names.slug: n8n_data.execution_day(a.names, today) for a in attackers},
        counted={a.names.slug: n8n_data.count_executions(a.names) for a in attackers},
    )


@pytest.fixture(scope="module")
def baseline(n8n_data: N8nDataResource, attackers: list[Attacker], before: Privileges) -> Figures:
    """The platform's figures before any attack: what each tenant's n8n recorded."""

    def settled() -> Figures | None:
        figures = _figures(n8n_data, attackers)
        done = all(figures.counted[a.names.slug] >= CALLS for a in attackers)
        return figures if done else None

    figures = wait_until(settled, timeout_s=60, what="the webhook executions")
    for attacker in attackers:
        slug = attacker.names.slug
        assert figures.windows[slug].total == figures.window[slug].total == CALLS
        assert sum(figures.by_day[slug].values()) == CALLS
        day = figures.day[slug]
        assert day is not None
        assert day.executions == CALLS
    return figures


def _backup(tenant: dict[str, Any]) -> dg.ExecuteInProcessResult:
    config = {
        "ops": {"backup_database": {"config": {"tenant_id": tenant["id"], "kind": "on_demand"}}}
    }
    return (
        defs()
        .get_job_def("backup_tenant")
        .execute_in_process(
            run_config=config, tags={"rp9/tenant": tenant["slug"]}, raise_on_error=False
        )
    )


def test_shadowed_functions_and_operators_never_run_in_the_platforms_reads_backups_or_restores(
    settings: Settings,
    admin_engine: sa.Engine,
    n8n_data: N8nDataResource,
    s3: S3Resource,
    attackers: list[Attacker],
    dedicated: Attacker,
    baseline: Figures,
    before: Privileges,
    listener: Listener,
) -> None:
    for attacker in attackers:
        with as_tenant(settings, attacker) as connection:
            connection.execute(sa.text(_pwn_sql(attacker.schema, attacker.role)))
    # A dedicated tenant owns its database: it points everyone's name resolution (and every
    # setting it can) at its own schema.
    with as_tenant(settings, dedicated) as connection:
        database, role = dedicated.names.db_name, dedicated.role
        for setting in (
            "search_path = public, pg_catalog",
            "row_security = on",
            "constraint_exclusion = on",
            "default_transaction_read_only = off",
        ):
            connection.execute(sa.text(f'ALTER DATABASE "{database}" SET {setting}'))
            connection.execute(sa.text(f'ALTER ROLE "{role}" SET {setting}'))
            connection.execute(
                sa.text(f'ALTER ROLE "{role}" IN DATABASE "{database}" SET {setting}')
            )
    allowed = _allowed(attackers)
    assert listener.strangers(allowed) == []

    # The platform's reads: the same figures as before, none of the tenant's code run.
    assert _figures(n8n_data, attackers) == baseline
    assert listener.strangers(allowed) == []

    # A backup of each, then its restore into a sandbox as the drill does it.
    server = PgServer.from_url(settings.tenant_admin_url)
    for attacker in attackers:
        result = _backup(attacker.tenant)
        assert result.success, attacker.names.slug
        output = result.output_for_node("backup_database")
        assert output["manifest"]["executions"] == CALLS
        assert listener.strangers(allowed) == []

        sandbox = SandboxNames(uuid.uuid4().hex[:12])
        as_sandbox = create_sandbox(server, sandbox, f"sandbox-{uuid.uuid4().hex}")
        # As the sandbox's login: the administrator may end its session to drop it.
        sandbox_listener = Listener(
            settings, {sandbox.database}, as_sandbox.user, as_sandbox.password
        )
        try:
            restored = restore_stream(
                as_sandbox, sandbox.database, sandbox.role, s3.chunks(output["key"])
            )
            assert restored.exit_code == 0, restored.stderr
            assert restored_counts(as_sandbox, sandbox.database, attacker.names).executions == CALLS
            assert deactivate_workflows(as_sandbox, sandbox.database, attacker.names) >= 1
            heard = sandbox_listener.drain()
            # The bait index and the update trigger did run, as the sandbox's own login only.
            assert any(h.startswith("index build") for h in heard), heard
            assert any(h.startswith("trigger workflow_entity") for h in heard), heard
            assert sandbox_listener.strangers({sandbox.role}) == []
        finally:
            sandbox_listener.close()
            drop_sandbox(server, sandbox.database)
    assert listener.strangers(allowed) == []
    assert_no_privilege_gained(admin_engine, before, attackers)


@pytest.mark.parametrize(
    ("attack", "statement", "undo"), TABLE_ATTACKS, ids=[a[0] for a in TABLE_ATTACKS]
)
def test_a_tenant_that_changes_what_the_platform_reads_is_reported_unreadable_not_read(
    settings: Settings,
    admin_engine: sa.Engine,
    n8n_data: N8nDataResource,
    attackers: list[Attacker],
    baseline: Figures,
    before: Privileges,
    listener: Listener,
    attack: str,
    statement: str,
    undo: str,
) -> None:
    allowed = _allowed(attackers)
    for attacker in attackers:
        if "rp9_pwn(" not in _functions(admin_engine, attacker):
            with as_tenant(settings, attacker) as connection:
                connection.execute(sa.text(_pwn_sql(attacker.schema, attacker.role)))
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    for attacker in attackers:
        s = f'"{attacker.schema}"'
        with as_tenant(settings, attacker) as connection:
            connection.execute(sa.text(statement.format(s=s)))
        listener.drain()  # the tenant's own DDL may have run its functions: its business
        listener.heard.clear()
        try:
            others = [a.names for a in attackers if a is not attacker]
            windows = n8n_data.execution_windows([a.names for a in attackers], WINDOW_S)
            assert set(windows.errors) == {attacker.names.slug}, windows.errors
            assert "UnsafeRelation" in windows.errors[attacker.names.slug]
            for other in others:  # the other tenant still counts
                assert windows.windows[other.slug] == baseline.windows[other.slug]
            counts, errors = n8n_data.executions_by_day([a.names for a in attackers], since)
            assert set(errors) == {attacker.names.slug}
            assert attacker.names.slug not in counts
            with pytest.raises(UnsafeRelation):
                n8n_data.execution_window(attacker.names, WINDOW_S)
            with pytest.raises(UnsafeRelation):
                n8n_data.execution_day(attacker.names, dt.datetime.now(dt.UTC).date())
            if attack == OWN_TYPE:  # counting reads no column: still what n8n recorded
                assert n8n_data.count_executions(attacker.names) == CALLS
            else:
                with pytest.raises(UnsafeRelation):
                    n8n_data.count_executions(attacker.names)
            assert listener.strangers(allowed) == [], attack
        finally:
            with as_tenant(settings, attacker) as connection:
                connection.execute(sa.text(undo.format(s=s)))
    assert _figures(n8n_data, attackers) == baseline
    assert listener.strangers(allowed) == []
    assert_no_privilege_gained(admin_engine, before, attackers)


def _functions(admin_engine: sa.Engine, attacker: Attacker) -> str:
    url = admin_engine.url.set(database=attacker.names.db_name)
    # The superuser in a tenant's database: names resolve in pg_catalog only.
    engine = sa.create_engine(
        url, poolclass=sa.NullPool, connect_args={"options": "-c search_path=pg_catalog"}
    )
    try:
        with engine.connect() as connection:
            names = connection.execute(
                sa.text(
                    "SELECT string_agg(proname || '(', ' ') FROM pg_catalog.pg_proc"
                    " WHERE pronamespace = pg_catalog.to_regnamespace(:s)"
                ),
                {"s": attacker.schema},
            ).scalar()
    finally:
        engine.dispose()
    return str(names or "")


def test_a_backup_of_a_tenant_with_an_unsafe_table_fails_without_running_it(
    settings: Settings,
    admin_engine: sa.Engine,
    shared: Attacker,
    attackers: list[Attacker],
    before: Privileges,
    listener: Listener,
) -> None:
    s = f'"{shared.schema}"'
    statement, undo = TABLE_ATTACKS[0][1], TABLE_ATTACKS[0][2]
    if "rp9_pwn(" not in _functions(admin_engine, shared):
        with as_tenant(settings, shared) as connection:
            connection.execute(sa.text(_pwn_sql(shared.schema, shared.role)))
    with as_tenant(settings, shared) as connection:
        connection.execute(sa.text(statement.format(s=s)))
    try:
        result = _backup(shared.tenant)
        assert not result.success
        failure = result.failure_data_for_node("backup_database")
        assert failure is not None
        assert "UnsafeRelation" in str(failure.error)
    finally:
        with as_tenant(settings, shared) as connection:
            connection.execute(sa.text(undo.format(s=s)))
    assert listener.strangers(_allowed(attackers)) == []
    assert_no_privilege_gained(admin_engine, before, attackers)


def test_set_login_signs_the_tenant_out_and_back_in(
    settings: Settings, tenant_db: TenantDatabaseResource, shared: Attacker
) -> None:
    with as_tenant(settings, shared) as session:
        session.execute(sa.text("SELECT 1"))
        tenant_db.set_login(shared.names, False)
        with pytest.raises(sa.exc.OperationalError):
            session.execute(sa.text("SELECT 1"))  # its session was ended
    with (
        pytest.raises(sa.exc.OperationalError, match="not permitted to log in"),
        as_tenant(settings, shared),
    ):
        pass
    tenant_db.set_login(shared.names, True)
    with as_tenant(settings, shared) as session:
        assert session.execute(sa.text("SELECT 1")).scalar() == 1


# A promotion's copy ---------------------------------------------------------------------------


TRAPS = {
    "a trigger the catch-up's COPY fires": (
        "CREATE TRIGGER rp9_copy_trap BEFORE INSERT ON {s}.execution_entity"
        " FOR EACH ROW EXECUTE FUNCTION {s}.rp9_copy_trap()",
        "DROP TRIGGER rp9_copy_trap ON {s}.execution_entity",
        "rp9_copy_trap",
    ),
    "a CHECK constraint of the tenant's function": (
        "ALTER TABLE {s}.execution_entity ADD CONSTRAINT rp9_copy_check"
        " CHECK ({s}.rp9_copy_check(id))",
        "ALTER TABLE {s}.execution_entity DROP CONSTRAINT rp9_copy_check",
        "using the tenant's objects",
    ),
}


@pytest.mark.parametrize("trap", sorted(TRAPS))
def test_a_promotion_copy_the_tenant_planted_a_trap_in_is_refused_before_it_is_written(
    settings: Settings,
    tenant_db: TenantDatabaseResource,
    shared: Attacker,
    dedicated: Attacker,
    attackers: list[Attacker],
    listener: Listener,
    trap: str,
) -> None:
    """A promotion's copy is written by the platform (TRUNCATE, COPY, DELETE) while the
    tenant's role may log in to it (its main boots on it). A dedicated database stands in for
    such a copy: what the tenant planted there that those writes would run is refused before
    any of them, and nothing of the tenant's ran as the platform."""
    plant, remove, why = TRAPS[trap]  # the refusal names earlier attacks' traps too
    s = f'"{dedicated.schema}"'
    with as_tenant(settings, dedicated) as tenant:
        for function, returns, body in (
            ("rp9_copy_trap()", "trigger", "RETURN NEW;"),
            ("rp9_copy_check(bigint)", "boolean", "RETURN true;"),
        ):
            tenant.execute(
                sa.text(
                    f"CREATE OR REPLACE FUNCTION {s}.{function} RETURNS {returns}"
                    f" LANGUAGE plpgsql AS $$ BEGIN PERFORM pg_catalog.pg_notify('{CHANNEL}',"
                    f" 'copy ' || current_user || ' ' || session_user); {body} END $$"
                )
            )
        tenant.execute(sa.text(plant.format(s=s)))
    copy = TenantCopy(tenant_db, shared.names, dedicated.names)
    try:
        with pytest.raises(CopyRefused, match=why), copy.locked():
            pass
    finally:
        with as_tenant(settings, dedicated) as tenant:
            tenant.execute(sa.text(remove.format(s=s)))
    assert listener.strangers(_allowed(attackers)) == []


# The platform's own names --------------------------------------------------------------------


def test_existing_objects_are_reused_only_with_the_expected_owner(
    settings: Settings, tenant_db: TenantDatabaseResource, admin_engine: sa.Engine
) -> None:
    squatted = TenantNames(unique_slug("squat"), "shared")
    occupied = TenantNames(unique_slug("occup"), "dedicated")
    privileged = TenantNames(unique_slug("priv"), "shared")
    shared_db = sa.create_engine(
        _url(settings, "n8n_shared"), poolclass=sa.NullPool, isolation_level="AUTOCOMMIT"
    )
    with shared_db.connect() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{squatted.db_schema}"'))
    with admin_engine.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{occupied.db_name}"'))
        connection.execute(sa.text(f'CREATE ROLE "{privileged.db_role}" LOGIN CREATEDB'))
    try:
        for names in (squatted, occupied, privileged):
            with pytest.raises(NotTheExpectedOwner, match="nothing was changed"):
                tenant_db.ensure(names, "password-1")
        with admin_engine.connect() as connection:
            roles = connection.execute(
                sa.text("SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(:r)"),
                {"r": [squatted.db_role, occupied.db_role]},
            ).all()
            assert roles == []
        with pytest.raises(NotTheExpectedOwner):
            tenant_db.drop(occupied)
    finally:
        with shared_db.connect() as connection:
            connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{squatted.db_schema}"'))
        shared_db.dispose()
        with admin_engine.connect() as connection:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{occupied.db_name}"'))
            connection.execute(sa.text(f'DROP ROLE IF EXISTS "{privileged.db_role}"'))


@pytest.mark.parametrize("slug", ["shared", "a", "UPPER"])
def test_no_tenant_operation_targets_a_platform_database(
    tenant_db: TenantDatabaseResource, admin_engine: sa.Engine, slug: str
) -> None:
    names = TenantNames(slug, "dedicated")
    with pytest.raises(InvalidRequest):
        tenant_db.drop(names)
    with pytest.raises(InvalidRequest):
        tenant_db.ensure(names, "password-1")
    with pytest.raises(InvalidRequest):
        tenant_db.set_login(names, False)
    with admin_engine.connect() as connection:
        assert (
            connection.execute(
                sa.text("SELECT count(*) FROM pg_catalog.pg_database WHERE datname = 'n8n_shared'")
            ).scalar()
            == 1
        )


def test_the_api_refuses_the_platforms_names(api: Api) -> None:
    for slug in ("shared", "postgres", "supabase", "template", "acme\n"):
        response = api.post(
            "/tenants", {"slug": slug, "name": "Nope", "plan": "starter", "tier": "dedicated"}
        )
        assert response.status_code == 422, (slug, response.text)
        assert response.json()["error"]["code"] in {"invalid_slug", "invalid_request"}, (
            response.text
        )
