from typing import Annotated

from fastapi import APIRouter, Depends, Path
from pydantic import BaseModel, Field

from rp9_pipelines.api.deps import DagsterDep, require_caller
from rp9_pipelines.api.errors import ApiError, errors
from rp9_pipelines.launches import TENANT_TAG

router = APIRouter(tags=["runs"], dependencies=[Depends(require_caller)], responses=errors(401))


class Run(BaseModel):
    run_id: str
    job: str
    status: str = Field(description="QUEUED, STARTED, SUCCESS, FAILURE, CANCELED, …")
    tenant: str | None = Field(description="the slug of the tenant it changes, if any")
    start_time: float | None = Field(description="unix seconds")
    end_time: float | None = Field(description="unix seconds")


@router.get("/runs/{run_id}", responses=errors(404, 422, 502, 503))
def get_run(
    run_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="Dagster's run id")],
    dagster: DagsterDep,
) -> Run:
    """A Dagster run's status (QUEUED, STARTED, SUCCESS, FAILURE, CANCELED, …) and tags."""
    run = dagster.run(run_id)
    if run is None:
        raise ApiError(404, "run_not_found", f"no run {run_id!r}")
    return Run(
        run_id=run.run_id,
        job=run.job,
        status=run.status,
        tenant=run.tags.get(TENANT_TAG),
        start_time=run.start_time,
        end_time=run.end_time,
    )
