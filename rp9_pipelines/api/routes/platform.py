"""The platform's own recovery: its backups (catalog, Dagster storage, sealed secrets) and its
disaster-recovery drills, read and started on demand (schedules take the backups)."""

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from rp9_pipelines import launches
from rp9_pipelines.api.deps import DagsterDep, EngineDep, IdempotencyDep, require_caller
from rp9_pipelines.api.errors import LAUNCH_ERRORS, ApiError, errors
from rp9_pipelines.catalog import platform_recovery as catalog
from rp9_pipelines.catalog.tables import SLUG_PATTERN

router = APIRouter(tags=["platform"], dependencies=[Depends(require_caller)], responses=errors(401))


class DrDrillRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: list[Annotated[str, Field(pattern=SLUG_PATTERN)]] | None = Field(
        default=None,
        max_length=200,
        description="slugs to recover (a partial drill); default: every active tenant",
    )


class PlatformBackupRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str = Field(default="on_demand", pattern="^(on_demand|daily|weekly)$")


class Started(BaseModel):
    run_id: str
    drill_id: str | None = None


class PlatformBackup(BaseModel):
    id: str
    set_id: str
    component: str = Field(description="catalog, dagster, secrets")
    kind: str
    status: str = Field(description="running, ok, failed, expired")
    bucket: str
    key: str
    size_bytes: int | None
    sha256: str | None
    manifest: Any
    started_at: str | None
    finished_at: str | None
    expires_at: str | None
    error: str | None


class PlatformBackups(BaseModel):
    platform_backups: list[PlatformBackup]


class DrDrill(BaseModel):
    id: str
    status: str = Field(description="running, passed, failed")
    set_id: str | None
    run_id: str | None
    started_at: str | None
    finished_at: str | None
    rto_seconds: float | None = Field(description="drill start to the last tenant's canary")
    rpo_seconds: float | None = Field(description="age of the oldest backup restored")
    tenants: Any
    checks: Any
    error: str | None


class DrDrills(BaseModel):
    dr_drills: list[DrDrill]


@router.get("/platform/backups", responses=errors(422))
def list_backups(
    engine: EngineDep, limit: Annotated[int, Query(ge=1, le=300)] = 60
) -> PlatformBackups:
    """The platform's backups, newest first, one row per part of each set."""
    with engine.begin() as connection:
        rows = catalog.list_backups(connection, limit)
    return PlatformBackups(platform_backups=[PlatformBackup(**row) for row in rows])


@router.post(
    "/platform/backups",
    status_code=202,
    response_model=Started,
    responses=errors(422, *LAUNCH_ERRORS),
)
def start_backup(
    body: PlatformBackupRequest, dagster: DagsterDep, idempotency: IdempotencyDep
) -> JSONResponse:
    """Back the platform up now (catalog, Dagster storage, sealed secrets) → 202 with the run."""
    with idempotency.slot() as slot:
        if slot.replay is not None:
            return slot.replay
        run_id = dagster.launch(launches.platform_backup(body.kind, launches.API))
        return slot.answer(Started(run_id=run_id))


@router.get("/platform/dr-drills", responses=errors(422))
def list_dr_drills(engine: EngineDep, limit: Annotated[int, Query(ge=1, le=200)] = 20) -> DrDrills:
    """The platform DR drills, newest first: status, RTO, RPO, every tenant and check."""
    with engine.begin() as connection:
        rows = catalog.list_drills(connection, limit)
    return DrDrills(dr_drills=[DrDrill(**row) for row in rows])


@router.get("/platform/dr-drills/{drill_id}", responses=errors(404, 422))
def get_dr_drill(drill_id: uuid.UUID, engine: EngineDep) -> DrDrill:
    with engine.begin() as connection:
        row = catalog.get_drill(connection, drill_id)
    if row is None:
        raise ApiError(404, "dr_drill_not_found", f"no platform DR drill {drill_id}")
    return DrDrill(**row)


@router.post(
    "/platform/dr-drills",
    status_code=202,
    response_model=Started,
    responses=errors(409, 422, *LAUNCH_ERRORS),
)
def start_dr_drill(
    body: DrDrillRequest, engine: EngineDep, dagster: DagsterDep, idempotency: IdempotencyDep
) -> JSONResponse:
    """Rebuild the platform from S3 alone in a scratch environment and prove every active
    tenant → 202 with the run and the drill's id (`GET /platform/dr-drills/{id}`). One at a
    time: 409 `dr_drill_running` while another runs."""
    with idempotency.slot() as slot:
        if slot.replay is not None:
            return slot.replay
        with engine.begin() as connection:
            if catalog.running_drills(connection):
                raise ApiError(409, "dr_drill_running", "a platform DR drill is already running")
        drill_id = str(uuid.uuid4())
        launch = launches.platform_dr_drill(drill_id, launches.API, body.tenants)
        run_id = dagster.launch(launch)
        return slot.answer(Started(run_id=run_id, drill_id=drill_id))
