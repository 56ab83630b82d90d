"""Plain test data shared by several test modules (pytest fixtures live in the conftests)."""

from rp9_pipelines.domain.stack import StackConfig

# A production platform's stack: HTTPS on the default port, certificates from a resolver.
STACK_CONFIG = StackConfig(
    image="rp9/n8n:2.20.12",
    base_domain="rp9.io",
    services_host="host.docker.internal",
    postgres_port=5432,
    redis_port=6379,
    redis_db=0,
    traefik_entrypoint="websecure",
    public_scheme="https",
    public_port=None,
    cert_resolver="letsencrypt",
)
