import concurrent.futures
import contextlib
import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any

import boto3
import dagster as dg
from botocore.config import Config
from botocore.exceptions import ClientError

from rp9_pipelines.domain.backups import MAX_PARTS, MIB, part_size, region_buckets
from rp9_pipelines.resources.health import Health, probe

SERVER_SIDE_ENCRYPTION = "AES256"


@dataclass(frozen=True)
class StoredObject:
    """What was written, as counted and hashed on the way out (not as S3 reports it)."""

    key: str
    size: int
    sha256: str
    parts: int


@dataclass(frozen=True)
class ObjectHead:
    size: int
    server_side_encryption: str | None
    metadata: dict[str, str]


class MultipartUpload:
    """One object written part by part from a stream, with server-side encryption requested.

    Memory stays bounded (the part being read plus `max_in_flight` parts being sent, which
    overlaps reading with sending); size and sha256 are computed as the bytes pass. Leaving the
    block without `complete()` (an error anywhere) aborts the upload, so no object appears.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        *,
        base_part_size: int,
        max_in_flight: int,
        metadata: dict[str, str],
    ) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self.base_part_size, self.max_in_flight = base_part_size, max_in_flight
        self.metadata = metadata
        self.upload_id: str | None = None
        self.size = 0
        self._sha256 = hashlib.sha256()
        self._parts: dict[int, concurrent.futures.Future[str]] = {}
        self._completed: StoredObject | None = None

    def __enter__(self) -> "MultipartUpload":
        created = self.client.create_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            ServerSideEncryption=SERVER_SIDE_ENCRYPTION,
            Metadata=self.metadata,
            ContentType="application/octet-stream",
        )
        self.upload_id = str(created["UploadId"])
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._completed is None and self.upload_id is not None:
            for future in self._parts.values():
                future.cancel()
            # The original error is the one to report; a failed abort cannot hide it.
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
                )

    def _send(self, number: int, body: bytes) -> str:
        answer = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=body,
        )
        return str(answer["ETag"])

    def pump(self, source: IO[bytes]) -> None:
        """Read `source` to its end, sending each part as soon as it is full; the first failed
        part stops the reading."""
        slots = threading.BoundedSemaphore(self.max_in_flight)
        failures: list[BaseException] = []

        def sent(future: concurrent.futures.Future[str]) -> None:
            if not future.cancelled() and future.exception() is not None:
                failures.append(future.exception())  # type: ignore[arg-type]
            slots.release()

        with concurrent.futures.ThreadPoolExecutor(self.max_in_flight) as pool:
            for number in range(1, MAX_PARTS + 2):
                if number > MAX_PARTS:
                    if source.read(1):
                        raise ValueError(f"more than {MAX_PARTS} parts: raise the part size")
                    break
                body = source.read(part_size(number, self.base_part_size))
                if not body and number > 1:
                    break
                self._sha256.update(body)
                self.size += len(body)
                slots.acquire()
                if failures:
                    raise failures[0]
                self._parts[number] = pool.submit(self._send, number, body)
                self._parts[number].add_done_callback(sent)
                if not body:
                    break  # an empty stream is one empty part
            for future in self._parts.values():
                future.result()

    def complete(self) -> StoredObject:
        parts = [
            {"PartNumber": number, "ETag": future.result()}
            for number, future in sorted(self._parts.items())
        ]
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": parts},
        )
        self._completed = StoredObject(self.key, self.size, self._sha256.hexdigest(), len(parts))
        return self._completed


class S3Resource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """S3-compatible object storage for backups and chargeback exports."""

    endpoint_url: str = ""
    region: str = "us-east-1"
    bucket: str
    access_key_id: str
    secret_access_key: str
    # Tenants' backups of these regions go to the region's own bucket (`S3_REGION_BUCKETS`,
    # domain.backups.region_buckets); others, and everything else, to `bucket`.
    region_buckets: str = ""
    timeout_s: int = 30
    part_size_mb: int = 16
    max_in_flight: int = 2

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url or None,
            region_name=self.region,
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=Config(
                connect_timeout=self.timeout_s,
                read_timeout=self.timeout_s,
                retries={"max_attempts": 3, "mode": "standard"},
            ),
        )

    def ping(self) -> Health:
        def check() -> str:
            client = self.client()
            client.list_buckets()
            return f"s3 at {self.endpoint_url or 'aws'}"

        return probe("s3", check)

    def for_region(self, region: str) -> "S3Resource":
        """This store with the bucket of `region`'s backups as its bucket."""
        bucket = region_buckets(self.region_buckets).get(region, self.bucket)
        if bucket == self.bucket:
            return self
        fields = {name: getattr(self, name) for name in type(self).model_fields}
        return S3Resource(**{**fields, "bucket": bucket})

    def ensure_bucket(self) -> None:
        client = self.client()
        try:
            client.head_bucket(Bucket=self.bucket)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") not in {"404", "NoSuchBucket"}:
                raise
            where = (
                {}
                if self.region == "us-east-1"
                else {"CreateBucketConfiguration": {"LocationConstraint": self.region}}
            )
            client.create_bucket(Bucket=self.bucket, **where)

    def multipart(self, key: str, metadata: dict[str, str]) -> MultipartUpload:
        return MultipartUpload(
            self.client(),
            self.bucket,
            key,
            base_part_size=self.part_size_mb * MIB,
            max_in_flight=self.max_in_flight,
            metadata=metadata,
        )

    def head(self, key: str, bucket: str | None = None) -> ObjectHead | None:
        try:
            answer = self.client().head_object(Bucket=bucket or self.bucket, Key=key)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise
        return ObjectHead(
            size=int(answer["ContentLength"]),
            server_side_encryption=answer.get("ServerSideEncryption"),
            metadata=dict(answer.get("Metadata") or {}),
        )

    def chunks(self, key: str, bucket: str | None = None, chunk_size: int = MIB) -> Iterator[bytes]:
        body = self.client().get_object(Bucket=bucket or self.bucket, Key=key)["Body"]
        try:
            yield from body.iter_chunks(chunk_size=chunk_size)
        finally:
            body.close()

    def read_sha256(
        self, key: str, bucket: str | None = None, into: IO[bytes] | None = None
    ) -> tuple[int, str]:
        """Read the stored object back: its size and sha256 as the bytes arrive (also written
        to `into`, for a caller that checks the content too without reading it again)."""
        digest, size = hashlib.sha256(), 0
        for chunk in self.chunks(key, bucket):
            digest.update(chunk)
            size += len(chunk)
            if into is not None:
                into.write(chunk)
        return size, digest.hexdigest()

    def delete(self, key: str, bucket: str | None = None) -> None:
        """Idempotent: deleting a missing key succeeds."""
        self.client().delete_object(Bucket=bucket or self.bucket, Key=key)

    def list_keys(self, prefix: str, bucket: str | None = None) -> list[str]:
        """Every key under `prefix`, in S3's (lexicographic) order."""
        pages = self.client().get_paginator("list_objects_v2")
        return [
            item["Key"]
            for page in pages.paginate(Bucket=bucket or self.bucket, Prefix=prefix)
            for item in page.get("Contents", [])
        ]
