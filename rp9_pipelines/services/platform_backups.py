"""Back the platform itself up: the catalog database, the Dagster instance's storage and a
sealed snapshot of the secret store, as one set per run, each object read back and checked
before its row says `ok`; retention as for tenants' backups, never the newest complete set.

Without these a lost machine loses which tenants exist, their plans and backups' whereabouts
(the catalog), the run history (Dagster) and every tenant's encryption key (the secrets): the
tenants' own backups would be unreadable."""

import datetime as dt
import hashlib
import io
import json
import sqlite3
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import sqlalchemy as sa

from rp9_pipelines.catalog import platform_recovery as catalog
from rp9_pipelines.domain.platform_backups import (
    COMPONENTS,
    expires_at,
    object_key,
    plan_retention,
    seal,
    unseal,
)
from rp9_pipelines.resources.postgres_dump import PgServer, PgToolError
from rp9_pipelines.resources.s3 import StoredObject
from rp9_pipelines.resources.stack import PlatformBackupResources
from rp9_pipelines.services.backups import BackupVerificationError, describe, verify_object

Log = Callable[[str], None]
# Every secret the platform keeps lives under this path of the store.
SECRETS_PREFIX = "rp9"


@dataclass(frozen=True)
class DagsterStorage:
    """Where the Dagster instance keeps runs, events and schedules: SQLite files under its home
    (development) or a Postgres database (production)."""

    kind: str  # "sqlite" | "postgres"
    location: str  # the instance's home directory, or the database URL

    def __repr__(self) -> str:  # a Postgres URL carries a password
        return f"DagsterStorage({self.kind})"


@dataclass(frozen=True)
class StoredPart:
    component: str
    key: str
    size: int
    sha256: str
    manifest: dict[str, Any]


@dataclass(frozen=True)
class PlatformBackupOutcome:
    set_id: uuid.UUID
    parts: tuple[StoredPart, ...]


def fail_interrupted(r: PlatformBackupResources, run_alive: Callable[[str], bool], log: Log) -> int:
    """Rows left `running` by a run that died (the catalog or the process went mid-backup)
    become `failed`, and their objects go: none may ever pass for a verified backup."""
    with r.catalog.begin() as connection:
        stale = [
            row for row in catalog.running_backups(connection) if not run_alive(row["run_id"] or "")
        ]
    for row in stale:
        with suppress(Exception):
            r.s3.delete(row["key"], row["bucket"])
        with r.catalog.begin() as connection:
            catalog.fail_backup(connection, row["id"], "interrupted: its run ended before it")
        log(f"{row['component']} backup {row['id']} was interrupted: marked failed")
    return len(stale)


def take_platform_backup(
    r: PlatformBackupResources, dagster: DagsterStorage, kind: str, run_id: str | None, log: Log
) -> PlatformBackupOutcome:
    """All three parts, one after another; a part that fails is `failed` and the run raises
    after trying the rest (a set with a failed part is never the one a recovery picks)."""
    set_id, started = uuid.uuid4(), dt.datetime.now(dt.UTC)
    r.s3.ensure_bucket()
    writers: dict[str, Callable[[str], StoredPart]] = {
        "catalog": lambda key: _catalog_part(r, key),
        "dagster": lambda key: _dagster_part(r, dagster, key),
        "secrets": lambda key: _secrets_part(r, key),
    }
    parts, errors = [], []
    for component in COMPONENTS:
        backup_id, key = uuid.uuid4(), object_key(component, kind, started, set_id)
        with r.catalog.begin() as connection:
            catalog.insert_backup(
                connection,
                backup_id=backup_id,
                set_id=set_id,
                component=component,
                kind=kind,
                bucket=r.s3.bucket,
                key=key,
                run_id=run_id,
                started_at=started,
                expires_at=expires_at(kind, started),
            )
        try:
            part = writers[component](key)
        except Exception as error:
            errors.append(f"{component}: {describe(error)}")
            with suppress(Exception):
                r.s3.delete(key)
            with r.catalog.begin() as connection:
                catalog.fail_backup(connection, backup_id, describe(error))
            log(f"{component} backup failed: {describe(error)}")
            continue
        with r.catalog.begin() as connection:
            catalog.finish_backup(
                connection, backup_id, size=part.size, sha256=part.sha256, manifest=part.manifest
            )
        parts.append(part)
        log(
            f"{component} → s3://{r.s3.bucket}/{key}: {part.size / 1e6:.2f} MB, verified, "
            f"sha256 {part.sha256}; {part.manifest}"
        )
    if errors:
        raise RuntimeError(f"platform backup set {set_id} incomplete: {'; '.join(errors)}")
    # Written last, once every part is verified: a recovery that has nothing but the bucket
    # finds complete sets (and what each part must hash to) from these alone.
    index = set_index(set_id, kind, started, parts)
    written = _upload(
        r, set_index_key(started, set_id), "set", io.BytesIO(json.dumps(index).encode())
    )
    verify_object(r.s3, written)
    return PlatformBackupOutcome(set_id, tuple(parts))


