from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from rp9_pipelines.api.deps import SettingsDep
from rp9_pipelines.settings import sqlalchemy_url

router = APIRouter(tags=["health"])


@router.get("/healthz")
def liveness() -> dict[str, str]:
    """The process answers; no dependency is checked."""
    return {"status": "ok"}


@router.get("/readyz", response_model=None)
def readiness(settings: SettingsDep) -> dict[str, Any] | JSONResponse:
    """Ready when the platform catalog answers and its schema is migrated."""
    engine = sa.create_engine(
        sqlalchemy_url(settings.database_url),
        poolclass=sa.NullPool,
        connect_args={"connect_timeout": 3},
    )
    try:
        with engine.connect() as connection:
            revision = connection.execute(
                sa.text("SELECT version_num FROM alembic_version")
            ).scalar()
    except sa.exc.SQLAlchemyError as error:
        body = {"status": "error", "catalog": type(error).__name__}
        return JSONResponse(body, status_code=503)
    finally:
        engine.dispose()
    return {"status": "ok", "catalog_revision": revision}
