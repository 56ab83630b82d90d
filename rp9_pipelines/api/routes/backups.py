"""A tenant's backups and restore drills: read them, and trigger a drill on demand.

(`POST /tenants/{id}/backup` is a tenant action, beside scale and suspend, in `tenants.py`.)
"""

import datetime as dt
import random
import uuid
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from rp9_pipelines.api.deps import DagsterDep, EngineDep, RawBodyDep, require_caller
from rp9_pipelines.api.errors import ApiError
from rp9_pipelines.api.idempotency import idempotent, replayed
from rp9_pipelines.catalog import backups as catalog
from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.domain.backups import NoRestorableBackup, choose_drill_backup
from rp9_pipelines.launches import DRILL_TENANT_TAG, TENANT_ID_TAG

router = APIRouter(tags=["backups"], dependencies=[Depends(require_caller)])

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


def _tenant(connection: sa.Connection, ref: str) -> Tenant:
    tenant = tenant_catalog.get_tenant(connection, ref)
    if tenant is None:
        raise ApiError(404, "tenant_not_found", f"no tenant {ref!r}")
    return tenant


@router.get("/tenants/{ref}/backups")
def list_backups(
    ref: str, engine: EngineDep, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> dict[str, Any]:
    """The tenant's backups, newest first: kind, status, object, size, sha256, manifest."""
    with engine.connect() as connection:
        tenant = _tenant(connection, ref)
        rows = catalog.list_backups(connection, tenant.id, limit)
    return {"tenant_id": str(tenant.id), "backups": [catalog.public_backup(r) for r in rows]}


@router.get("/tenants/{ref}/restore-drills")
def list_drills(
    ref: str, engine: EngineDep, limit: Annotated[int, Query(ge=1, le=200)] = 20
) -> dict[str, Any]:
    """The tenant's restore drills, newest first: status, RTO and every check."""
    with engine.connect() as connection:
        tenant = _tenant(connection, ref)
        rows = catalog.list_drills(connection, tenant.id, limit)
    return {"tenant_id": str(tenant.id), "restore_drills": [catalog.public_drill(r) for r in rows]}


@router.post("/tenants/{ref}/restore-drills", status_code=202)
def start_drill(
    ref: str,
    body: DrillRequest,
    raw: RawBodyDep,
    engine: EngineDep,
    dagster: DagsterDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONResponse:
    """Restore a backup (the given one, or a random recent `ok` one) into a sandbox and check
    it → 202 with the run id; the result lands in `GET /tenants/{id}/restore-drills`."""
    with engine.connect() as connection:
        tenant = _tenant(connection, ref)
    route = f"POST /tenants/{tenant.id}/restore-drills"
    with idempotent(engine, idempotency_key, route, raw) as slot:
        if slot.replay:
            return replayed(slot.replay)
        if tenant.status not in DRILL_STATES:
            raise ApiError(409, "invalid_state", f"cannot drill a tenant that is {tenant.status}")
        with engine.connect() as connection:
            records = catalog.backup_records(connection, tenant.id, include_expired=True)
        try:  # refuse now what the run would fail on
            now = dt.datetime.now(dt.UTC)
            choose_drill_backup(records, tenant.id, now, random.SystemRandom(), body.backup_id)
        except NoRestorableBackup as error:
            raise ApiError(NOT_RESTORABLE_STATUS[error.code], error.code, str(error)) from None
        config: dict[str, Any] = {"tenant_id": str(tenant.id)}
        if body.backup_id is not None:
            config["backup_id"] = str(body.backup_id)
        run_id = dagster.launch(
            "restore_drill",
            {"ops": {"run_restore_drill": {"config": config}}},
            {
                DRILL_TENANT_TAG: tenant.slug,
                TENANT_ID_TAG: str(tenant.id),
                "rp9/requested_by": "api",
            },
        )
        result = {"tenant_id": str(tenant.id), "slug": tenant.slug, "run_id": run_id}
        slot.store(202, result)
    return JSONResponse(result, status_code=202)
