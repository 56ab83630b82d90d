"""A tenant's restore drills: read them, and start one on demand (the quarterly schedule starts
the others)."""

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from rp9_pipelines.api.deps import DagsterDep, EngineDep, IdempotencyDep, TenantDep, require_caller
from rp9_pipelines.api.errors import LAUNCH_ERRORS, ApiError, errors
from rp9_pipelines.catalog.restore_drills import public_drill
from rp9_pipelines.domain.restore_drills import NoRestorableBackup
from rp9_pipelines.services import restore_drills as service

router = APIRouter(
    tags=["restore_drills"], dependencies=[Depends(require_caller)], responses=errors(401)
)

NOT_RESTORABLE_STATUS = {
    "backup_not_found": 404,
    "backup_not_restorable": 409,
    "no_recent_backup": 409,
}


def get_drills(engine: EngineDep) -> service.Drills:
    return service.CatalogDrills(engine)


DrillsDep = Annotated[service.Drills, Depends(get_drills)]


class DrillRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backup_id: uuid.UUID | None = Field(
        default=None, description="default: a random ok backup of the last 30 days"
    )


class DrillStarted(BaseModel):
    tenant_id: str
    slug: str
    run_id: str


class Drill(BaseModel):
    id: str
    tenant_id: str
    backup_id: str
    sandbox: str
    status: str = Field(description="running, passed, failed")
    run_id: str | None
    started_at: str | None
    finished_at: str | None
    rto_seconds: float | None
    checks: Any
    error: str | None


class Drills(BaseModel):
    tenant_id: str
    restore_drills: list[Drill]


@router.get("/tenants/{ref}/restore-drills", responses=errors(404, 422))
def list_drills(
    tenant: TenantDep, drills: DrillsDep, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> Drills:
    """The tenant's restore drills, newest first: status, RTO and every check."""
    rows = drills.latest(tenant.id, limit)
    return Drills(tenant_id=str(tenant.id), restore_drills=[Drill(**public_drill(r)) for r in rows])


@router.post(
    "/tenants/{ref}/restore-drills",
    status_code=202,
    response_model=DrillStarted,
    responses=errors(404, 409, 422, *LAUNCH_ERRORS),
)
def start_drill(
    body: DrillRequest,
    tenant: TenantDep,
    drills: DrillsDep,
    dagster: DagsterDep,
    idempotency: IdempotencyDep,
) -> JSONResponse:
    """Restore a backup (the given one, or a random recent `ok` one) into a sandbox and check
    it → 202 with the run id; the result lands in `GET /tenants/{id}/restore-drills`."""
    with idempotency.slot() as slot:
        if slot.replay is not None:
            return slot.replay
        try:
            run_id = service.start_drill(drills, dagster.launch, tenant, body.backup_id)
        except NoRestorableBackup as error:
            raise ApiError(NOT_RESTORABLE_STATUS[error.code], error.code, str(error)) from None
        return slot.answer(DrillStarted(tenant_id=str(tenant.id), slug=tenant.slug, run_id=run_id))
