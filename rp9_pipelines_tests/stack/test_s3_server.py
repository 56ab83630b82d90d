"""The local stack's S3 server (deploy/local/s3_server.py) as a process of its own: what was
written is there, byte for byte, after a SIGKILL and a restart on the same directory."""

import contextlib
import hashlib
import io
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from rp9_pipelines.domain.backups import MIB
from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines_tests.conftest import ROOT, free_port
from rp9_pipelines_tests.waiting import wait_until

SCRIPT = ROOT / "deploy" / "local" / "s3_server.py"
BUCKET = "rp9-backups"


@dataclass(frozen=True)
class S3Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.url,
            region_name="us-east-1",
            aws_access_key_id="rp9-test",
            aws_secret_access_key="rp9-test",
            config=Config(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )

    def resource(self) -> S3Resource:
        """The platform's own S3 client, as the backups use it."""
        return S3Resource(
            endpoint_url=self.url,
            bucket=BUCKET,
            access_key_id="rp9-test",
            secret_access_key="rp9-test",
            part_size_mb=5,
        )

    def kill(self, sig: signal.Signals = signal.SIGKILL) -> None:
        os.kill(self.process.pid, sig)
        if sig == signal.SIGKILL:
            self.process.wait(timeout=30)


@contextmanager
def s3_server(data: Path, log: Path) -> Iterator[S3Server]:
    """The server on a free port over `data`, ready to serve; killed on the way out."""
    url = f"http://127.0.0.1:{free_port()}"
    command = [sys.executable, str(SCRIPT), "--port", url.rsplit(":", 1)[1], "--data", str(data)]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:

        def up_or_exited() -> bool:
            if process.poll() is not None:
                return True
            return httpx.get(f"{url}/moto-api/", timeout=2).status_code == 200

        wait_until(up_or_exited, timeout_s=60, what=f"the S3 server at {url}", interval_s=0.05)
        assert process.poll() is None, f"the S3 server exited: {log.read_text()[-2000:]}"
        yield S3Server(process, url, log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def everything(client: Any) -> dict[str, list[dict[str, Any]]]:
    """Every bucket and, in listing order, every object as HEAD and GET report it."""
    found: dict[str, list[dict[str, Any]]] = {}
    for bucket in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        found[bucket] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                head = client.head_object(Bucket=bucket, Key=item["Key"])
                body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                found[bucket].append(
                    {
                        "key": item["Key"],
                        "size": head["ContentLength"],
                        "sha256": sha256(body),
                        "etag": head["ETag"],
                        "last_modified": head["LastModified"],
                        "content_type": head["ContentType"],
                        "metadata": head["Metadata"],
                        "encryption": head.get("ServerSideEncryption"),
                    }
                )
    return found


def missing(client: Any, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        return error.response["Error"]["Code"] in {"404", "NoSuchKey"}
    return False


def files(data: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in data.rglob("*") if p.is_file()}


def test_every_change_survives_a_sigkill_and_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "s3"
    dump = os.urandom(12 * MIB + 321)
    with s3_server(data, tmp_path / "first.log") as server:
        s3, client = server.resource(), server.client()
        s3.ensure_bucket()
        with s3.multipart("acme/2026-12-01.dump", {"tenant": "acme", "kind": "full"}) as upload:
            upload.pump(io.BytesIO(dump))
            stored = upload.complete()
        assert stored.parts == 3
        for body in (b'{"v": 1}', b'{"v": 2}'):  # an overwrite keeps the latest
            client.put_object(
                Bucket=BUCKET,
                Key="acme/manifest.json",
                Body=body,
                ContentType="application/json",
                Metadata={"tenant": "acme", "schema_version": "2"},
            )
        client.put_object(Bucket=BUCKET, Key="empty", Body=b"")
        client.put_object(Bucket=BUCKET, Key="globex/ünïcode & spaces.txt", Body=b"x" * 1000)
        client.copy_object(
            Bucket=BUCKET,
            Key="acme/latest.dump",
            CopySource={"Bucket": BUCKET, "Key": "acme/2026-12-01.dump"},
            ServerSideEncryption="AES256",
        )
        for key in ("doomed/1", "doomed/2", "doomed/3"):
            client.put_object(Bucket=BUCKET, Key=key, Body=key.encode())
        client.delete_object(Bucket=BUCKET, Key="doomed/1")
        answer = client.delete_objects(
            Bucket=BUCKET, Delete={"Objects": [{"Key": "doomed/2"}, {"Key": "doomed/3"}]}
        )
        assert not answer.get("Errors")
        client.create_bucket(Bucket="rp9-scratch")
        client.delete_bucket(Bucket="rp9-scratch")
        client.create_bucket(Bucket="rp9-exports")
        client.put_object(Bucket="rp9-exports", Key="2026-11.csv", Body=b"tenant,eur\nacme,12\n")
        before = everything(client)
        server.kill()

    on_disk = files(data)
    with s3_server(data, tmp_path / "second.log") as server:
        s3, client = server.resource(), server.client()
        assert everything(client) == before
        assert list(before) == [BUCKET, "rp9-exports"]
        assert [o["key"] for o in before[BUCKET]] == [
            "acme/2026-12-01.dump",
            "acme/latest.dump",
            "acme/manifest.json",
            "empty",
            "globex/ünïcode & spaces.txt",
        ]
        # What the backup job checks after writing, and a restore drill before reading.
        head = s3.head("acme/2026-12-01.dump")
        assert head is not None
        assert head.server_side_encryption == "AES256"
        assert head.size == len(dump)
        assert head.metadata == {"tenant": "acme", "kind": "full"}
        assert s3.read_sha256("acme/2026-12-01.dump") == (len(dump), stored.sha256)
        assert s3.read_sha256("acme/latest.dump") == (len(dump), stored.sha256)
        manifest = client.get_object(Bucket=BUCKET, Key="acme/manifest.json")
        assert manifest["Body"].read() == b'{"v": 2}'
        assert manifest["ContentType"] == "application/json"
        assert manifest["Metadata"] == {"tenant": "acme", "schema_version": "2"}
        assert all(missing(client, BUCKET, f"doomed/{n}") for n in (1, 2, 3))
        assert "loaded 6 objects" in server.log.read_text()

        # Loading wrote nothing, and the next write touches only its own file.
        client.put_object(Bucket="rp9-exports", Key="2026-12.csv", Body=b"tenant,eur\n")
        after = files(data)
        assert {p: after.get(p) for p in on_disk} == on_disk
        assert len(after) == len(on_disk) + 1


@pytest.mark.parametrize("earlier", [None, b"the previous backup\n" * 1000], ids=["new", "old"])
def test_a_kill_while_an_upload_is_written_leaves_the_old_object_or_the_new_one_whole(
    tmp_path: Path, earlier: bytes | None
) -> None:
    data, key = tmp_path / "s3", "acme/2026-12-02.dump"
    dump = os.urandom(64 * MIB)
    with s3_server(data, tmp_path / "first.log") as server:
        s3 = server.resource()
        s3.ensure_bucket()
        if earlier is not None:
            server.client().put_object(Bucket=BUCKET, Key=key, Body=earlier)

        def upload() -> None:
            # Fails once the server is killed; whether it does is not what is tested.
            with contextlib.suppress(Exception), s3.multipart(key, {"tenant": "acme"}) as upload:
                upload.pump(io.BytesIO(dump))
                upload.complete()

        uploading = threading.Thread(target=upload, daemon=True)
        uploading.start()
        wait_until(
            lambda: any(data.rglob(".tmp-*")),
            timeout_s=120,
            what="the server writing the upload to disk",
            interval_s=0.001,
        )
        server.kill(signal.SIGSTOP)
        mid_write = any(data.rglob(".tmp-*"))
        server.kill()
    uploading.join(timeout=120)
    assert not uploading.is_alive()

    with s3_server(data, tmp_path / "second.log") as server:
        s3 = server.resource()
        assert not any(data.rglob(".tmp-*"))
        expected = earlier if mid_write else dump
        if expected is None:
            assert s3.head(key) is None
            assert "loaded 0 objects" in server.log.read_text()
        else:
            assert s3.read_sha256(key) == (len(expected), sha256(expected))
