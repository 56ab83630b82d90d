"""The API's own metrics (docs/observability.md): requests by route and status, their latency,
and the Dagster runs it launched. Served at `GET /metrics` for Prometheus (job `rp9-api`); the
production edge does not route that path (compose.yaml)."""

import time
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# One registry per process, not the library's global one: what the API exports is exactly
# what is declared here.
REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "rp9_api_requests",
    "Requests the API answered, by the matched route's path template and status code.",
    ["route", "method", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "rp9_api_request_duration_seconds",
    "Time from a request's arrival to the end of its answer.",
    ["route", "method"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
LAUNCHES = Counter(
    "rp9_api_run_launches",
    "Dagster runs the API asked for, by job and outcome (launched or failed).",
    ["job", "outcome"],
    registry=REGISTRY,
)
UNMATCHED = "unmatched"


def route_of(scope: Scope) -> str:
    """The path template of the route that answered (`/tenants/{ref}`), so that the series
    stay few whatever the paths asked; `unmatched` for a path no route has."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class RequestMetrics:
    """ASGI middleware, outermost: counts and times every answer, refusals included."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route, method = route_of(scope), str(scope.get("method", ""))
            REQUESTS.labels(route, method, str(status)).inc()
            LATENCY.labels(route, method).observe(time.perf_counter() - started)


def counted_launch(job: str, launch: Callable[[], str]) -> str:
    """`launch()`'s run id, counted as launched, or its error, counted as failed."""
    try:
        run_id = launch()
    except Exception:
        LAUNCHES.labels(job, "failed").inc()
        raise
    LAUNCHES.labels(job, "launched").inc()
    return run_id


def exposition(_: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
