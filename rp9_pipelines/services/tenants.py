"""The shells that make a tenant's stack match the catalog: gather, decide (domain.stack), act."""

import contextlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from docker.errors import NotFound

from rp9_pipelines.catalog import tenants as catalog
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.domain.autoscaling import worker_concurrency
from rp9_pipelines.domain.stack import (
    LABEL_COLOR,
    OWNER_PASSWORD_HASH_FILE,
    SECRET_FILES,
    ContainerSpec,
    TenantStack,
    desired_containers,
    plan_reconcile,
    startup_cpu,
)
from rp9_pipelines.domain.template import TEMPLATE_SECRET_FILES, builder_container, template_schema
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.docker_runtime import DockerRuntimeResource
from rp9_pipelines.resources.platform import PlatformResource
from rp9_pipelines.resources.redis_queue import RedisResource
from rp9_pipelines.resources.secret_files import SecretFilesResource
from rp9_pipelines.resources.tenant_db import Template, TenantDatabaseResource
from rp9_pipelines.resources.vault import VaultResource

Log = Callable[[str], None]


@dataclass(frozen=True)
class StackResources:
    catalog: CatalogResource
    docker_runtime: DockerRuntimeResource
    platform: PlatformResource
    secret_files: SecretFilesResource
    vault: VaultResource
    redis: RedisResource
    tenant_db: TenantDatabaseResource


def owner_email(r: StackResources, tenant: Tenant) -> str:
    return f"owner@{tenant.slug}.{r.platform.base_domain}"


def load(r: StackResources, tenant_id: str) -> Tenant:
    with r.catalog.begin() as connection:
        return catalog.require_tenant(connection, tenant_id)


def set_status(r: StackResources, tenant: Tenant, **values: object) -> None:
    with r.catalog.begin() as connection:
        catalog.update_tenant(connection, tenant.id, **values)


def prepare_secrets(r: StackResources, tenant: Tenant) -> None:
    """Vault is the source of truth; the files are what the containers mount."""
    names = tenant.names
    values = r.vault.ensure(names.vault_path, owner_email(r, tenant))
    # File names are the Vault keys.
    files = {name: values[name] for name in [*SECRET_FILES.values(), OWNER_PASSWORD_HASH_FILE]}
    r.secret_files.write(tenant.slug, files)
    r.redis.ensure_tenant_user(names.redis_user, values["redis_password"], names.redis_prefix)


def prepare_database(r: StackResources, tenant: Tenant, log: Log) -> bool:
    """The tenant's role and schema or database, a copy of the n8n version's pre-migrated
    template when it is new; returns whether n8n's migrations are already applied."""
    values = r.vault.read(tenant.names.vault_path)
    if not values:
        raise LookupError(f"no secrets for {tenant.slug}: run the secrets step first")
    template = ensure_template(r, log)
    return r.tenant_db.ensure(tenant.names, values["db_password"], template)


def ensure_template(r: StackResources, log: Log) -> Template:
    """Build the pre-migrated schema of this n8n version once (one builder at a time): boot a
    throwaway n8n on an empty schema until it is healthy, then seal what it left."""
    schema = template_schema(r.platform.n8n_version)
    with r.tenant_db.template_lock(schema):
        if not r.tenant_db.template_ready(schema):
            started = time.monotonic()
            log(f"building the n8n {r.platform.n8n_version} template schema {schema}")
            spec = builder_container(schema, r.platform.stack_config())
            files = {name: secrets.token_hex(24) for name in TEMPLATE_SECRET_FILES.values()}
            r.tenant_db.prepare_template(schema, files["db_password"])
            secrets_dir = r.secret_files.write(spec.name, files)
            try:
                r.docker_runtime.create(spec, r.platform.image, secrets_dir)
                wait_healthy(r, [spec.name])
            finally:
                r.docker_runtime.remove(spec.name, graceful=True)
                r.secret_files.remove(spec.name)
            r.tenant_db.seal_template(schema)
            log(f"template {schema} ready in {time.monotonic() - started:.1f} s")
        return r.tenant_db.template(schema)


def desired(r: StackResources, tenant: Tenant, connection: sa.Connection) -> list[ContainerSpec]:
    limits = catalog.limits_for(connection, tenant.id)
    stack = TenantStack(
        names=tenant.names,
        owner_email=owner_email(r, tenant),
        custom_domain=tenant.custom_domain,
        workers=tenant.workers,
        cpu=limits.cpu,
        memory_mb=limits.memory_mb,
        worker_concurrency=worker_concurrency(limits.concurrency),
        concurrency=limits.concurrency,
    )
    return desired_containers(stack, r.platform.stack_config())


def start(r: StackResources, tenant: Tenant, log: Log) -> list[str]:
    """Converge main and workers: together on a migrated schema, else main first (it runs the
    migrations) and the workers once it is healthy."""
    if r.tenant_db.migrated(tenant.names):
        return converge(r, tenant, log, roles={"main", "worker"})
    log("schema not migrated yet: main first, workers after it")
    changes = converge(r, tenant, log, roles={"main"})
    return changes + converge(r, tenant, log, roles={"worker"})


