from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from rp9_pipelines.api.dagster_client import DagsterClient
from rp9_pipelines.api.deps import (
    DagsterDep,
    EngineDep,
    RawBodyDep,
    SettingsDep,
    require_caller,
)
from rp9_pipelines.api.errors import ApiError
from rp9_pipelines.api.idempotency import idempotent, replayed
from rp9_pipelines.catalog import tenants as catalog
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.domain.tenants import (
    InvalidRequest,
    check_custom_domain,
    check_resources,
    check_slug,
    check_workers,
    effective_limits,
)
from rp9_pipelines.launches import TENANT_ID_TAG, TENANT_TAG

router = APIRouter(tags=["tenants"], dependencies=[Depends(require_caller)])

IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


class CreateTenant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slug: str = Field(description="DNS label, 3-40 characters of a-z, 0-9 and hyphens")
    name: str = Field(min_length=1, max_length=200)
    plan: str = "starter"
    tier: Literal["shared", "dedicated"] = "shared"
    workers: int | None = Field(default=None, description="default: the plan's minimum")
    custom_domain: str | None = None
    region: str = Field(default="eu-1", max_length=40)
    requires_dedicated: bool = Field(default=False, description="compliance: own database")


class ScaleTenant(BaseModel):
    model_config = ConfigDict(extra="forbid")

    plan: str | None = None
    cpu: float | None = None
    memory_mb: int | None = None
    workers: int | None = None


def _invalid(error: InvalidRequest) -> ApiError:
    return ApiError(422, error.code, str(error))


def _tenant_or_404(connection: sa.Connection, ref: str) -> Tenant:
    tenant = catalog.get_tenant(connection, ref)
    if tenant is None:
        raise ApiError(404, "tenant_not_found", f"no tenant {ref!r}")
    return tenant


def _launch(
    dagster: DagsterClient, job: str, tenant: Tenant, op: str, config: dict[str, Any]
) -> str:
    return dagster.launch(
        job,
        {"ops": {op: {"config": {"tenant_id": str(tenant.id), **config}}}},
        {TENANT_TAG: tenant.slug, TENANT_ID_TAG: str(tenant.id), "rp9/requested_by": "api"},
    )


