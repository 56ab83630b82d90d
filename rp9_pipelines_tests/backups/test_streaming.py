"""The two halves of a backup on the real servers: a snapshot with its manifest dumped by
pg_dump (Postgres 15), and a stream written to S3 part by part (moto's S3 API)."""

import hashlib
import io
import os
import subprocess
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from botocore.exceptions import ClientError

from rp9_pipelines.domain.backups import MIB, Manifest, workflow_digest
from rp9_pipelines.domain.restore_drills import SandboxNames
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.resources.postgres_dump import (
    BACKGROUND_NICE,
    DUMP_COMPRESSION,
    DumpProcess,
    PgServer,
    PgToolError,
    create_sandbox,
    drop_sandbox,
    exported_snapshot,
    restore_stream,
    restored_counts,
    sandbox_leftovers,
)
from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines.settings import Settings

pytestmark = pytest.mark.stack

N8N_TABLES = """
CREATE TABLE workflow_entity (id varchar(36) PRIMARY KEY, "versionId" char(36));
CREATE TABLE credentials_entity (id varchar(36) PRIMARY KEY, data text);
CREATE TABLE execution_entity (id serial PRIMARY KEY, payload text);
"""


def _insert(connection: sa.Connection, workflows: int, credentials: int, executions: int) -> None:
    for _ in range(workflows):
        connection.execute(
            sa.text("INSERT INTO workflow_entity VALUES (:id, :v)"),
            {"id": uuid.uuid4().hex[:16], "v": str(uuid.uuid4())},
        )
    for _ in range(credentials):
        connection.execute(
            sa.text("INSERT INTO credentials_entity VALUES (:id, 'encrypted')"),
            {"id": uuid.uuid4().hex[:16]},
        )
    connection.execute(
        sa.text(
            "INSERT INTO execution_entity (payload) SELECT md5(g::text) "
            "FROM generate_series(1, :n) g"
        ),
        {"n": executions},
    )


@pytest.fixture
def tenant_database(settings: Settings, admin_engine: sa.Engine) -> Iterator[TenantNames]:
    """A dedicated-tier tenant database holding n8n's three counted tables."""
    names = TenantNames(f"snap-{uuid.uuid4().hex[:8]}", "dedicated")
    with admin_engine.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{names.db_name}"'))
    engine = sa.create_engine(admin_engine.url.set(database=names.db_name), poolclass=sa.NullPool)
    with engine.begin() as connection:
        connection.execute(sa.text(N8N_TABLES))
        _insert(connection, workflows=3, credentials=2, executions=500)
    yield names
    engine.dispose()
    with admin_engine.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{names.db_name}" WITH (FORCE)'))


