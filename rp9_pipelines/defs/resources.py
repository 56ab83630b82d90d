"""Binds every resource. Secrets only through `dg.EnvVar`, so the run config shown in the UI names
the variable, never its value; the platform's settings (`PlatformSettings`: no secret required)
are read here, when definitions load, and bound whole as the `settings` resource."""

import os

import dagster as dg

from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.http_service import HttpServiceResource
from rp9_pipelines.resources.n8n import N8nResource
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.resources.platform import PlatformResource
from rp9_pipelines.resources.prometheus import PrometheusResource
from rp9_pipelines.resources.redis_queue import RedisResource
from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines.resources.secret_files import SecretFilesResource
from rp9_pipelines.resources.stack import (
    DrillResources,
    PlatformBackupResources,
    StackResources,
)
from rp9_pipelines.resources.stripe import StripeResource
from rp9_pipelines.resources.supabase import SupabaseResource
from rp9_pipelines.resources.tenant_db import TenantDatabaseResource
from rp9_pipelines.resources.tenant_runtime import runtime_resource
from rp9_pipelines.resources.traefik_dynamic import TraefikDynamicResource
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.services.promotion import PromotionResources
from rp9_pipelines.services.upgrades import UpgradeResources
from rp9_pipelines.settings import PlatformSettings


@dg.definitions
def resources() -> dg.Definitions:
    settings = PlatformSettings()
    catalog = CatalogResource(database_url=dg.EnvVar("DATABASE_URL"))
    docker_runtime = runtime_resource(settings.tenant_stack.runtime)
    redis = RedisResource(redis_url=dg.EnvVar("REDIS_URL"))
    vault = VaultResource(vault_addr=dg.EnvVar("VAULT_ADDR"), vault_token=dg.EnvVar("VAULT_TOKEN"))
    s3 = S3Resource(
        endpoint_url=dg.EnvVar("S3_ENDPOINT_URL"),
        bucket=dg.EnvVar("S3_BUCKET"),
        access_key_id=dg.EnvVar("S3_ACCESS_KEY_ID"),
        secret_access_key=dg.EnvVar("S3_SECRET_ACCESS_KEY"),
        region_buckets=os.environ.get("S3_REGION_BUCKETS", ""),
    )
    platform = PlatformResource(
        n8n_image=dg.EnvVar("N8N_IMAGE"),
        n8n_version=dg.EnvVar("N8N_VERSION"),
        base_domain=dg.EnvVar("BASE_DOMAIN"),
        tenant_services_host=dg.EnvVar("TENANT_SERVICES_HOST"),
        database_url=dg.EnvVar("DATABASE_URL"),
        redis_url=dg.EnvVar("REDIS_URL"),
        traefik_url=dg.EnvVar("TRAEFIK_URL"),
        traefik_entrypoint=dg.EnvVar("TRAEFIK_ENTRYPOINT"),
        traefik_cert_resolver=dg.EnvVar("TRAEFIK_CERT_RESOLVER"),
        startup_cpu=settings.tenant_stack.startup_cpu,
    )
    secret_files = SecretFilesResource(root=dg.EnvVar("SECRETS_DIR"))
    # Tenants' databases through the tenant administrator login, never the catalog's.
    tenant_db = TenantDatabaseResource(admin_url=dg.EnvVar("TENANT_ADMIN_DATABASE_URL"))
    n8n_data = N8nDataResource(admin_url=dg.EnvVar("TENANT_ADMIN_DATABASE_URL"))
    n8n = N8nResource(traefik_url=dg.EnvVar("TRAEFIK_URL"))
    stack = StackResources(
        catalog=catalog,
        docker_runtime=docker_runtime,
        platform=platform,
        secret_files=secret_files,
        vault=vault,
        redis=redis,
        tenant_db=tenant_db,
        n8n_data=n8n_data,
    )
    cutover = PromotionResources(
        stack=stack,
        n8n=n8n,
        traefik_dynamic=TraefikDynamicResource(directory=dg.EnvVar("TRAEFIK_DYNAMIC_DIR")),
        traefik_api_url=dg.EnvVar("TRAEFIK_API_URL"),
        rollback_window_s=settings.promotion.rollback_window_s,
    )
    drill = DrillResources(
        catalog=catalog,
        admin_url=dg.EnvVar("TENANT_ADMIN_DATABASE_URL"),
        s3=s3,
        docker_runtime=docker_runtime,
        platform=platform,
        secret_files=secret_files,
        vault=vault,
    )
    return dg.Definitions(
        resources={
            "settings": settings,
            "catalog": catalog,
            "docker_runtime": docker_runtime,
            "redis": redis,
            "vault": vault,
            "s3": s3,
            "traefik": HttpServiceResource(
                name="traefik", base_url=dg.EnvVar("TRAEFIK_API_URL"), health_path="/ping"
            ),
            "prometheus": PrometheusResource(base_url=dg.EnvVar("PROMETHEUS_URL")),
            "platform": platform,
            "secret_files": secret_files,
            "tenant_db": tenant_db,
            "n8n_data": n8n_data,
            "n8n": n8n,
            "stripe": StripeResource(
                api_key=dg.EnvVar("STRIPE_SECRET_KEY"),
                api_base=dg.EnvVar("STRIPE_API_BASE"),
                max_network_retries=settings.stripe.max_network_retries,
                timeout_s=settings.stripe.timeout_s,
            ),
            "supabase": SupabaseResource(
                url=dg.EnvVar("SUPABASE_URL"),
                service_role_key=dg.EnvVar("SUPABASE_SERVICE_ROLE_KEY"),
            ),
            # What several ops need at once, from the same instances as above.
            "stack": stack,
            "promotion": cutover,
            "upgrade": UpgradeResources(
                cutover=cutover,
                drill=drill,
                watch_s=settings.upgrade.watch_s,
                rollback_window_s=settings.upgrade.rollback_window_s,
                dagster_graphql_url=os.environ.get(
                    "DAGSTER_GRAPHQL_URL", "http://127.0.0.1:3000/graphql"
                ),
            ),
            "platform_backup": PlatformBackupResources(
                catalog=catalog,
                s3=s3,
                vault=vault,
                backup_key=dg.EnvVar("PLATFORM_BACKUP_KEY"),
            ),
            "drill": drill,
        }
    )