def converge(r: StackResources, tenant: Tenant, log: Log, *, roles: set[str]) -> list[str]:
    """Make the containers of `roles` match the catalog; returns what changed.

    On a schema n8n has not migrated yet, converge main alone first (`start`): two n8n processes
    booting at once on a fresh database both run the migrations and one of them fails.
    """
    r.docker_runtime.ensure_network(tenant.names.network, tenant.slug)
    with r.catalog.begin() as connection:
        specs = [s for s in desired(r, tenant, connection) if s.role in roles]
    observed = [o for o in r.docker_runtime.observe(tenant.slug) if o.role in roles]
    plan = plan_reconcile(specs, observed)
    done: list[str] = []
    secrets_dir = r.secret_files.path(tenant.slug)
    for name in plan.remove:
        log(f"draining and removing {name}")
        r.docker_runtime.remove(name, graceful=True)
        with r.catalog.begin() as connection:
            catalog.set_instances_state(connection, tenant.id, "removed", [name])
        done.append(f"removed {name}")

    def boot_cpu(spec: ContainerSpec) -> float:  # the engine is asked once, when needed
        return startup_cpu(spec.cpu, r.platform.startup_cpu, r.docker_runtime.host_cpus())

    boosted = [s for s in plan.create + plan.recreate + plan.start if boot_cpu(s) != s.cpu]
    try:
        for spec in plan.create + plan.recreate:
            verb = "recreating" if spec in plan.recreate else "creating"
            log(f"{verb} {spec.name} ({spec.cpu} CPU, {spec.memory_mb} MiB)")
            if spec in plan.recreate:
                r.docker_runtime.remove(spec.name, graceful=True)
            container_id = r.docker_runtime.create(
                spec, r.platform.image, secrets_dir, cpu=boot_cpu(spec)
            )
            _record(r, tenant, spec, container_id, "running")
            done.append(f"{verb} {spec.name}")
        for spec in plan.update_limits:
            log(f"updating limits of {spec.name} to {spec.cpu} CPU, {spec.memory_mb} MiB")
            r.docker_runtime.update_limits(spec.name, spec.cpu, spec.memory_mb)
            _record(r, tenant, spec, None, "running")
            done.append(f"resized {spec.name}")
        for spec in plan.start:
            log(f"starting {spec.name}")
            if spec in boosted:
                r.docker_runtime.update_limits(spec.name, boot_cpu(spec), spec.memory_mb)
            r.docker_runtime.start(spec.name)
            with r.catalog.begin() as connection:
                catalog.set_instances_state(connection, tenant.id, "running", [spec.name])
            done.append(f"started {spec.name}")
        wait_healthy(r, [s.name for s in specs])
    finally:
        # Healthy or not, a boosted container goes back to its plan's CPU (one not created, or
        # gone by now, is found by the next converge, which compares the limits too).
        for spec in boosted:
            with contextlib.suppress(NotFound):
                r.docker_runtime.update_limits(spec.name, spec.cpu, spec.memory_mb)
        if boosted:
            log(f"startup CPU boost over for {', '.join(s.name for s in boosted)}")
    return done


def _record(
    r: StackResources, tenant: Tenant, spec: ContainerSpec, container_id: str | None, state: str
) -> None:
    with r.catalog.begin() as connection:
        catalog.record_instance(
            connection,
            tenant,
            name=spec.name,
            role=spec.role,
            color=spec.labels[LABEL_COLOR],
            container_id=container_id,
            image=r.platform.image,
            cpu=spec.cpu,
            memory_mb=spec.memory_mb,
            state=state,
        )


def wait_healthy(r: StackResources, names: list[str]) -> None:
    """Wait for Docker's health check (n8n's /healthz/readiness) on every named container."""
    deadline = time.monotonic() + r.platform.ready_timeout_s
    pending = set(names)
    while pending:
        for name in sorted(pending):
            state = r.docker_runtime.state(name)
            if state is None or state.status in {"exited", "dead"}:
                logs = r.docker_runtime.logs(name, tail=30) if state else ""
                raise RuntimeError(f"{name} is not running ({state and state.status}):\n{logs}")
            if state.health == "healthy":
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            raise TimeoutError(
                f"not healthy after {r.platform.ready_timeout_s} s: {sorted(pending)}"
            )
        if pending:
            time.sleep(0.2)


def stop_all(r: StackResources, tenant: Tenant, log: Log) -> None:
    """Workers first (they finish their executions), then main."""
    states = r.docker_runtime.states(tenant.slug)
    for state in sorted(states, key=lambda s: s.role != "worker"):
        log(f"stopping {state.name}")
        r.docker_runtime.stop(state.name)
    with r.catalog.begin() as connection:
        catalog.set_instances_state(connection, tenant.id, "stopped")


def suspend(r: StackResources, tenant: Tenant, reason: str, log: Log) -> None:
    """Stop the stack and mark the tenant suspended, recording who suspended it (enforcement
    resumes only what enforcement suspended). The reason is written first, so a suspension cut
    short is still known for what it was."""
    set_status(r, tenant, suspension_reason=reason)
    stop_all(r, tenant, log)
    set_status(r, tenant, status="suspended", suspension_reason=reason)


def resume(r: StackResources, tenant: Tenant, log: Log) -> list[str]:
    """Start a suspended tenant's stack again on its data; it is active, for no reason, once
    every container is healthy."""
    prepare_secrets(r, tenant)
    changes = start(r, tenant, log)
    set_status(r, tenant, status="active", suspension_reason=None, last_error=None)
    return changes


def remove_all(r: StackResources, tenant: Tenant, log: Log) -> None:
    for state in sorted(r.docker_runtime.states(tenant.slug), key=lambda s: s.role != "worker"):
        log(f"removing {state.name}")
        r.docker_runtime.remove(state.name, graceful=True)
    r.docker_runtime.remove_network(tenant.names.network)
    with r.catalog.begin() as connection:
        catalog.set_instances_state(connection, tenant.id, "removed")
