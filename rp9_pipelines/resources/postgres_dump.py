"""The Postgres side of backups and drills: an exported snapshot and the manifest counted in
it, `pg_dump` of that snapshot, `pg_restore` into a sandbox database, and the sandbox's
database and role.

The platform's tenant administration login (TENANT_ADMIN_DATABASE_URL) takes the snapshot, counts
the manifest (after `check_relations`: plain tables of the tenant only) and dumps; every session
and tool runs with the pinned `SESSION_OPTIONS` (PGOPTIONS). What happens inside a sandbox —
`pg_restore` of a tenant's dump, whose defaults, constraints, triggers and index expressions may
call the tenant's functions, and the drill's reads and updates — runs as the sandbox's own
unprivileged login (`create_sandbox` returns it), never as the administrator: `--role` alone
would not do, since a tenant's function can `RESET ROLE`. Passwords reach `pg_dump` and
`pg_restore` through their environment (PGPASSWORD), never their arguments, a log or a run's
config.
"""

import dataclasses
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psycopg
import sqlalchemy as sa
from psycopg import sql

from rp9_pipelines.domain.backups import Manifest, workflow_digest
from rp9_pipelines.domain.restore_drills import SANDBOX_PREFIX, SandboxNames
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.resources.postgres_admin import SESSION_OPTIONS, Reads, require_readable
from rp9_pipelines.settings import sqlalchemy_url

STDERR_TAIL = 2000


class PgToolError(RuntimeError):
    """pg_dump or pg_restore exited non-zero; the message ends with its stderr."""


@dataclass(frozen=True)
class PgServer:
    """Where the tenants' databases live, and a login on it: the administrator that dumps them,
    or a sandbox's own role that restores into it (`login`)."""

    host: str
    port: int
    user: str
    password: str = field(default="", repr=False)
    connect_timeout_s: int = 10

    @classmethod
    def from_url(cls, admin_url: str) -> "PgServer":
        url = sa.make_url(sqlalchemy_url(admin_url))
        return cls(
            host=url.host or "localhost",
            port=url.port or 5432,
            user=url.username or "postgres",
            password=url.password or "",
        )

    def login(self, user: str, password: str) -> "PgServer":
        """The same server, as another login."""
        return dataclasses.replace(self, user=user, password=password)

    def env(self, database: str) -> dict[str, str]:
        """The environment of a libpq tool: only what it needs, the password included."""
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LC_ALL": "C.UTF-8",
            "PGHOST": self.host,
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "PGPASSWORD": self.password,
            "PGDATABASE": database,
            "PGCONNECT_TIMEOUT": str(self.connect_timeout_s),
            "PGAPPNAME": "rp9-backups",
            "PGOPTIONS": SESSION_OPTIONS,
        }

    def connect(self, database: str, *, autocommit: bool = False) -> psycopg.Connection:
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            autocommit=autocommit,
            connect_timeout=self.connect_timeout_s,
            application_name="rp9-backups",
            options=SESSION_OPTIONS,
        )

    def tool(self, name: str, database: str = "postgres") -> str:
        """The client binary of the server's major version (pg_dump refuses older servers'
        newer dumps, and an older pg_dump refuses a newer server), else the one on PATH;
        asked in `database`, which the login may connect to."""
        return _tool(self.host, self.port, self.user, self.password, name, database)


@functools.lru_cache(maxsize=16)
def _tool(host: str, port: int, user: str, password: str, name: str, database: str) -> str:
    server = PgServer(host, port, user, password)
    with server.connect(database, autocommit=True) as connection:
        row = connection.execute("SHOW server_version_num").fetchone()
    major = int(str(row[0] if row else "0")) // 10000
    candidate = Path(f"/usr/lib/postgresql/{major}/bin/{name}")
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} (PostgreSQL {major} client) is not installed")
    return found


def _table(names: TenantNames, table: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(names.db_schema), sql.Identifier(table))


# What the manifest reads.
MANIFEST_READS: Reads = {
    "workflow_entity": ("id", "versionId"),
    "credentials_entity": (),
    "execution_entity": (),
}


def count_manifest(connection: psycopg.Connection, names: TenantNames, owner: str) -> Manifest:
    """Workflows (with their versions), credentials and executions of one tenant's n8n, whose
    tables must be plain tables of `owner` (see `check_relations`)."""
    require_readable(connection, names.db_schema, owner, MANIFEST_READS)
    versions = connection.execute(
        sql.SQL('SELECT id, "versionId" FROM ONLY {}').format(_table(names, "workflow_entity"))
    ).fetchall()

    def count(table: str) -> int:
        row = connection.execute(
            sql.SQL("SELECT pg_catalog.count(*) FROM ONLY {}").format(_table(names, table))
        ).fetchone()
        return int(row[0]) if row else 0

    return Manifest(
        workflows=len(versions),
        credentials=count("credentials_entity"),
        executions=count("execution_entity"),
        workflow_digest=workflow_digest((str(i), v and str(v)) for i, v in versions),
    )


