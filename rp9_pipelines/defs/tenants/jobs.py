"""Tenant lifecycle jobs. Each is tagged with its tenant (`rp9/tenant`, one run at a time per
tenant), and each step converges, so re-running a failed or killed run finishes the work."""

import dagster as dg
import sqlalchemy as sa

from rp9_pipelines.catalog import autoscaling as autoscaling_catalog
from rp9_pipelines.catalog import tenants as catalog
from rp9_pipelines.domain.enforcement import OPERATOR
from rp9_pipelines.domain.lifecycle import Refused, autoscale_verdict
from rp9_pipelines.launches import AUTOSCALING_EVENT_TAG, KIND_TAG, TENANT_ID_TAG
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.n8n import N8nResource
from rp9_pipelines.resources.stack import StackResources
from rp9_pipelines.services import tenants


class TenantRef(dg.Config):
    tenant_id: str


class ScaleRequest(dg.Config):
    tenant_id: str
    plan: str | None = None
    cpu: float | None = None
    memory_mb: int | None = None
    workers: int | None = None


class DeleteRequest(dg.Config):
    tenant_id: str
    purge: bool = False


# Hooks take no typed resource parameters (Dagster 1.13): the catalog is named here instead.
@dg.failure_hook(required_resource_keys={"catalog"})
def mark_failed(context: dg.HookContext) -> None:
    """Record why a step failed on the tenant; re-running the job converges."""
    catalog_db: CatalogResource = context.resources.catalog
    run = context.instance.get_run_by_id(context.run_id)
    tenant_id = run.tags.get(TENANT_ID_TAG) if run else None
    if not tenant_id:
        return
    error = context.op_exception
    if isinstance(error, Refused):
        return  # the tenant's state refused the run: nothing was changed, nothing to record
    first_line = (str(error).splitlines() or [""])[0]
    reason = f"{context.op.name}: {type(error).__name__}: {first_line}"
    with catalog_db.begin() as connection:
        tenant = catalog.get_tenant(connection, tenant_id)
        if tenant is None:
            return
        # Only a provision that failed leaves a tenant that is not serving yet `failed`; a
        # failed repair of an active tenant, or a failed change, keeps the status of the stack
        # that still runs (backups, enforcement and autoscaling go on), the reason beside it.
        provisioning = context.job_name == "provision_tenant" and tenant.status != "active"
        status = {"status": "failed"} if provisioning else {}
        catalog.update_tenant(connection, tenant.id, last_error=reason[:2000], **status)


# Provision -----------------------------------------------------------------------------------


@dg.op
def register_secrets(
    context: dg.OpExecutionContext, config: TenantRef, stack: StackResources
) -> str:
    """Generate the tenant's secrets once in Vault; write its container secret files; reset its
    Redis ACL user."""
    with tenants.acting_on(stack, config.tenant_id, "provision") as (tenant, _):
        tenants.prepare_secrets(stack, tenant)
    context.log.info(f"secrets ready for {tenant.slug} (Vault {tenant.names.vault_path})")
    return config.tenant_id


@dg.op
def create_database(context: dg.OpExecutionContext, tenant_id: str, stack: StackResources) -> str:
    """Schema + role in the shared database, or database + role for a dedicated tenant, copied
    from the n8n version's pre-migrated template (built once, on first use)."""
    with tenants.acting_on(stack, tenant_id, "provision") as (tenant, _):
        migrated = tenants.prepare_database(stack, tenant, context.log.info)
    names = tenant.names
    context.log.info(
        f"database {names.db_name}, schema {names.db_schema}, role {names.db_role}"
        f" ({'migrated' if migrated else 'empty: n8n migrates it on first boot'})"
    )
    return tenant_id


@dg.op
def start_stack(
    context: dg.OpExecutionContext, tenant_id: str, stack: StackResources, n8n: N8nResource
) -> str:
    """Start main (routed by Traefik once healthy) and the workers together on the migrated
    schema, and wait until all are healthy and main answers through Traefik."""
    with tenants.acting_on(stack, tenant_id, "provision") as (tenant, _):
        changes = tenants.start(stack, tenant, context.log.info)
        host = tenant.names.host(stack.platform.base_domain)
        seconds = n8n.wait_ready(host, stack.platform.ready_timeout_s)
    context.log.info(
        f"main and {tenant.workers} worker(s) healthy, main ready through Traefik"
        f" ({seconds:.1f} s after healthy); {changes or 'no change'}"
    )
    return tenant_id


@dg.op
def bootstrap_api_key(
    context: dg.OpExecutionContext, tenant_id: str, stack: StackResources, n8n: N8nResource
) -> str:
    """Mint the control plane's n8n API key as the owner and keep it in Vault (never logged)."""
    with tenants.acting_on(stack, tenant_id, "provision") as (tenant, _):
        host = tenant.names.host(stack.platform.base_domain)
        secrets = stack.vault.read(tenant.names.vault_path) or {}
        if secrets.get("n8n_api_key") and n8n.api_key_works(host, secrets["n8n_api_key"]):
            context.log.info("the stored n8n API key still works")
            return tenant_id
        key = n8n.create_api_key(host, secrets["owner_email"], secrets["owner_password"])
        stack.vault.merge(tenant.names.vault_path, {"n8n_api_key": key})
    context.log.info("n8n API key created and stored in Vault")
    return tenant_id


@dg.op
def activate(context: dg.OpExecutionContext, tenant_id: str, stack: StackResources) -> None:
    with tenants.acting_on(stack, tenant_id, "provision") as (tenant, _):
        tenants.set_status(stack, tenant, status="active", last_error=None)
    context.log.info("tenant active")


