from urllib.parse import urlsplit

import dagster as dg

from rp9_pipelines.domain.stack import StackConfig


class PlatformResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Platform-wide settings that shape every tenant's stack."""

    n8n_image: str
    n8n_version: str
    base_domain: str
    tenant_services_host: str
    database_url: str
    redis_url: str
    traefik_url: str
    traefik_entrypoint: str = "web"
    traefik_cert_resolver: str = ""
    healthcheck_interval_s: float = 1.0
    # CPU a tenant's container gets while n8n starts (0: none); see domain.stack.startup_cpu.
    startup_cpu: float = 2.0
    ready_timeout_s: float = 240.0

    @property
    def image(self) -> str:
        """The image of the version new tenants get (and the template schema's)."""
        return self.image_for(self.n8n_version)

    def image_for(self, version: str) -> str:
        """The image of n8n `version` (a tenant runs its own: `Tenant.n8n_version`)."""
        return f"{self.n8n_image}:{version}"

    def stack_config(self) -> StackConfig:
        database, redis, public = (
            urlsplit(self.database_url),
            urlsplit(self.redis_url),
            urlsplit(self.traefik_url),
        )
        scheme = "https" if self.traefik_cert_resolver else "http"
        default_port = 443 if scheme == "https" else 80
        return StackConfig(
            image=self.image,
            base_domain=self.base_domain,
            services_host=self.tenant_services_host,
            postgres_port=database.port or 5432,
            redis_port=redis.port or 6379,
            redis_db=int((redis.path or "/0").lstrip("/") or 0),
            traefik_entrypoint=self.traefik_entrypoint,
            public_scheme=scheme,
            public_port=public.port if public.port not in (None, default_port) else None,
            cert_resolver=self.traefik_cert_resolver,
            healthcheck_interval_s=self.healthcheck_interval_s,
        )