@contextmanager
def exported_snapshot(server: PgServer, names: TenantNames) -> Iterator[tuple[str, Manifest]]:
    """A read-only REPEATABLE READ transaction on the tenant's database: its exported snapshot
    (for `pg_dump --snapshot`) and the manifest counted in that same snapshot, so the counts
    describe exactly the dumped data. The snapshot lives until the block ends."""
    connection = server.connect(names.db_name)
    try:
        connection.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        connection.read_only = True
        row = connection.execute("SELECT pg_catalog.pg_export_snapshot()").fetchone()
        assert row is not None
        yield str(row[0]), count_manifest(connection, names, names.db_role)
    finally:
        connection.rollback()
        connection.close()


def _tail(stream: IO[bytes]) -> str:
    stream.seek(0)
    return stream.read().decode(errors="replace")[-STDERR_TAIL:].strip()


# Dumps and sandbox restores are background work beside tenants that serve: at the lowest CPU
# priority, pg_dump's compression (and, by the pipe's back-pressure, the server process that
# feeds it) takes only the cores the serving n8n containers leave. At the default priority a
# backup of 221 MB beside a tenant at 20 webhooks/s made its main answer in seconds, and its
# edge shed 158 requests in 20 s (bench-upgrade, 2026-12-05). A restore onto a tenant's own
# data (`restore_in_place`, with its requests held) keeps the default priority.
BACKGROUND_NICE = 19
# zlib's fastest level. pg_dump's default (6) spent 8.3 s of CPU on 224 MB of a tenant's
# executions for 117.8 MB; level 1 spends 2.7 s for 120.8 MB (2.6 % more to store), and the
# seconds saved are the serving tenants' (PostgreSQL 15, two cores, 2026-12-05).
DUMP_COMPRESSION = 1


def in_background(command: list[str]) -> list[str]:
    """`command` at the lowest CPU priority (`BACKGROUND_NICE`)."""
    return ["nice", "-n", str(BACKGROUND_NICE), *command]