SETS_PREFIX = "platform/sets/"


def set_index_key(started: dt.datetime, set_id: uuid.UUID) -> str:
    return f"{SETS_PREFIX}{started.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}-{set_id}.json"


def set_index(
    set_id: uuid.UUID, kind: str, started: dt.datetime, parts: list[StoredPart]
) -> dict[str, Any]:
    return {
        "set_id": str(set_id),
        "kind": kind,
        "started_at": started.isoformat(),
        "parts": {
            p.component: {"key": p.key, "size": p.size, "sha256": p.sha256, "manifest": p.manifest}
            for p in parts
        },
    }


def newest_set_index(s3: Any) -> dict[str, Any] | None:
    """The newest complete set, from the bucket alone (keys sort by time)."""
    keys = s3.list_keys(SETS_PREFIX)
    if not keys:
        return None
    loaded: dict[str, Any] = json.loads(b"".join(s3.chunks(keys[-1])))
    return loaded


def _metadata(component: str, key: str) -> dict[str, str]:
    return {"component": component, "platform-backup": key.rsplit("/", 1)[-1]}


def _upload(
    r: PlatformBackupResources, key: str, component: str, source: IO[bytes]
) -> StoredObject:
    with r.s3.multipart(key, _metadata(component, key)) as upload:
        upload.pump(source)
        return upload.complete()


@contextmanager
def _read_back(r: PlatformBackupResources, stored: StoredObject) -> Iterator[IO[bytes]]:
    """Verify the stored object (HEAD, then its bytes re-hashed) and keep what was read, for
    the part's own check of its content: each object is read back once."""
    with tempfile.TemporaryFile() as copy:
        verify_object(r.s3, stored, into=copy)
        copy.seek(0)
        yield copy


# Catalog -------------------------------------------------------------------------------------


def _pg_dump(
    server: PgServer, database: str, key: str, r: PlatformBackupResources, component: str
) -> StoredObject:
    command = [server.tool("pg_dump", database), "--format=custom", "--no-password"]
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, env=server.env(database)
        )
        assert process.stdout is not None
        try:
            with r.s3.multipart(key, _metadata(component, key)) as upload:
                upload.pump(process.stdout)
                code = process.wait(timeout=600)
                if code != 0:
                    stderr.seek(0)
                    raise PgToolError(f"pg_dump exited {code}: {stderr.read()[-1500:].decode()}")
                stored = upload.complete()
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            process.stdout.close()
    with _read_back(r, stored) as copy:
        _check_archive(server, database, copy)
    return stored


def _check_archive(server: PgServer, database: str, stored: IO[bytes]) -> None:
    """The stored bytes are a dump pg_restore can read (its table of contents lists)."""
    command = [server.tool("pg_restore", database), "--list"]
    listed = subprocess.run(command, stdin=stored, capture_output=True, timeout=300)
    if listed.returncode != 0:
        raise BackupVerificationError(
            f"pg_restore cannot read the stored dump: {listed.stderr[-600:].decode()}"
        )


def _catalog_part(r: PlatformBackupResources, key: str) -> StoredPart:
    url = sa.make_url(r.catalog.database_url)
    server = PgServer.from_url(r.catalog.database_url)
    database = url.database or "rp9_platform"
    with r.catalog.begin() as connection:
        tenants = connection.execute(sa.text("SELECT count(*) FROM tenants")).scalar_one()
        backups = connection.execute(sa.text("SELECT count(*) FROM backups")).scalar_one()
        revision = connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    stored = _pg_dump(server, database, key, r, "catalog")
    manifest = {"database": database, "tenants": tenants, "backups": backups, "revision": revision}
    return StoredPart("catalog", key, stored.size, stored.sha256, manifest)


# Dagster -------------------------------------------------------------------------------------


def _sqlite_copy(source_path: Path, copy: Path) -> int | None:
    """SQLite's online backup of one database; the copy's run count if it has a `runs` table."""
    with (
        closing(sqlite3.connect(f"file:{source_path}?mode=ro", uri=True)) as source,
        closing(sqlite3.connect(copy)) as target,
    ):
        source.backup(target)
        try:
            return int(target.execute("SELECT count(*) FROM runs").fetchone()[0])
        except sqlite3.Error:
            return None


