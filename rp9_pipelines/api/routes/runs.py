from typing import Any

from fastapi import APIRouter, Depends

from rp9_pipelines.api.deps import DagsterDep, require_caller
from rp9_pipelines.api.errors import ApiError

router = APIRouter(tags=["runs"], dependencies=[Depends(require_caller)])


@router.get("/runs/{run_id}")
def get_run(run_id: str, dagster: DagsterDep) -> dict[str, Any]:
    """A Dagster run's status (QUEUED, STARTED, SUCCESS, FAILURE, CANCELED, …) and tags."""
    run = dagster.run(run_id)
    if run is None:
        raise ApiError(404, "run_not_found", f"no run {run_id!r}")
    return {
        "run_id": run.run_id,
        "job": run.job,
        "status": run.status,
        "tenant": run.tags.get("rp9/tenant"),
        "start_time": run.start_time,
        "end_time": run.end_time,
    }
