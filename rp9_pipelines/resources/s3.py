from typing import Any

import boto3
import dagster as dg
from botocore.config import Config

from rp9_pipelines.resources.health import Health, probe


class S3Resource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """S3-compatible object storage for backups and chargeback exports."""

    endpoint_url: str = ""
    region: str = "us-east-1"
    bucket: str
    access_key_id: str
    secret_access_key: str
    timeout_s: int = 30

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
