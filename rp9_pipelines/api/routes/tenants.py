"""Tenants: create and read them, and change them (scale, provision again, suspend, resume,
back up, delete). Every change is a Dagster run: 202 with its id, `GET /runs/{id}` follows it."""

from collections.abc import Callable
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from rp9_pipelines import launches
from rp9_pipelines.api.dagster_client import DagsterClient
from rp9_pipelines.api.deps import (
    DagsterDep,
    EngineDep,
    IdempotencyDep,
    QueuesDep,
    SettingsDep,
    TenantDep,
    TenantsDep,
    require_caller,
)
from rp9_pipelines.api.errors import LAUNCH_ERRORS, errors
from rp9_pipelines.api.idempotency import Idempotency
from rp9_pipelines.catalog import tenants as catalog
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.domain.tenants import Tier
from rp9_pipelines.services import tenants as service

router = APIRouter(tags=["tenants"], dependencies=[Depends(require_caller)], responses=errors(401))

# What a change to an existing tenant can answer besides 202.
CHANGE_ERRORS = errors(404, 409, 422, *LAUNCH_ERRORS)
# Text without control characters: a NUL, which Postgres refuses, is a 422 here.
Text = Annotated[str, StringConstraints(pattern=r"^[^\x00-\x1f\x7f]*$")]


class CreateTenant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slug: Text = Field(description="DNS label, 3-40 characters of a-z, 0-9 and hyphens")
    name: Text = Field(min_length=1, max_length=200)
    plan: Text = Field(default="starter", max_length=40)
    tier: Tier = "shared"
    workers: int | None = Field(default=None, description="default: the plan's minimum")
    custom_domain: Text | None = Field(default=None, max_length=253)
    region: Text = Field(default="eu-1", max_length=40)
    requires_dedicated: bool = Field(default=False, description="compliance: own database")


class ScaleTenant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: Text | None = Field(default=None, max_length=40)
    cpu: float | None = None
    memory_mb: int | None = None
    workers: int | None = None
    force: bool = Field(
        default=False,
        description="scale down even while the executions in flight need the workers it removes",
    )


class TenantCreated(BaseModel):
    tenant_id: str
    slug: str
    status: str
    run_id: str = Field(description="the provisioning run")
    hosts: list[str] = Field(description="where the tenant's n8n answers once it is active")


class Launched(BaseModel):
    """A change accepted: the run that carries it out."""

    tenant_id: str
    slug: str
    run_id: str


class TenantPublic(BaseModel):
    id: str
    slug: str
    name: str
    plan: str
    tier: Tier
    status: str = Field(description="provisioning, active, suspended, failed, deleted, …")
    region: str
    custom_domain: str | None
    n8n_version: str
    workers: int
    last_error: str | None
    created_at: str = Field(description="ISO 8601")
    updated_at: str = Field(description="ISO 8601")


class TenantsPublic(BaseModel):
    tenants: list[TenantPublic]


class LimitsPublic(BaseModel):
    """The tenant's effective limits: its plan's, overridden by Stripe, then by hand."""

    executions_per_month: int
    concurrency: int
    cpu: float
    memory_mb: int
    min_workers: int
    max_workers: int
    overage_allowed: bool


class InstancePublic(BaseModel):
    name: str
    role: str
    color: str
    state: str
    cpu: float
    memory_mb: int
    # The Swarm node that runs it (null on the Docker runtime: this host).
    node: str | None = None


class TenantDetail(TenantPublic):
    limits: LimitsPublic
    instances: list[InstancePublic]


@router.post(
    "/tenants",
    status_code=202,
    response_model=TenantCreated,
    responses=errors(409, 422, *LAUNCH_ERRORS),
)
def create_tenant(
    body: CreateTenant,
    tenants: TenantsDep,
    dagster: DagsterDep,
    idempotency: IdempotencyDep,
    settings: SettingsDep,
) -> JSONResponse:
    """Create a tenant: catalog row, then a provisioning run. 202 with the tenant and run ids."""
    with idempotency.slot() as slot:
        if slot.replay is not None:
            return slot.replay
        new = service.NewTenant(**body.model_dump())
        tenant, run_id = service.create_tenant(
            tenants, dagster.launch, new, settings.base_domain, settings.n8n_version
        )
        hosts = tenant.names.hosts(settings.base_domain, tenant.custom_domain)
        return slot.answer(
            TenantCreated(
                tenant_id=str(tenant.id),
                slug=tenant.slug,
                status=tenant.status,
                run_id=run_id,
                hosts=hosts,
            )
        )


@router.get("/tenants", responses=errors(422))
def list_tenants(
    engine: EngineDep, include_deleted: Annotated[bool, Query()] = False
) -> TenantsPublic:
    with engine.connect() as connection:
        tenants = catalog.list_tenants(connection, include_deleted)
    return TenantsPublic(tenants=[TenantPublic(**t.public()) for t in tenants])