class DumpProcess:
    """`pg_dump --format=custom` of the tenant's schema (shared tier) or database (dedicated),
    as of `snapshot`, writing to a pipe; killed if the block is left before it ends."""

    def __init__(self, server: PgServer, names: TenantNames, snapshot: str) -> None:
        command = [
            server.tool("pg_dump"),
            "--format=custom",
            f"--compress={DUMP_COMPRESSION}",
            f"--snapshot={snapshot}",
            "--no-password",
        ]
        if names.tier == "shared":
            command.append(f"--schema={names.db_schema}")
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __exit__)
        self.process = subprocess.Popen(
            in_background(command),
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=server.env(names.db_name),
        )
        assert self.process.stdout is not None
        self.stdout: IO[bytes] = self.process.stdout

    def __enter__(self) -> "DumpProcess":
        return self

    def __exit__(self, *_: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.stdout.close()
        self._stderr.close()

    def wait(self, timeout_s: float = 60) -> None:
        """After stdout's end: raise unless pg_dump exited 0 (a dump cut short must never be
        completed as an object)."""
        code = self.process.wait(timeout=timeout_s)
        if code != 0:
            raise PgToolError(f"pg_dump exited {code}: {_tail(self._stderr)}")


@dataclass(frozen=True)
class Restored:
    size: int
    sha256: str
    exit_code: int
    stderr: str


def restore_stream(server: PgServer, database: str, role: str, chunks: Iterable[bytes]) -> Restored:
    """Feed a custom-format dump to `pg_restore` into `database`, logged in as `role` (the
    sandbox's own login, `server`: what the dump runs can use no more than it), its objects
    owned by that role, hashing every byte on the way. The whole stream is read even when
    pg_restore stops early, so the hash always describes the complete stored object."""
    _require_login(server, role)
    command = [
        server.tool("pg_restore", database),
        "--no-owner",
        "--no-privileges",
        "--exit-on-error",
        "--no-password",
        f"--dbname={database}",
    ]
    digest, size = hashlib.sha256(), 0
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            in_background(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=server.env(database),
        )
        assert process.stdin is not None
        feeding = True
        try:
            for chunk in chunks:
                digest.update(chunk)
                size += len(chunk)
                if feeding:
                    try:
                        process.stdin.write(chunk)
                    except BrokenPipeError:
                        feeding = False
            with suppress(BrokenPipeError):
                process.stdin.close()
            code = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        return Restored(size, digest.hexdigest(), code, _tail(stderr))


def _execute(connection: psycopg.Connection, statement: sql.Composed) -> None:
    connection.execute(statement)


def _require_login(server: PgServer, role: str) -> None:
    if server.user != role:
        raise PermissionError(
            f"the sandbox is used as its own login {role}, not as {server.user} "
            "(use the PgServer that create_sandbox returns)"
        )


def _require_sandbox_owner(connection: psycopg.Connection) -> str:
    """The session's login, which must own the (sandbox) database it is connected to."""
    row = connection.execute(
        "SELECT session_user, pg_catalog.pg_get_userbyid(datdba) FROM pg_catalog.pg_database"
        " WHERE datname = pg_catalog.current_database()"
    ).fetchone()
    assert row is not None
    login, owner = str(row[0]), str(row[1])
    if login != owner or not login.startswith(SANDBOX_PREFIX):
        raise PermissionError(
            f"a sandbox is used as its own login, not as {login} (it belongs to {owner})"
        )
    return login


def _check_sandbox_name(name: str) -> None:
    if not name.startswith(SANDBOX_PREFIX) or len(name) == len(SANDBOX_PREFIX):
        raise ValueError(f"{name!r} is not a sandbox's name (they start with {SANDBOX_PREFIX})")


def create_sandbox(server: PgServer, sandbox: SandboxNames, password: str) -> PgServer:
    """A login role and an empty database it owns, reachable by nobody else; returns the
    sandbox's own login, which restores into it and reads it."""
    _check_sandbox_name(sandbox.database)
    role, database = sql.Identifier(sandbox.role), sql.Identifier(sandbox.database)
    with server.connect("postgres", autocommit=True) as connection:
        _execute(
            connection,
            sql.SQL(
                "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION"
                " NOBYPASSRLS CONNECTION LIMIT 10 PASSWORD {}"
            ).format(role, sql.Literal(password)),
        )
        _adopt(connection, sandbox.role)
        _execute(connection, sql.SQL("CREATE DATABASE {} OWNER {}").format(database, role))
        _execute(connection, sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(database))
        _execute(connection, sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, role))
    return server.login(sandbox.role, password)


def _adopt(connection: psycopg.Connection, role: str) -> None:
    """Make the (non-superuser) administrator a member of `role`, which dropping its database
    and ending its sessions need."""
    row = connection.execute(
        "SELECT pg_catalog.pg_has_role(current_user, r.oid, 'USAGE'), u.rolsuper"
        " FROM pg_catalog.pg_roles r, pg_catalog.pg_roles u"
        " WHERE r.rolname = %s AND u.rolname = current_user",
        (role,),
    ).fetchone()
    if row is not None and not row[0] and not row[1]:
        _execute(connection, sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(role)))


# How long a database's drop waits out an autovacuum worker in it: DROP ... WITH (FORCE) ends
# the database's sessions, but not an autovacuum worker's (only a superuser or
# `pg_signal_backend` may), and one is often busy on a database just filled (a restore, a copy).
DROP_AUTOVACUUM_WAIT_S = 30.0


