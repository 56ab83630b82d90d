import uuid
from collections.abc import Iterator

import pytest

from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines.settings import Settings


@pytest.fixture
def bucket(settings: Settings) -> Iterator[S3Resource]:
    """A fresh bucket on the real S3 server (moto), emptied and removed afterwards."""
    s3 = S3Resource(
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        bucket=f"rp9-test-{uuid.uuid4().hex[:12]}",
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key.get_secret_value(),
        part_size_mb=5,
    )
    s3.ensure_bucket()
    yield s3
    client = s3.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=s3.bucket, Key=item["Key"])
    client.delete_bucket(Bucket=s3.bucket)
