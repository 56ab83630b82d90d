"""The internal API: authenticates callers and launches Dagster runs."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

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
from rp9_pipelines.catalog.tenants import set_instance_nodes
from rp9_pipelines.domain.routing import FALLBACK_PATH, HOLD_PATH
from rp9_pipelines.domain.tenants import InvalidRequest
from rp9_pipelines.observability.api_metrics import RequestMetrics, exposition
from rp9_pipelines.observability.targets import SWARM_TARGETS_FILE
from rp9_pipelines.resources.swarm_runtime import SwarmRuntimeResource
from rp9_pipelines.resources.tenant_runtime import runtime_from_settings
from rp9_pipelines.resources.traefik_dynamic import TraefikDynamicResource
from rp9_pipelines.services import routes
from rp9_pipelines.services.tenants import Conflict
from rp9_pipelines.settings import Settings, get_settings, sqlalchemy_url


@contextlib.asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    # While the API runs, Traefik sends tenant addresses no container serves to its fallback
    # route (a suspended tenant's visitors get a 503 page, not Traefik's 404).
    settings = get_settings()
    async with tenant_fallback.published(settings), following(settings):
        yield


@contextlib.asynccontextmanager
async def following(settings: Settings) -> AsyncIterator[None]:
    """On a Swarm, the routes to its tasks follow them (`services/routes.py`) while the API
    runs: Traefik's Docker provider sees only this host's containers (and Prometheus's Docker
    discovery too: the tasks to scrape go to PROMETHEUS_TARGETS_DIR, when set)."""
    runtime = runtime_from_settings(settings)
    if not isinstance(runtime, SwarmRuntimeResource) or not settings.traefik_dynamic_dir:
        yield
        return
    dynamic = TraefikDynamicResource(directory=settings.traefik_dynamic_dir)
    engine = sa.create_engine(sqlalchemy_url(settings.database_url), pool_pre_ping=True)

    def placed(nodes: dict[str, str]) -> list[str]:
        with engine.begin() as connection:
            return set_instance_nodes(connection, nodes)

    targets = (
        Path(settings.prometheus_targets_dir) / SWARM_TARGETS_FILE
        if settings.prometheus_targets_dir
        else None
    )
    task = asyncio.create_task(routes.follow(runtime, dynamic, placed, targets=targets))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        engine.dispose()


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