@router.get("/tenants/{ref}", responses=errors(404, 422))
def get_tenant(tenant: TenantDep, engine: EngineDep) -> TenantDetail:
    """A tenant by UUID or slug, with its effective limits and its containers."""
    with engine.connect() as connection:
        limits = catalog.limits_for(connection, tenant.id)
        instances = catalog.live_instances(connection, tenant.id)
    return TenantDetail(
        **tenant.public(),
        limits=LimitsPublic(**limits.__dict__),
        instances=[
            InstancePublic(
                name=i["container_name"],
                role=i["role"],
                color=i["color"],
                state=i["state"],
                cpu=float(i["cpu_limit"]),
                memory_mb=i["memory_limit_mb"],
                node=i["node"],
            )
            for i in instances
        ],
    )


def _change(
    action: service.Action,
    tenant: Tenant,
    run: launches.Launch,
    dagster: DagsterClient,
    idempotency: Idempotency,
    check: Callable[[], None] | None = None,
) -> JSONResponse:
    with idempotency.slot() as slot:
        if slot.replay is not None:
            return slot.replay
        run_id = service.change_tenant(dagster.launch, tenant, action, run, check)
        return slot.answer(Launched(tenant_id=str(tenant.id), slug=tenant.slug, run_id=run_id))


@router.post(
    "/tenants/{ref}/scale", status_code=202, response_model=Launched, responses=CHANGE_ERRORS
)
def scale_tenant(
    body: ScaleTenant,
    tenant: TenantDep,
    tenants: TenantsDep,
    queues: QueuesDep,
    dagster: DagsterDep,
    idempotency: IdempotencyDep,
) -> JSONResponse:
    """Change plan, CPU/memory or the number of workers (within the plan's range). A
    scale-down while the tenant's running and waiting executions fill more than the remaining
    workers' slots is refused (409 `capacity_in_use`) unless `force`."""
    changes = body.model_dump(exclude_none=True, exclude={"force"})
    run = launches.tenant_job("scale_tenant", str(tenant.id), tenant.slug, **changes)
    check = partial(
        service.check_scale, tenants, tenant, service.Scale(**changes), queues, body.force
    )
    return _change(service.SCALE, tenant, run, dagster, idempotency, check)


@router.post(
    "/tenants/{ref}/provision", status_code=202, response_model=Launched, responses=CHANGE_ERRORS
)
def provision_tenant(
    tenant: TenantDep, dagster: DagsterDep, idempotency: IdempotencyDep
) -> JSONResponse:
    """Run provisioning again: for a tenant whose run failed or was interrupted, or to repair an
    active tenant whose containers were removed or changed by hand; every step converges, so it
    finishes the work without a second stack."""
    run = launches.tenant_job("provision_tenant", str(tenant.id), tenant.slug)
    return _change(service.PROVISION, tenant, run, dagster, idempotency)


@router.post(
    "/tenants/{ref}/suspend", status_code=202, response_model=Launched, responses=CHANGE_ERRORS
)
def suspend_tenant(
    tenant: TenantDep, dagster: DagsterDep, idempotency: IdempotencyDep
) -> JSONResponse:
    """Stop the tenant's n8n (its route goes with it); nothing is deleted."""
    run = launches.tenant_job("suspend_tenant", str(tenant.id), tenant.slug)
    return _change(service.SUSPEND, tenant, run, dagster, idempotency)


@router.post(
    "/tenants/{ref}/resume", status_code=202, response_model=Launched, responses=CHANGE_ERRORS
)
def resume_tenant(
    tenant: TenantDep, dagster: DagsterDep, idempotency: IdempotencyDep
) -> JSONResponse:
    """Start a suspended tenant's n8n again, with its data."""
    run = launches.tenant_job("resume_tenant", str(tenant.id), tenant.slug)
    return _change(service.RESUME, tenant, run, dagster, idempotency)


@router.post(
    "/tenants/{ref}/backup", status_code=202, response_model=Launched, responses=CHANGE_ERRORS
)
def backup_tenant(
    tenant: TenantDep, dagster: DagsterDep, idempotency: IdempotencyDep
) -> JSONResponse:
    """Back up the tenant's data to S3 now (recorded as `on_demand`, verified before `ok`)."""
    run = launches.backup(str(tenant.id), tenant.slug, "on_demand", launches.API)
    return _change(service.BACKUP, tenant, run, dagster, idempotency)


@router.delete("/tenants/{ref}", status_code=202, response_model=Launched, responses=CHANGE_ERRORS)
def delete_tenant(
    tenant: TenantDep,
    dagster: DagsterDep,
    idempotency: IdempotencyDep,
    purge: Annotated[bool, Query(description="also delete the tenant's data")] = False,
) -> JSONResponse:
    """Remove the tenant's stack and route; its data stays unless `purge=true`."""
    run = launches.tenant_job("delete_tenant", str(tenant.id), tenant.slug, purge=purge)
    return _change(service.DELETE, tenant, run, dagster, idempotency)
