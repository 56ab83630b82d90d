"""A pre-migrated n8n schema per n8n version, cloned into each new tenant.

n8n's first boot spends seconds running its migrations. The platform runs them once per
version, on a template schema, and every new tenant starts from a copy, so its main and workers
can boot together. What n8n writes at startup about its own instance (its id, its signing keys,
the versions it ran) is removed from the template, so each tenant's n8n creates its own.
"""

import re

from rp9_pipelines.domain.stack import (
    LABEL_MANAGED,
    LABEL_ROLE,
    SECRETS_MOUNT,
    ContainerSpec,
    StackConfig,
)

TEMPLATE_DATABASE = "rp9_templates"
TEMPLATE_ROLE = "rp9_template"
TEMPLATE_ROLE_LABEL = "template"
READY_COMMENT = "rp9: n8n template, migrations complete"
# Rows n8n writes when an instance starts, about that instance: never shared between tenants.
INSTANCE_TABLES = ("deployment_key", "instance_version_history")
# Secret files of the template builder (a throwaway role password and encryption key).
TEMPLATE_SECRET_FILES = {
    "DB_POSTGRESDB_PASSWORD": "db_password",
    "N8N_ENCRYPTION_KEY": "encryption_key",
}
_VERSION_RE = re.compile(r"^[0-9A-Za-z._-]{1,40}$")


def template_schema(n8n_version: str) -> str:
    """`2.20.12` → `n8n_2_20_12`: one template per n8n version (its migrations)."""
    if not _VERSION_RE.match(n8n_version):
        raise ValueError(f"not an n8n version: {n8n_version!r}")
    return "n8n_" + re.sub(r"[^0-9a-z]", "_", n8n_version.lower())


def builder_container(schema: str, config: StackConfig, memory_mb: int = 1024) -> ContainerSpec:
    """The one-off n8n that runs the migrations on the template schema (no route, no queue)."""
    env = {
        "DB_TYPE": "postgresdb",
        "DB_POSTGRESDB_HOST": config.services_host,
        "DB_POSTGRESDB_PORT": str(config.postgres_port),
        "DB_POSTGRESDB_DATABASE": TEMPLATE_DATABASE,
        "DB_POSTGRESDB_SCHEMA": schema,
        "DB_POSTGRESDB_USER": TEMPLATE_ROLE,
        "N8N_DIAGNOSTICS_ENABLED": "false",
        "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
        **{f"{var}_FILE": f"{SECRETS_MOUNT}/{name}" for var, name in TEMPLATE_SECRET_FILES.items()},
    }
    return ContainerSpec(
        name=f"rp9-template-{schema.replace('_', '-')}",
        role=TEMPLATE_ROLE_LABEL,
        index=0,
        command=[],
        env=env,
        labels={LABEL_MANAGED: "true", LABEL_ROLE: TEMPLATE_ROLE_LABEL},
        cpu=2.0,
        memory_mb=memory_mb,
        network="bridge",
        healthcheck_interval_s=config.healthcheck_interval_s,
    )