@contextmanager
def _sqlite_tar(home: Path) -> Iterator[tuple[IO[bytes], dict[str, Any]]]:
    """A tar of every SQLite database under the instance's home, each copied through SQLite's
    online backup (consistent while the daemon and webserver write)."""
    databases = sorted(p for p in home.rglob("*.db") if p.is_file())
    runs = 0
    with tempfile.TemporaryDirectory() as scratch, tempfile.TemporaryFile() as archive:
        with tarfile.open(fileobj=archive, mode="w") as tar:
            for path in databases:
                relative = path.relative_to(home)
                copy = Path(scratch) / str(relative).replace("/", "__")
                counted = _sqlite_copy(path, copy)
                if relative.name == "runs.db" and counted is not None:
                    runs = counted
                tar.add(copy, arcname=str(relative))
        archive.seek(0)
        yield archive, {"storage": "sqlite", "databases": len(databases), "runs": runs}


def _dagster_part(r: PlatformBackupResources, dagster: DagsterStorage, key: str) -> StoredPart:
    if dagster.kind == "postgres":
        server = PgServer.from_url(dagster.location)
        database = sa.make_url(dagster.location).database or "dagster"
        with server.connect(database) as connection:
            # Sessions are pinned to search_path=pg_catalog: Dagster's tables are in public.
            row = connection.execute("SELECT count(*) FROM public.runs").fetchone()
        stored = _pg_dump(server, database, key, r, "dagster")
        manifest = {"storage": "postgres", "database": database, "runs": int(row[0] if row else 0)}
        return StoredPart("dagster", key, stored.size, stored.sha256, manifest)
    with _sqlite_tar(Path(dagster.location)) as (archive, manifest):
        stored = _upload(r, key, "dagster", archive)
    with _read_back(r, stored) as copy, tarfile.open(fileobj=copy) as tar:
        if len(tar.getmembers()) != manifest["databases"]:
            raise BackupVerificationError("the stored archive lacks some databases")
    return StoredPart("dagster", key, stored.size, stored.sha256, manifest)


# Secrets -------------------------------------------------------------------------------------


def read_all_secrets(r: PlatformBackupResources) -> dict[str, dict[str, str]]:
    return {
        path: values
        for path in r.vault.list_paths(SECRETS_PREFIX)
        if (values := r.vault.read(path)) is not None
    }


def _secrets_part(r: PlatformBackupResources, key: str) -> StoredPart:
    """The whole store under `rp9/`, sealed with the platform backup key (AES-256-GCM) before
    it leaves the process: S3 never holds a readable tenant key. Verified by opening the
    stored copy with the key and comparing it with what was read."""
    snapshot = read_all_secrets(r)
    stored = _upload(r, key, "secrets", io.BytesIO(seal(snapshot, r.backup_key)))
    with _read_back(r, stored) as copy:
        opened = unseal(copy.read(), r.backup_key)
    if opened != snapshot:
        raise BackupVerificationError("the stored snapshot does not open to what was read")
    digest = hashlib.sha256("\n".join(sorted(snapshot)).encode()).hexdigest()
    manifest = {"paths": len(snapshot), "paths_sha256": digest, "sealed": "aes-256-gcm"}
    return StoredPart("secrets", key, stored.size, stored.sha256, manifest)


# Retention -----------------------------------------------------------------------------------


def apply_retention(r: PlatformBackupResources, now: dt.datetime, log: Log) -> int:
    """The object goes before the row says `expired` (as for tenants' backups); a set's index
    goes once none of its parts is left, so a recovery never picks a set that is gone."""
    with r.catalog.begin() as connection:
        expire = plan_retention(catalog.records(connection), now)
    for record in expire:
        r.s3.delete(record.key, record.bucket)
        if r.s3.head(record.key, record.bucket) is not None:
            raise RuntimeError(f"{record.key} is still stored after its deletion")
        with r.catalog.begin() as connection:
            catalog.mark_expired(connection, record.id)
        log(f"expired {record.key} ({record.component}, {record.kind}, due {record.expires_at})")
    with r.catalog.begin() as connection:
        kept = {record.set_id for record in catalog.records(connection)}
    gone = {f"-{set_id}.json" for set_id in {record.set_id for record in expire} - kept}
    for key in r.s3.list_keys(SETS_PREFIX) if gone else []:
        if key.endswith(tuple(gone)):
            r.s3.delete(key)
            log(f"expired the index {key}")
    return len(expire)
