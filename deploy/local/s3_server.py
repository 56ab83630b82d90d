"""The local stack's S3 server: moto's S3 API, with every bucket and object kept on disk.

    python deploy/local/s3_server.py --host 127.0.0.1 --port 59000 --data .stack/s3

`moto_server` keeps objects in memory only, so a restart lost every backup. This serves moto's
own WSGI app, loads DATA into moto's backend before listening, and after each mutating request
that succeeded writes what changed back to DATA *before* answering: a 2xx means on disk.

DATA/buckets/<bucket, percent-quoted>/
    bucket.json             name, account, region, creation date: the bucket exists iff it does
    objects/<sha256(key)>   one JSON header line (key, size, etag, last modified, metadata with
                            the content type, server-side encryption, checksum), then the bytes

Every file is written to a temporary name, fsynced and renamed into place, so a kill at any point
leaves the previous version or the new one, never part of one; leftovers of a killed write are
removed at start, and a committed file that does not read back whole stops it. Not kept:
versions but the latest, object tags and ACLs, bucket configuration (policy, versioning,
lifecycle, CORS, ...), multipart uploads in progress. `POST /moto-api/reset` empties the store
on disk too.
"""

import argparse
import datetime
import hashlib
import json
import logging
import os
import shutil
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from moto.s3.models import FakeBucket, FakeKey, s3_backends
from moto.utilities.utils import get_partition
from werkzeug.serving import make_server

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("s3_server")

Record = dict[str, Any]  # JSON-native, so a record read back from disk compares equal
TEMP_PREFIX = ".tmp-"
STORAGE_ERROR = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>The change could not be written to disk; retry.</Message></Error>"
)


def bucket_record(bucket: FakeBucket) -> Record:
    return {
        "name": bucket.name,
        "account_id": bucket.account_id,
        "region": bucket.region_name,
        "creation_date": bucket.creation_date.isoformat(),
    }


def object_record(key: FakeKey) -> Record:
    """What is kept of an object besides its bytes: equal records, nothing to write."""
    return {
        "key": key.name,
        "size": key.size,
        "etag": key.etag.strip('"'),
        "last_modified": key.last_modified.isoformat(),
        "metadata": dict(key.metadata),
        "storage_class": key.storage_class,
        "encryption": key.encryption,
        "kms_key_id": key.kms_key_id,
        "bucket_key_enabled": key.bucket_key_enabled,
        "website_redirect_location": key.website_redirect_location,
        "checksum_algorithm": key.checksum_algorithm,
        "checksum_value": key.checksum_value,
        "checksum_type": key.checksum_type,
        "checksum_parts": key.checksum_parts,
    }


def live_buckets() -> dict[str, FakeBucket]:
    """Every bucket in moto's memory, across accounts and partitions."""
    found: dict[str, FakeBucket] = {}
    for name, (partition, account_id) in list(s3_backends.bucket_accounts.items()):
        bucket = s3_backends[account_id][partition].buckets.get(name)
        if bucket is not None:  # table buckets share the namespace; they are not kept
            found[name] = bucket
    return found


