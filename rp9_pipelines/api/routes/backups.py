"""A tenant's backups and restore drills: read them, and trigger a drill on demand.

(`POST /tenants/{id}/backup` is a tenant action, beside scale and suspend, in `tenants.py`.)
"""

import datetime as dt
import random
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from rp9_pipelines import launches
from rp9_pipelines.api.deps import DagsterDep, EngineDep, IdempotencyDep, TenantDep, require_caller
from rp9_pipelines.api.errors import LAUNCH_ERRORS, ApiError, errors
from rp9_pipelines.catalog import backups as catalog
from rp9_pipelines.domain.backups import NoRestorableBackup, choose_drill_backup

router = APIRouter(tags=["backups"], dependencies=[Depends(require_caller)], responses=errors(401))

DRILL_STATES = frozenset({"active", "suspended"})
NOT_RESTORABLE_STATUS = {
    "backup_not_found": 404,
    "backup_not_restorable": 409,
    "no_recent_backup": 409,
}


class DrillRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backup_id: uuid.UUID | None = Field(
        default=None, description="default: a random ok backup of the last 30 days"
    )


class DrillStarted(BaseModel):
    tenant_id: str
    slug: str
    run_id: str


class Backup(BaseModel):
    id: str
    tenant_id: str
    kind: str = Field(description="daily, weekly, on_demand, pre_promotion, pre_upgrade")
    status: str = Field(description="running, ok, failed, expired")
    bucket: str
    key: str
    size_bytes: int | None
    sha256: str | None
    manifest: Any
    run_id: str | None
    started_at: str | None
    finished_at: str | None
    expires_at: str | None
    error: str | None


class Backups(BaseModel):
    tenant_id: str
    backups: list[Backup]


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


@router.get("/tenants/{ref}/backups", responses=errors(404, 422))
def list_backups(
    tenant: TenantDep, engine: EngineDep, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> Backups:
    """The tenant's backups, newest first: kind, status, object, size, sha256, manifest."""
    with engine.connect() as connection:
        rows = catalog.list_backups(connection, tenant.id, limit)
    return Backups(
        tenant_id=str(tenant.id), backups=[Backup(**catalog.public_backup(r)) for r in rows]
    )


@router.get("/tenants/{ref}/restore-drills", responses=errors(404, 422))
def list_drills(
    tenant: TenantDep, engine: EngineDep, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> Drills:
    """The tenant's restore drills, newest first: status, RTO and every check."""
    with engine.connect() as connection:
        rows = catalog.list_drills(connection, tenant.id, limit)
    return Drills(
        tenant_id=str(tenant.id), restore_drills=[Drill(**catalog.public_drill(r)) for r in rows]
    )


@router.post(
    "/tenants/{ref}/restore-drills",
    status_code=202,
    response_model=DrillStarted,
    responses=errors(404, 409, 422, *LAUNCH_ERRORS),
)
def start_drill(
    body: DrillRequest,
    tenant: TenantDep,
    engine: EngineDep,
    dagster: DagsterDep,
    idempotency: IdempotencyDep,
) -> JSONResponse:
    """Restore a backup (the given one, or a random recent `ok` one) into a sandbox and check
    it → 202 with the run id; the result lands in `GET /tenants/{id}/restore-drills`."""
    with idempotency.slot(f"POST /tenants/{tenant.id}/restore-drills") as slot:
        if slot.replay is not None:
            return slot.replay
        if tenant.status not in DRILL_STATES:
            raise ApiError(409, "invalid_state", f"cannot drill a tenant that is {tenant.status}")
        with engine.connect() as connection:
            records = catalog.backup_records(connection, tenant.id, include_expired=True)
        try:  # refuse now what the run would fail on
            now = dt.datetime.now(dt.UTC)
            choose_drill_backup(records, tenant.id, now, random.SystemRandom(), body.backup_id)
        except NoRestorableBackup as error:
            raise ApiError(NOT_RESTORABLE_STATUS[error.code], error.code, str(error)) from None
        backup_id = None if body.backup_id is None else str(body.backup_id)
        run = launches.restore_drill(str(tenant.id), tenant.slug, launches.API, backup_id)
        run_id = dagster.launch(run)
        return slot.answer(DrillStarted(tenant_id=str(tenant.id), slug=tenant.slug, run_id=run_id))