@router.post("/tenants", status_code=202)
def create_tenant(
    body: CreateTenant,
    raw: RawBodyDep,
    engine: EngineDep,
    dagster: DagsterDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Create a tenant: catalog row, then a provisioning run. 202 with the tenant and run ids."""
    with idempotent(engine, idempotency_key, "POST /tenants", raw) as slot:
        if slot.replay:
            return replayed(slot.replay)
        try:
            check_slug(body.slug)
            check_custom_domain(body.custom_domain, settings.base_domain)
        except InvalidRequest as error:
            raise _invalid(error) from None
        if body.requires_dedicated and body.tier != "dedicated":
            raise ApiError(
                422, "compliance_requires_dedicated", "requires_dedicated needs tier 'dedicated'"
            )
        with engine.begin() as connection:
            plan = catalog.plan_limits(connection, body.plan)
            if plan is None:
                raise ApiError(422, "unknown_plan", f"no plan named {body.plan!r}")
            limits = effective_limits({"plan": plan})
            workers = limits.min_workers if body.workers is None else body.workers
            try:
                check_workers(workers, limits, body.plan)
            except InvalidRequest as error:
                raise _invalid(error) from None
            if catalog.slug_taken(connection, body.slug):
                raise ApiError(409, "slug_taken", f"slug {body.slug!r} is already taken")
            if body.custom_domain and catalog.domain_taken(connection, body.custom_domain):
                raise ApiError(409, "domain_taken", f"{body.custom_domain!r} is already routed")
            try:
                tenant_id = catalog.insert_tenant(
                    connection,
                    {
                        "slug": body.slug,
                        "name": body.name,
                        "plan": body.plan,
                        "tier": body.tier,
                        "region": body.region,
                        "custom_domain": body.custom_domain,
                        "workers": workers,
                        "n8n_version": settings.n8n_version,
                        "compliance": {"requires_dedicated": body.requires_dedicated},
                    },
                )
            except sa.exc.IntegrityError:
                raise ApiError(409, "slug_taken", f"slug {body.slug!r} is already taken") from None
            catalog.set_quota(connection, tenant_id, "plan", plan)
            tenant = catalog.get_tenant(connection, tenant_id)
        assert tenant is not None
        try:
            run_id = _launch(dagster, "provision_tenant", tenant, "register_secrets", {})
        except ApiError:
            # No run, no tenant: nothing is left half-created.
            with engine.begin() as connection:
                catalog.forget_tenant(connection, tenant_id)
            raise
        hosts = tenant.names.hosts(settings.base_domain, tenant.custom_domain)
        result = {
            "tenant_id": str(tenant_id),
            "slug": tenant.slug,
            "status": tenant.status,
            "run_id": run_id,
            "hosts": hosts,
        }
        slot.store(202, result)
    return JSONResponse(result, status_code=202)


@router.get("/tenants")
def list_tenants(
    engine: EngineDep, include_deleted: Annotated[bool, Query()] = False
) -> dict[str, Any]:
    with engine.connect() as connection:
        tenants = catalog.list_tenants(connection, include_deleted)
    return {"tenants": [t.public() for t in tenants]}


@router.get("/tenants/{ref}")
def get_tenant(ref: str, engine: EngineDep) -> dict[str, Any]:
    """A tenant by UUID or slug, with its effective limits and its containers."""
    with engine.connect() as connection:
        tenant = _tenant_or_404(connection, ref)
        limits = catalog.limits_for(connection, tenant.id)
        instances = catalog.live_instances(connection, tenant.id)
    return {
        **tenant.public(),
        "limits": limits.__dict__,
        "instances": [
            {
                "name": i["container_name"],
                "role": i["role"],
                "color": i["color"],
                "state": i["state"],
                "cpu": float(i["cpu_limit"]),
                "memory_mb": i["memory_limit_mb"],
            }
            for i in instances
        ],
    }


Validator = Callable[[sa.Connection, Tenant], None]


@dataclass(frozen=True)
class Action:
    """A change to an existing tenant: the states it is allowed from and the job it launches."""

    name: str
    allowed: frozenset[str]
    job: str
    op: str
    summary: str


SCALE = Action(
    "scale",
    frozenset({"active", "failed"}),
    "scale_tenant",
    "apply_scale",
    "Change plan, CPU/memory or the number of workers (within the plan's range).",
)
DELETE = Action(
    "delete",
    frozenset({"provisioning", "active", "suspended", "failed", "deleted"}),
    "delete_tenant",
    "remove_tenant",
    "Remove the tenant's stack and route; its data stays unless `purge=true`.",
)
PLAIN_ACTIONS = [
    Action(
        "provision",
        frozenset({"provisioning", "failed", "active"}),
        "provision_tenant",
        "register_secrets",
        "Run provisioning again: for a tenant whose run failed or was interrupted, or to repair an "
        "active tenant whose containers were removed or changed by hand; every step converges, "
        "so it finishes the work without a second stack.",
    ),
    Action(
        "suspend",
        frozenset({"active", "failed"}),
        "suspend_tenant",
        "stop_stack",
        "Stop the tenant's n8n (its route goes with it); nothing is deleted.",
    ),
    Action(
        "resume",
        frozenset({"suspended", "failed"}),
        "resume_tenant",
        "restart_stack",
        "Start a suspended tenant's n8n again, with its data.",
    ),
    Action(
        "backup",
        frozenset({"active", "suspended"}),
        "backup_tenant",
        "backup_database",
        "Back up the tenant's data to S3 now (recorded as `on_demand`, verified before `ok`).",
    ),
]


def _change(
    ref: str,
    raw: bytes,
    engine: sa.Engine,
    dagster: DagsterClient,
    key: str | None,
    action: Action,
    config: dict[str, Any],
    validate: Validator | None = None,
) -> JSONResponse:
    with engine.connect() as connection:
        tenant = _tenant_or_404(connection, ref)
    with idempotent(engine, key, f"POST /tenants/{tenant.id}/{action.name}", raw) as slot:
        if slot.replay:
            return replayed(slot.replay)
        if tenant.status not in action.allowed:
            raise ApiError(
                409, "invalid_state", f"cannot {action.name} a tenant that is {tenant.status}"
            )
        if validate is not None:
            with engine.connect() as connection:
                validate(connection, tenant)
        run_id = _launch(dagster, action.job, tenant, action.op, config)
        result = {"tenant_id": str(tenant.id), "slug": tenant.slug, "run_id": run_id}
        slot.store(202, result)
    return JSONResponse(result, status_code=202)


@router.post("/tenants/{ref}/scale", status_code=202, summary=SCALE.summary)
def scale_tenant(
    ref: str,
    body: ScaleTenant,
    raw: RawBodyDep,
    engine: EngineDep,
    dagster: DagsterDep,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    def validate(connection: sa.Connection, tenant: Tenant) -> None:
        if body.plan is not None and catalog.plan_limits(connection, body.plan) is None:
            raise ApiError(422, "unknown_plan", f"no plan named {body.plan!r}")
        try:
            check_resources(body.cpu, body.memory_mb)
            if body.workers is not None or body.plan is not None:
                overrides: dict[str, dict[str, object]] = {
                    "plan": catalog.plan_limits(connection, body.plan or tenant.plan) or {}
                }
                check_workers(
                    tenant.workers if body.workers is None else body.workers,
                    effective_limits(overrides),
                    body.plan or tenant.plan,
                )
        except InvalidRequest as error:
            raise _invalid(error) from None
        if body.model_dump(exclude_none=True) == {}:
            raise ApiError(422, "nothing_to_change", "give plan, cpu, memory_mb or workers")

    config = body.model_dump(exclude_none=True)
    return _change(ref, raw, engine, dagster, idempotency_key, SCALE, config, validate)


@router.delete("/tenants/{ref}", status_code=202, summary=DELETE.summary)
def delete_tenant(
    ref: str,
    raw: RawBodyDep,
    engine: EngineDep,
    dagster: DagsterDep,
    purge: Annotated[bool, Query(description="also delete the tenant's data")] = False,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    return _change(ref, raw, engine, dagster, idempotency_key, DELETE, {"purge": purge})


def _plain_route(action: Action) -> Callable[..., JSONResponse]:
    def route(
        ref: str,
        raw: RawBodyDep,
        engine: EngineDep,
        dagster: DagsterDep,
        idempotency_key: IdempotencyKey = None,
    ) -> JSONResponse:
        return _change(ref, raw, engine, dagster, idempotency_key, action, {})

    return route


for _action in PLAIN_ACTIONS:
    router.add_api_route(
        f"/tenants/{{ref}}/{_action.name}",
        _plain_route(_action),
        methods=["POST"],
        status_code=202,
        name=f"{_action.name}_tenant",
        summary=_action.summary,
    )
