from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from rp9_pipelines.api.deps import EngineDep

router = APIRouter(tags=["health"])


@router.get("/healthz")
def liveness() -> dict[str, str]:
    """The process answers; no dependency is checked."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
def readiness(engine: EngineDep) -> dict[str, Any] | JSONResponse:
    """Ready when the platform catalog answers and its schema is migrated."""
    try:
        with engine.connect() as connection:
            revision = connection.execute(
                sa.text("SELECT version_num FROM alembic_version")
            ).scalar()
    except sa.exc.SQLAlchemyError as error:
        return JSONResponse({"status": "error", "catalog": type(error).__name__}, status_code=503)
    return {"status": "ok", "catalog_revision": revision}
