"""The internal API: authenticates callers and launches Dagster runs."""

import contextlib
from collections.abc import AsyncIterator

import sqlalchemy as sa
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from rp9_pipelines.api.errors import (
    ApiError,
    api_error_handler,
    data_error_handler,
    http_error_handler,
    internal_error_handler,
    refused_handler,
    validation_error_handler,
)
from rp9_pipelines.api.limits import RequestLimits
from rp9_pipelines.api.routes import (
    backups,
    billing,
    edge_hold,
    enforcement,
    health,
    metrics,
    platform,
    promotions,
    restore_drills,
    runs,
    tenant_fallback,
    tenants,
    upgrades,
)
from rp9_pipelines.domain.routing import FALLBACK_PATH, HOLD_PATH
from rp9_pipelines.domain.tenants import InvalidRequest
from rp9_pipelines.observability.api_metrics import RequestMetrics, exposition
from rp9_pipelines.services.tenants import Conflict
from rp9_pipelines.settings import get_settings


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    # While the API runs, Traefik sends tenant addresses no container serves to its fallback
    # route (a suspended tenant's visitors get a 503 page, not Traefik's 404).
    async with tenant_fallback.published(get_settings()):
        yield


def create_app() -> FastAPI:
    app = FastAPI(title="rp9 control plane", version="0.1.0", lifespan=lifespan)
    app.add_exception_handler(ApiError, api_error_handler)
    app.add_exception_handler(InvalidRequest, refused_handler)
    app.add_exception_handler(Conflict, refused_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(sa.exc.DataError, data_error_handler)
    app.add_exception_handler(Exception, internal_error_handler)
    # Before routing: oversized bodies and control characters never reach a route.
    app.add_middleware(
        RequestLimits, exempt=frozenset({FALLBACK_PATH}), exempt_prefixes=(HOLD_PATH + "/",)
    )
    # Outermost: every answer is counted, the limits' refusals too.
    app.add_middleware(RequestMetrics)
    app.add_route("/metrics", exposition, include_in_schema=False)
    app.include_router(health.router)
    app.include_router(tenants.router)
    app.include_router(runs.router)
    app.include_router(metrics.router)
    app.include_router(backups.router)
    app.include_router(restore_drills.router)
    app.include_router(billing.router)
    app.include_router(enforcement.router)
    app.include_router(platform.router)
    app.include_router(promotions.router)
    app.include_router(upgrades.router)
    app.include_router(tenant_fallback.router)
    app.include_router(edge_hold.router)
    return app


app = create_app()
