"""The Postgres side of backups and drills: an exported snapshot and the manifest counted in
it, `pg_dump` of that snapshot, `pg_restore` into a sandbox database, and the sandbox's
database and role.

The platform's admin role (DATABASE_URL) runs all of it. Its password reaches `pg_dump` and
`pg_restore` through their environment (PGPASSWORD), never their arguments, a log or a run's
config.
"""

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import psycopg
import sqlalchemy as sa
from psycopg import sql

from rp9_pipelines.domain.backups import SANDBOX_PREFIX, Manifest, SandboxNames, workflow_digest
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.settings import sqlalchemy_url

STDERR_TAIL = 2000


class PgToolError(RuntimeError):
    """pg_dump or pg_restore exited non-zero; the message ends with its stderr."""


@dataclass(frozen=True)
class PgServer:
    """Where the tenants' databases live, and the admin login that may dump and restore them."""

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
        )

    def tool(self, name: str) -> str:
        """The client binary of the server's major version (pg_dump refuses older servers'
        newer dumps, and an older pg_dump refuses a newer server), else the one on PATH."""
        return _tool(self.host, self.port, self.user, self.password, name)


@functools.lru_cache(maxsize=16)
def _tool(host: str, port: int, user: str, password: str, name: str) -> str:
    server = PgServer(host, port, user, password)
    with server.connect("postgres", autocommit=True) as connection:
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


def count_manifest(connection: psycopg.Connection, names: TenantNames) -> Manifest:
    """Workflows (with their versions), credentials and executions of one tenant's n8n."""
    versions = connection.execute(
        sql.SQL('SELECT id, "versionId" FROM {}').format(_table(names, "workflow_entity"))
    ).fetchall()

    def count(table: str) -> int:
        row = connection.execute(
            sql.SQL("SELECT count(*) FROM {}").format(_table(names, table))
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
        row = connection.execute("SELECT pg_export_snapshot()").fetchone()
        assert row is not None
        yield str(row[0]), count_manifest(connection, names)
    finally:
        connection.rollback()
        connection.close()


def _tail(stream: IO[bytes]) -> str:
    stream.seek(0)
    return stream.read().decode(errors="replace")[-STDERR_TAIL:].strip()


class DumpProcess:
    """`pg_dump --format=custom` of the tenant's schema (shared tier) or database (dedicated),
    as of `snapshot`, writing to a pipe; killed if the block is left before it ends."""

    def __init__(self, server: PgServer, names: TenantNames, snapshot: str) -> None:
        command = [
            server.tool("pg_dump"),
            "--format=custom",
            f"--snapshot={snapshot}",
            "--no-password",
        ]
        if names.tier == "shared":
            command.append(f"--schema={names.db_schema}")
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 (closed in __exit__)
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=self._stderr, env=server.env(names.db_name)
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
    """Feed a custom-format dump to `pg_restore` into `database`, its objects owned by `role`,
    hashing every byte on the way. The whole stream is read even when pg_restore stops early,
    so the hash always describes the complete stored object."""
    command = [
        server.tool("pg_restore"),
        "--no-owner",
        "--no-privileges",
        f"--role={role}",
        "--exit-on-error",
        "--no-password",
        f"--dbname={database}",
    ]
    digest, size = hashlib.sha256(), 0
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            command,
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


def create_sandbox(server: PgServer, sandbox: SandboxNames, password: str) -> None:
    """A login role and an empty database it owns, reachable by nobody else."""
    role, database = sql.Identifier(sandbox.role), sql.Identifier(sandbox.database)
    with server.connect("postgres", autocommit=True) as connection:
        _execute(
            connection,
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}").format(
                role, sql.Literal(password)
            ),
        )
        _execute(connection, sql.SQL("CREATE DATABASE {} OWNER {}").format(database, role))
        _execute(connection, sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(database))
        _execute(connection, sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, role))


def drop_sandbox(server: PgServer, name: str) -> None:
    """Drop a sandbox's database (closing its sessions) and its role of the same name; either
    may be missing already."""
    with server.connect("postgres", autocommit=True) as connection:
        _execute(
            connection,
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)),
        )
        _execute(connection, sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def sandbox_leftovers(server: PgServer) -> set[str]:
    """Sandbox databases and roles on the server (names starting with `rp9_drill_`)."""
    pattern = SANDBOX_PREFIX.replace("_", r"\_") + "%"
    with server.connect("postgres", autocommit=True) as connection:
        rows = connection.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s "
            "UNION SELECT rolname FROM pg_roles WHERE rolname LIKE %s",
            (pattern, pattern),
        ).fetchall()
    return {str(row[0]) for row in rows}


def restored_counts(server: PgServer, database: str, names: TenantNames) -> Manifest:
    with server.connect(database) as connection:
        return count_manifest(connection, names)


def deactivate_workflows(server: PgServer, database: str, names: TenantNames) -> int:
    """Unpublish every restored workflow before the sandbox boots, so no schedule, poll or
    queue trigger of the tenant fires there. Versions (what the drill compares) stay."""
    table = _table(names, "workflow_entity")
    with server.connect(database) as connection:
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