def live_objects(bucket: FakeBucket) -> dict[str, FakeKey]:
    """The latest version of each key; a key whose latest version is a delete marker is gone."""
    found: dict[str, FakeKey] = {}
    for name in list(bucket.keys):
        key = bucket.keys.get(name)
        if isinstance(key, FakeKey):
            found[name] = key
    return found


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, chunks: Iterable[bytes]) -> None:
    """Replace `path` with `chunks`: readers, and a restart after a kill, see all or nothing."""
    temp = path.with_name(f"{TEMP_PREFIX}{uuid.uuid4().hex}")
    try:
        with temp.open("wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        temp.replace(path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


class CorruptStore(Exception):
    """A committed file does not read back whole: the disk or someone's hands, never a kill."""


@dataclass(frozen=True)
class Loaded:
    buckets: int
    objects: int
    total_bytes: int


class Disk:
    """The files under DATA; one method per change, each atomic and durable on return."""

    def __init__(self, root: Path) -> None:
        self.buckets_dir = root / "buckets"

    def bucket_dir(self, bucket: str) -> Path:
        return self.buckets_dir / urllib.parse.quote(bucket, safe="")

    def object_path(self, bucket: str, key: str) -> Path:
        name = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return self.bucket_dir(bucket) / "objects" / name

    def write_bucket(self, record: Record) -> None:
        directory = self.bucket_dir(record["name"])
        (directory / "objects").mkdir(parents=True, exist_ok=True)
        fsync_dir(self.buckets_dir)
        write_atomically(directory / "bucket.json", [json.dumps(record).encode()])

    def remove_bucket(self, bucket: str) -> None:
        directory = self.bucket_dir(bucket)
        (directory / "bucket.json").unlink(missing_ok=True)
        fsync_dir(directory)
        shutil.rmtree(directory)
        fsync_dir(self.buckets_dir)

    def write_object(self, bucket: str, record: Record, key: FakeKey) -> None:
        def chunks() -> Iterator[bytes]:
            yield json.dumps(record).encode() + b"\n"
            yield key.value

        write_atomically(self.object_path(bucket, record["key"]), chunks())

    def remove_object(self, bucket: str, key: str) -> None:
        path = self.object_path(bucket, key)
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)

    def read(self) -> Iterator[tuple[Record, Iterator[tuple[Record, bytes]]]]:
        """Each bucket with its objects, after removing what a killed write left behind."""
        self.buckets_dir.mkdir(parents=True, exist_ok=True)
        for directory in sorted(self.buckets_dir.iterdir()):
            if not (directory / "bucket.json").is_file():
                shutil.rmtree(directory)  # a creation or a deletion cut short
                continue
            for leftover in directory.rglob(f"{TEMP_PREFIX}*"):
                leftover.unlink()
            record = json.loads((directory / "bucket.json").read_bytes())
            yield record, self.read_objects(directory / "objects")

    @staticmethod
    def read_objects(directory: Path) -> Iterator[tuple[Record, bytes]]:
        for path in sorted(directory.iterdir()):
            with path.open("rb") as file:
                record = json.loads(file.readline())
                value = file.read()
            if len(value) != record["size"]:
                raise CorruptStore(f"{path}: {len(value)} bytes, its header says {record['size']}")
            yield record, value


@dataclass(frozen=True)
class Kept:
    """An object as it is on disk, and the FakeKey in moto's memory it was written from."""

    key: FakeKey
    record: Record


class Mirror:
    """moto's S3 backend mirrored on a Disk, with what is on disk remembered to write only changes.

    `sync` must not run concurrently with a request that changes objects (see WriteThrough).
    """

    def __init__(self, disk: Disk) -> None:
        self.disk = disk
        self.buckets: dict[str, Record] = {}
        self.objects: dict[str, dict[str, Kept]] = {}

    def load(self) -> Loaded:
        """Put everything on disk into moto's (empty) backend."""
        count, size = 0, 0
        for record, objects in self.disk.read():
            backend = s3_backends[record["account_id"]][get_partition(record["region"])]
            bucket = backend.create_bucket(record["name"], record["region"])
            bucket.creation_date = datetime.datetime.fromisoformat(record["creation_date"])
            self.buckets[bucket.name] = record
            self.objects[bucket.name] = {}
            for stored, value in objects:
                key = backend.put_object(
                    bucket.name,
                    stored["key"],
                    value,
                    storage=stored["storage_class"],
                    etag=stored["etag"],
                    encryption=stored["encryption"],
                    kms_key_id=stored["kms_key_id"],
                    bucket_key_enabled=stored["bucket_key_enabled"],
                    disable_notification=True,
                )
                key.metadata.clear()
                key.metadata.update(stored["metadata"])
                key.last_modified = datetime.datetime.fromisoformat(stored["last_modified"])
                key.website_redirect_location = stored["website_redirect_location"]
                key.checksum_algorithm = stored["checksum_algorithm"]
                key.checksum_value = stored["checksum_value"]
                key.checksum_type = stored["checksum_type"]
                key.checksum_parts = stored["checksum_parts"]
                self.objects[bucket.name][key.name] = Kept(key, stored)
                count, size = count + 1, size + len(value)
        return Loaded(buckets=len(self.buckets), objects=count, total_bytes=size)

    def sync(self) -> None:
        """Make the disk say what moto's memory says, writing only what differs."""
        live = live_buckets()
        for name in self.buckets.keys() - live.keys():
            self.disk.remove_bucket(name)
            del self.buckets[name], self.objects[name]
        for name, bucket in live.items():
            record = bucket_record(bucket)
            if self.buckets.get(name) != record:
                self.disk.write_bucket(record)
                self.buckets[name] = record
                self.objects.setdefault(name, {})
            self.sync_objects(name, live_objects(bucket))

    def sync_objects(self, bucket: str, live: dict[str, FakeKey]) -> None:
        stored = self.objects[bucket]
        for name in stored.keys() - live.keys():
            self.disk.remove_object(bucket, name)
            del stored[name]
        for name, key in live.items():
            kept = stored.get(name)
            # moto writes an object as a new FakeKey and sets what a record holds only in the
            # request that creates it: the same FakeKey is already on disk.
            if kept is not None and kept.key is key:
                continue
            record = object_record(key)
            if kept is None or kept.record != record:
                self.disk.write_object(bucket, record, key)
            stored[name] = Kept(key, record)