def test_the_manifest_and_the_dump_describe_the_same_snapshot(
    settings: Settings, admin_engine: sa.Engine, tenant_database: TenantNames
) -> None:
    server = PgServer.from_url(settings.database_url)
    writer = sa.create_engine(
        admin_engine.url.set(database=tenant_database.db_name), poolclass=sa.NullPool
    )
    with writer.connect() as connection:
        before = connection.execute(sa.text('SELECT id, "versionId" FROM workflow_entity')).all()
    with exported_snapshot(server, tenant_database) as (snapshot, manifest):
        # Someone writes after the snapshot: neither the counts nor the dump may see it.
        with writer.begin() as connection:
            _insert(connection, workflows=1, credentials=1, executions=100)
        with DumpProcess(server, tenant_database, snapshot) as dump:
            data = dump.stdout.read(1)  # pg_dump itself writes (`nice` ran before it)
            # Background work: the serving tenants' containers come first for the cores.
            niceness = os.getpriority(os.PRIO_PROCESS, dump.process.pid)
            data += dump.stdout.read()
            dump.wait()
            # The admin password reaches pg_dump through its environment, not its arguments.
            assert server.password
            assert server.password not in " ".join(map(str, dump.process.args))  # type: ignore[arg-type]
    writer.dispose()
    assert niceness == BACKGROUND_NICE
    # zlib's fastest level: its CPU is taken from the serving tenants.
    listed = subprocess.run(
        [server.tool("pg_restore"), "--list"], input=data, capture_output=True, check=True
    )
    assert f"Compression: {DUMP_COMPRESSION}\n" in listed.stdout.decode()
    assert manifest == Manifest(3, 2, 500, workflow_digest((i, v) for i, v in before))

    sandbox = SandboxNames(uuid.uuid4().hex[:12])
    as_sandbox = create_sandbox(server, sandbox, "sandbox-password-1")
    try:
        restored = restore_stream(
            as_sandbox, sandbox.database, sandbox.role, [data[:1000], data[1000:]]
        )
        assert (restored.exit_code, restored.stderr) == (0, "")
        assert (restored.size, restored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
        assert restored_counts(as_sandbox, sandbox.database, tenant_database) == manifest
    finally:
        drop_sandbox(server, sandbox.database)
    assert sandbox.database not in sandbox_leftovers(server)


def test_a_failed_pg_dump_raises_with_its_own_words(
    settings: Settings, tenant_database: TenantNames
) -> None:
    server = PgServer.from_url(settings.database_url)
    with DumpProcess(server, tenant_database, "00000003-0000001B-1") as dump:
        assert dump.stdout.read() == b""
        with pytest.raises(PgToolError, match=r"pg_dump exited 1: .*snapshot"):
            dump.wait()


def test_a_corrupt_dump_is_refused_by_pg_restore_and_still_hashed_whole(settings: Settings) -> None:
    server = PgServer.from_url(settings.database_url)
    sandbox = SandboxNames(uuid.uuid4().hex[:12])
    as_sandbox = create_sandbox(server, sandbox, "sandbox-password-1")
    garbage = os.urandom(3 * MIB)
    try:
        restored = restore_stream(
            as_sandbox,
            sandbox.database,
            sandbox.role,
            (garbage[i : i + MIB] for i in range(0, 3 * MIB, MIB)),
        )
    finally:
        drop_sandbox(server, sandbox.database)
    assert restored.exit_code != 0
    assert "input file" in restored.stderr
    assert (restored.size, restored.sha256) == (len(garbage), hashlib.sha256(garbage).hexdigest())


def test_a_stream_is_stored_in_parts_encrypted_and_hashed_as_sent(bucket: S3Resource) -> None:
    payload = os.urandom(12 * MIB + 123)
    with bucket.multipart("dump.pgdump", {"tenant": "acme"}) as upload:
        upload.pump(io.BufferedReader(io.BytesIO(payload)))
        stored = upload.complete()
    assert stored.parts == 3  # 5 MiB + 5 MiB + the rest
    assert (stored.size, stored.sha256) == (len(payload), hashlib.sha256(payload).hexdigest())
    head = bucket.head("dump.pgdump")
    assert head is not None
    assert (head.size, head.server_side_encryption) == (len(payload), "AES256")
    assert head.metadata == {"tenant": "acme"}
    assert bucket.read_sha256("dump.pgdump") == (stored.size, stored.sha256)


def test_an_empty_stream_is_one_empty_object(bucket: S3Resource) -> None:
    with bucket.multipart("empty", {}) as upload:
        upload.pump(io.BytesIO(b""))
        stored = upload.complete()
    assert (stored.size, stored.parts) == (0, 1)
    assert bucket.read_sha256("empty") == (0, hashlib.sha256(b"").hexdigest())


class BrokenSource(io.RawIOBase):
    """A dump that dies after its first part."""

    def __init__(self) -> None:
        self.calls = 0

    def read(self, size: int = -1) -> bytes:
        self.calls += 1
        if self.calls > 1:
            raise OSError("pg_dump died")
        return os.urandom(size)


def test_an_error_mid_stream_aborts_the_upload_and_leaves_no_object(bucket: S3Resource) -> None:
    def upload_a_dying_dump() -> None:
        with bucket.multipart("broken", {}) as upload:
            upload.pump(BrokenSource())  # type: ignore[arg-type]
            upload.complete()

    with pytest.raises(OSError, match="pg_dump died"):
        upload_a_dying_dump()
    assert bucket.head("broken") is None
    uploads = bucket.client().list_multipart_uploads(Bucket=bucket.bucket).get("Uploads", [])
    assert [u for u in uploads if u["Key"] == "broken"] == []


class LosesItsUpload(io.RawIOBase):
    """A healthy dump whose upload the server forgets midway (as if S3 had expired it)."""

    def __init__(self, bucket: S3Resource) -> None:
        self.bucket, self.calls, self.upload_id = bucket, 0, ""

    def read(self, size: int = -1) -> bytes:
        self.calls += 1
        if self.calls == 2:
            self.bucket.client().abort_multipart_upload(
                Bucket=self.bucket.bucket, Key="lost", UploadId=self.upload_id
            )
        return os.urandom(size) if self.calls <= 3 else b""


def test_a_part_refused_by_s3_fails_the_upload(bucket: S3Resource) -> None:
    source = LosesItsUpload(bucket)

    def upload() -> None:
        with bucket.multipart("lost", {}) as multipart:
            source.upload_id = multipart.upload_id or ""
            multipart.pump(source)  # type: ignore[arg-type]
            multipart.complete()

    # (Real S3 answers NoSuchUpload; moto, a 500. Either way the part was refused.)
    with pytest.raises(ClientError, match="UploadPart operation"):
        upload()
    assert bucket.head("lost") is None
