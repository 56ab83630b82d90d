"""Nested resources for the ops that act on a tenant's stack, whose shells (`services/`) take
every system they touch as one typed argument. Each is bound once in `defs/resources.py`, from
the same instances as the top-level resources, so its fields show (and resolve) as they do."""

import dagster as dg

from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.docker_runtime import DockerRuntimeResource
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.resources.platform import PlatformResource
from rp9_pipelines.resources.redis_queue import RedisResource
from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines.resources.secret_files import SecretFilesResource
from rp9_pipelines.resources.tenant_db import TenantDatabaseResource
from rp9_pipelines.resources.vault import VaultResource


class StackResources(dg.ConfigurableResource):  # type: ignore[type-arg]
    """What provisioning, scaling, suspension, deletion and enforcement act on: the catalog,
    the Docker engine, the tenants' secrets (Vault and files), queues and databases."""

    catalog: CatalogResource
    docker_runtime: DockerRuntimeResource
    platform: PlatformResource
    secret_files: SecretFilesResource
    vault: VaultResource
    redis: RedisResource
    tenant_db: TenantDatabaseResource
    n8n_data: N8nDataResource


class DrillResources(dg.ConfigurableResource):  # type: ignore[type-arg]
    """What a restore drill uses: the catalog, the backups in S3, the Postgres server it
    restores into (`admin_url`), and what boots a sandbox n8n with the tenant's secrets."""

    catalog: CatalogResource
    admin_url: str
    s3: S3Resource
    docker_runtime: DockerRuntimeResource
    platform: PlatformResource
    secret_files: SecretFilesResource
    vault: VaultResource


class PlatformBackupResources(dg.ConfigurableResource):  # type: ignore[type-arg]
    """What the platform's own backups read and write: the catalog (its database is dumped),
    the secret store (snapshotted) and S3; `backup_key` seals the secrets snapshot (64 hex
    characters, PLATFORM_BACKUP_KEY: kept by the operator away from the backups)."""

    catalog: CatalogResource
    s3: S3Resource
    vault: VaultResource
    backup_key: str