def drop_sandbox(server: PgServer, name: str) -> None:
    """Drop a sandbox's database (closing its sessions) and its role of the same name; either
    may be missing already."""
    _check_sandbox_name(name)
    statement = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    with server.connect("postgres", autocommit=True) as connection:
        _adopt(connection, name)
        past_autovacuum(lambda: _execute(connection, statement))
        _execute(connection, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def past_autovacuum(drop: Callable[[], object]) -> None:
    """`drop` (a DROP DATABASE ... WITH (FORCE)) again while an autovacuum worker in that
    database refuses to end, for at most `DROP_AUTOVACUUM_WAIT_S`."""
    deadline = time.monotonic() + DROP_AUTOVACUUM_WAIT_S
    while True:
        try:
            drop()
            return
        except psycopg.errors.InsufficientPrivilege:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def sandbox_leftovers(server: PgServer) -> set[str]:
    """Sandbox databases and roles on the server (names starting with `rp9_drill_`)."""
    pattern = SANDBOX_PREFIX.replace("_", r"\_") + "%"
    with server.connect("postgres", autocommit=True) as connection:
        rows = connection.execute(
            "SELECT datname FROM pg_catalog.pg_database WHERE datname LIKE %s "
            "UNION SELECT rolname FROM pg_catalog.pg_roles WHERE rolname LIKE %s",
            (pattern, pattern),
        ).fetchall()
    return {str(row[0]) for row in rows}


def restored_counts(server: PgServer, database: str, names: TenantNames) -> Manifest:
    """The manifest of what was restored, read as the sandbox's own login (`server`)."""
    with server.connect(database) as connection:
        return count_manifest(connection, names, _require_sandbox_owner(connection))


def deactivate_workflows(server: PgServer, database: str, names: TenantNames) -> int:
    """Unpublish every restored workflow before the sandbox boots, so no schedule, poll or
    queue trigger of the tenant fires there. Versions (what the drill compares) stay. Runs as
    the sandbox's own login (`server`): the update fires whatever triggers the dump held."""
    table = _table(names, "workflow_entity")
    with server.connect(database) as connection:
        _require_sandbox_owner(connection)
        columns = {
            str(row[0])
            for row in connection.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = %s AND table_name = 'workflow_entity'",
                (names.db_schema,),
            )
        }
        assignments = [sql.SQL("active = false")]
        condition = [sql.SQL("active")]
        if "activeVersionId" in columns:
            assignments.append(sql.SQL('"activeVersionId" = NULL'))
            condition.append(sql.SQL('"activeVersionId" IS NOT NULL'))
        cursor = connection.execute(
            sql.SQL("UPDATE {} SET {} WHERE {}").format(
                table, sql.SQL(", ").join(assignments), sql.SQL(" OR ").join(condition)
            )
        )
        connection.commit()
        return cursor.rowcount


def restore_in_place(
    admin: PgServer, as_tenant: PgServer, names: TenantNames, dump: Path, aside: str
) -> int:
    """Put the tenant's schema back as `dump` (a custom-format dump of it) has it: the current
    schema renamed `aside` and an empty one of the tenant's, owned by its role, made by the
    administrator (schema DDL is refused to tenant roles); the restore into it, the count and
    the aside schema's removal as the tenant's own role (`as_tenant`: whatever the dump runs,
    the tenant could run itself). Returns how many executions the aside schema had that the
    dump has not (what the restore left behind). A failed restore puts the current schema
    back, unchanged."""
    if as_tenant.user != names.db_role:
        raise PermissionError(f"a tenant's schema is restored as {names.db_role}")
    schema, moved = sql.Identifier(names.db_schema), sql.Identifier(aside)
    role = sql.Identifier(names.db_role)
    with admin.connect(names.db_name, autocommit=True) as connection:
        _adopt(connection, names.db_role)
        _execute(connection, sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(schema, moved))
        _execute(connection, sql.SQL("CREATE SCHEMA {} AUTHORIZATION {}").format(schema, role))
        _execute(connection, sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(schema))
    try:
        _restore_file(as_tenant, names.db_name, dump)
        with as_tenant.connect(names.db_name, autocommit=True) as connection:
            row = connection.execute(
                sql.SQL(
                    "SELECT pg_catalog.count(*) FROM ONLY {}.execution_entity a WHERE NOT EXISTS"
                    " (SELECT FROM ONLY {}.execution_entity r WHERE r.id OPERATOR(pg_catalog.=)"
                    " a.id)"
                ).format(moved, schema)
            ).fetchone()
            _execute(connection, sql.SQL("DROP SCHEMA {} CASCADE").format(moved))
    except BaseException:
        with as_tenant.connect(names.db_name, autocommit=True) as connection:
            _execute(connection, sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(schema))
        with admin.connect(names.db_name, autocommit=True) as connection:
            _execute(connection, sql.SQL("ALTER SCHEMA {} RENAME TO {}").format(moved, schema))
        raise
    return int(row[0]) if row else 0


def _restore_file(server: PgServer, database: str, dump: Path) -> None:
    """`pg_restore` of every entry of `dump` but its schema's creation (the schema exists)."""
    tool = server.tool("pg_restore", database)
    env = server.env(database)
    listed = subprocess.run(
        [tool, "--list", str(dump)], env=env, capture_output=True, text=True, check=False
    )
    if listed.returncode != 0:
        raise PgToolError(f"pg_restore --list exited {listed.returncode}: {listed.stderr[-600:]}")
    entries = [line for line in listed.stdout.splitlines() if " SCHEMA - " not in line]
    with tempfile.NamedTemporaryFile("w", suffix=".list") as chosen:
        chosen.write("\n".join(entries) + "\n")
        chosen.flush()
        done = subprocess.run(
            [
                tool,
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--no-password",
                f"--use-list={chosen.name}",
                f"--dbname={database}",
                str(dump),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        raise PgToolError(f"pg_restore exited {done.returncode}: {done.stderr[-STDERR_TAIL:]}")