@dg.job(tags={KIND_TAG: "tenant"}, hooks={mark_failed}, executor_def=dg.in_process_executor)
def provision_tenant() -> None:
    """Create a tenant's secrets, database, n8n stack and route, then mark it active."""
    activate(bootstrap_api_key(start_stack(create_database(register_secrets()))))


# Scale ---------------------------------------------------------------------------------------


@dg.op
def apply_scale(context: dg.OpExecutionContext, config: ScaleRequest, stack: StackResources) -> str:
    """Record the new plan, resources and worker count (validated by the API), then converge. A
    suspended tenant's change is recorded and applied when it resumes; the autoscaler's own
    runs leave a tenant that is no longer serving alone."""
    event = context.run.tags.get(AUTOSCALING_EVENT_TAG)
    with tenants.acting_on(stack, config.tenant_id, "scale") as (tenant, allowed):
        if event is not None:
            with stack.catalog.begin() as connection:
                autoscaling_catalog.link_run(connection, event, context.run_id)
            allowed = autoscale_verdict(tenant.status)
        if allowed == "skip":
            context.log.info(f"{tenant.slug} is {tenant.status}: the autoscaler leaves it alone")
            return config.tenant_id
        _record_scale(stack, tenant, config)
        if allowed == "record":
            context.log.info(f"{tenant.slug} is {tenant.status}: recorded, applied when it resumes")
            return config.tenant_id
        tenant = tenants.load(stack, config.tenant_id)
        if config.plan:
            tenants.apply_role_limits(stack, tenant)
        changes = tenants.converge(stack, tenant, context.log.info, roles={"main", "worker"})
        tenants.set_status(stack, tenant, last_error=None)
    context.log.info(f"scaled: {changes or 'no change'}")
    return config.tenant_id


def _record_scale(stack: StackResources, tenant: catalog.Tenant, config: ScaleRequest) -> None:
    with stack.catalog.begin() as connection:
        if config.plan and config.plan != tenant.plan:
            limits = catalog.plan_limits(connection, config.plan)
            if limits is None:
                raise ValueError(f"unknown plan {config.plan!r}")
            catalog.set_quota(connection, tenant.id, "plan", limits)
            catalog.update_tenant(connection, tenant.id, plan=config.plan)
        if config.cpu is not None or config.memory_mb is not None:
            catalog.set_quota(
                connection, tenant.id, "manual", {"cpu": config.cpu, "memory_mb": config.memory_mb}
            )
        if config.workers is not None:
            catalog.update_tenant(connection, tenant.id, workers=config.workers)


@dg.job(tags={KIND_TAG: "tenant"}, hooks={mark_failed}, executor_def=dg.in_process_executor)
def scale_tenant() -> None:
    """Change a tenant's plan, CPU/memory and number of workers; removed workers drain first."""
    apply_scale()


# Suspend, resume, delete ---------------------------------------------------------------------


@dg.op
def stop_stack(context: dg.OpExecutionContext, config: TenantRef, stack: StackResources) -> None:
    """Stop every container gracefully; data, secrets and the catalog entry stay."""
    with tenants.acting_on(stack, config.tenant_id, "suspend") as (tenant, _):
        # Again on a suspended tenant: the operator takes it over (enforcement never resumes
        # an operator's suspension), and anything started since is stopped.
        tenants.suspend(stack, tenant, OPERATOR, context.log.info)


@dg.job(tags={KIND_TAG: "tenant"}, hooks={mark_failed}, executor_def=dg.in_process_executor)
def suspend_tenant() -> None:
    """Stop a tenant's n8n (its route disappears with it); nothing is deleted."""
    stop_stack()


@dg.op
def restart_stack(context: dg.OpExecutionContext, config: TenantRef, stack: StackResources) -> None:
    """Start the stack again and clear the suspension, whoever suspended it."""
    with tenants.acting_on(stack, config.tenant_id, "resume") as (tenant, allowed):
        if allowed == "skip":
            context.log.info(f"{tenant.slug} is already {tenant.status}")
            return
        tenants.resume(stack, tenant, context.log.info)


@dg.job(tags={KIND_TAG: "tenant"}, hooks={mark_failed}, executor_def=dg.in_process_executor)
def resume_tenant() -> None:
    """Start a suspended tenant's n8n again, with its data."""
    restart_stack()


@dg.op
def remove_tenant(
    context: dg.OpExecutionContext, config: DeleteRequest, stack: StackResources
) -> None:
    """Remove containers, network and route; with `purge`, also the database, queue and
    secrets. Without it the data stays, so the tenant can be restored."""
    with tenants.acting_on(stack, config.tenant_id, "delete") as (tenant, _):
        tenants.set_status(stack, tenant, status="deleting")
        tenants.remove_all(stack, tenant, context.log.info)
        if not config.purge:  # kept data: its credentials are turned off, not dropped
            tenants.set_access(stack, tenant, enabled=False)
        stack.secret_files.remove(tenant.slug)
        if config.purge:
            stack.tenant_db.drop(tenant.names)
            stack.redis.drop_tenant(tenant.names.redis_user, tenant.names.redis_prefix)
            stack.vault.destroy(tenant.names.vault_path)
            until = tenants.expire_backups_of_purged(stack, tenant)
            context.log.info(f"purged database, queue keys and secrets; backups go at {until}")
        tenants.set_status(stack, tenant, status="deleted", deleted_at=sa.func.now())


@dg.job(tags={KIND_TAG: "tenant"}, hooks={mark_failed}, executor_def=dg.in_process_executor)
def delete_tenant() -> None:
    """Take a tenant off the platform (data kept unless `purge`)."""
    remove_tenant()


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(
        jobs=[provision_tenant, scale_tenant, suspend_tenant, resume_tenant, delete_tenant]
    )
