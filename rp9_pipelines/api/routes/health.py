import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from rp9_pipelines.api.deps import EngineDep

router = APIRouter(tags=["health"])


class Live(BaseModel):
    status: str = "ok"


class Ready(BaseModel):
    status: str = "ok"
    catalog_revision: str | None = Field(description="the catalog's Alembic revision")


class NotReady(BaseModel):
    """Not an error of the caller's: the probe's answer while the catalog does not answer."""

    status: str = "error"
    catalog: str = Field(description="the catalog's error, e.g. OperationalError")


@router.get("/healthz")
def liveness() -> Live:
    """The process answers; no dependency is checked."""
    return Live()


@router.get("/readyz", response_model=Ready, responses={503: {"model": NotReady}})
def readiness(engine: EngineDep) -> Ready | JSONResponse:
    """Ready when the platform catalog answers and its schema is migrated."""
    try:
        with engine.connect() as connection:
            revision = connection.execute(
                sa.text("SELECT version_num FROM alembic_version")
            ).scalar()
    except sa.exc.SQLAlchemyError as error:
        body = NotReady(catalog=type(error).__name__)
        return JSONResponse(body.model_dump(), status_code=503)
    return Ready(catalog_revision=revision)