def changes_objects(environ: "WSGIEnvironment") -> bool:
    method = environ["REQUEST_METHOD"]
    if method not in {"PUT", "POST", "DELETE"}:
        return False
    # A part is no object until CompleteMultipartUpload; parts of an upload arrive in parallel.
    query = urllib.parse.parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    return not (method == "PUT" and "uploadId" in query)


def run(
    app: "WSGIApplication", environ: "WSGIEnvironment"
) -> tuple[str, list[tuple[str, str]], bytes]:
    """Call a WSGI app to the end: its status, headers and whole body."""
    started: list[tuple[str, list[tuple[str, str]]]] = []
    body: list[bytes] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: object = None
    ) -> Callable[[bytes], object]:
        started.append((status, headers))
        return body.append

    result = app(environ, start_response)
    try:
        body.extend(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started[-1]
    return status, headers, b"".join(body)


class WriteThrough:
    """WSGI middleware: a request that changes objects is answered once the change is on disk.

    Such requests run one at a time, each followed by its sync, so the disk only ever holds the
    state between two of them; reads and part uploads run concurrently, as in moto.
    """

    def __init__(self, app: "WSGIApplication", mirror: Mirror) -> None:
        self.app, self.mirror = app, mirror
        self.lock = threading.Lock()

    def __call__(
        self, environ: "WSGIEnvironment", start_response: "StartResponse"
    ) -> Iterable[bytes]:
        if not changes_objects(environ):
            return self.app(environ, start_response)
        with self.lock:
            status, headers, body = run(self.app, environ)
            if status.startswith("2"):
                try:
                    self.mirror.sync()
                except Exception:
                    log.exception(
                        "could not write %s %s to disk",
                        environ["REQUEST_METHOD"],
                        environ.get("PATH_INFO"),
                    )
                    status, body = "500 Internal Server Error", STORAGE_ERROR
                    headers = [
                        ("Content-Type", "application/xml"),
                        ("Content-Length", str(len(body))),
                    ]
        start_response(status, headers)
        return [body]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True, help="where buckets are kept")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # moto addresses itself on this port when one service calls another.
    os.environ.setdefault("MOTO_PORT", str(args.port))

    started = time.monotonic()
    mirror = Mirror(Disk(args.data))
    loaded = mirror.load()
    app = WriteThrough(DomainDispatcherApplication(create_backend_app), mirror)
    server = make_server(
        args.host, args.port, app, threaded=True, request_handler=MotoRequestHandler
    )
    log.info(
        "loaded %d objects (%d bytes) in %d buckets from %s in %.2f s; serving on http://%s:%d",
        loaded.objects,
        loaded.total_bytes,
        loaded.buckets,
        args.data,
        time.monotonic() - started,
        args.host,
        args.port,
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
