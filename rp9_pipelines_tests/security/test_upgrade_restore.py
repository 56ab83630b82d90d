"""An upgrade's rollback restores a tenant's snapshot into its live schema: whatever the tenant
planted in it (a trigger, a function) runs as the tenant, never as the platform, and a restore
that fails leaves the tenant's data as it was."""

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.resources.postgres_dump import PgServer, PgToolError, restore_in_place
from rp9_pipelines.resources.tenant_db import TenantDatabaseResource
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.tenants.conftest import unique_slug

pytestmark = pytest.mark.stack

PASSWORD = "password-restore-1"


@pytest.fixture
def planted(tenant_db: TenantDatabaseResource) -> Iterator[TenantNames]:
    """A shared tenant's schema with five executions and, by the tenant's own hand, a trigger
    that records who fires it and tries to make the tenant a superuser."""
    names = TenantNames(unique_slug("rs"), "shared")
    tenant_db.ensure(names, PASSWORD)
    s, role = names.db_schema, names.db_role
    with _as_tenant(names).connect(names.db_name, autocommit=True) as connection:
        connection.execute(f'CREATE TABLE "{s}".execution_entity (id int PRIMARY KEY)')
        connection.execute(f'INSERT INTO "{s}".execution_entity SELECT generate_series(1, 5)')
        connection.execute(f'CREATE TABLE "{s}".fired (by text)')
        connection.execute(
            f'CREATE FUNCTION "{s}".grab() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN'
            f" INSERT INTO \"{s}\".fired VALUES (current_user::text || '/' || session_user::text);"
            f" BEGIN EXECUTE 'ALTER ROLE \"{role}\" SUPERUSER'; EXCEPTION WHEN others THEN"
            " NULL; END; RETURN NEW; END $$"
        )
        connection.execute(
            f'CREATE TRIGGER grab BEFORE INSERT ON "{s}".execution_entity'
            f' FOR EACH ROW EXECUTE FUNCTION "{s}".grab()'
        )
    yield names
    tenant_db.drop(names)


def _admin() -> PgServer:
    return PgServer.from_url(Settings().tenant_admin_url)


def _as_tenant(names: TenantNames) -> PgServer:
    return _admin().login(names.db_role, PASSWORD)


def _dump(names: TenantNames, into: Path) -> Path:
    admin = _admin()
    subprocess.run(
        [admin.tool("pg_dump", names.db_name), "-Fc", "-n", names.db_schema, "-f", str(into)],
        env=admin.env(names.db_name),
        check=True,
    )
    return into


def _rows(names: TenantNames, table: str) -> list[tuple[object, ...]]:
    with _admin().connect(names.db_name) as connection:
        found = connection.execute(f'SELECT * FROM "{names.db_schema}".{table} ORDER BY 1')
        return [tuple(row) for row in found.fetchall()]


def _superuser(names: TenantNames, admin_engine: sa.Engine) -> bool:
    with admin_engine.connect() as connection:
        return bool(
            connection.execute(
                sa.text("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = :r"),
                {"r": names.db_role},
            ).scalar()
        )


def test_a_snapshot_restored_into_a_hostile_schema_runs_its_triggers_as_nobody_but_the_tenant(
    planted: TenantNames, admin_engine: sa.Engine, tmp_path: Path
) -> None:
    dump = _dump(planted, tmp_path / "snapshot.dump")
    with _as_tenant(planted).connect(planted.db_name, autocommit=True) as connection:
        connection.execute(
            f'INSERT INTO "{planted.db_schema}".execution_entity SELECT generate_series(6, 8)'
        )
    left = restore_in_place(_admin(), _as_tenant(planted), planted, dump, "t_aside_rs")
    assert left == 3
    assert _rows(planted, "execution_entity") == [(i,) for i in range(1, 6)]
    # The trigger came back with the data, and never fired as anyone but the tenant.
    assert {by for (by,) in _rows(planted, "fired")} <= {f"{planted.db_role}/{planted.db_role}"}
    assert not _superuser(planted, admin_engine)
    with _admin().connect(planted.db_name) as connection:
        schemas = connection.execute(
            "SELECT nspname, pg_catalog.pg_get_userbyid(nspowner),"
            " pg_catalog.has_schema_privilege('public', oid, 'USAGE')"
            " FROM pg_catalog.pg_namespace WHERE nspname IN (%s, 't_aside_rs')",
            (planted.db_schema,),
        ).fetchall()
    assert schemas == [(planted.db_schema, planted.db_role, False)]


def test_a_restore_that_fails_leaves_the_tenants_schema_as_it_was(
    planted: TenantNames, tmp_path: Path
) -> None:
    whole = _dump(planted, tmp_path / "snapshot.dump").read_bytes()
    broken = tmp_path / "broken.dump"
    broken.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(PgToolError):
        restore_in_place(_admin(), _as_tenant(planted), planted, broken, "t_aside_rs")
    assert _rows(planted, "execution_entity") == [(i,) for i in range(1, 6)]
    with pytest.raises(PermissionError):
        restore_in_place(_admin(), _admin(), planted, broken, "t_aside_rs")
