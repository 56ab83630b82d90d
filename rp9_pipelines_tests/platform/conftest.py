"""The platform tests' resources, bound from the stack's settings as `defs/resources.py` binds
them; the tenant fixtures (an API client, Vault, the Docker runtime) are the lifecycle tests'."""

import os

import pytest

from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines.resources.stack import PlatformBackupResources
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.tenants.conftest import api, runtime, vault

__all__ = ["api", "runtime", "vault"]


@pytest.fixture(scope="session")
def backup_resources(
    settings: Settings, vault: VaultResource, s3: S3Resource
) -> PlatformBackupResources:
    return PlatformBackupResources(
        catalog=CatalogResource(database_url=settings.database_url),
        s3=s3,
        vault=vault,
        backup_key=os.environ["PLATFORM_BACKUP_KEY"],
    )
