"""The public answer for a tenant's address when no container serves it.

Traefik's file provider carries a catch-all router (lowest priority, every host on the tenant
entry point) to `FALLBACK_PATH` here; a tenant's own router (Docker labels, higher priority)
wins whenever its n8n runs. So a suspended tenant answers 503 `tenant_suspended` instead of
Traefik's 404, a tenant being created or changed 503 `tenant_unavailable`, and an unknown
host 404 `tenant_not_found`. No Bearer token: this is what the tenant's users see.

It is public and can be flooded (any host name reaches it), so it must not starve the admin
API: it runs on the event loop, asks the catalog from a few threads of its own
(`LOOKUP_THREADS`, so it never holds more of the catalog's connections or of the threads the
admin routes run in), answers a host that is no DNS name without asking, and past
`MAX_WAITING` waiting visitors answers 503 at once. A custom domain's answer names no slug:
who owns a domain is the tenant's business. Traefik also asks it for the page of a routed
tenant whose n8n could not take a request (`?upstream=502`, `429`: from
`domain.routing.edge_config`): never a 404 then.

The API writes that router at startup (`published`, from `api/main.py`'s lifespan) into
`TRAEFIK_DYNAMIC_DIR`, one file per API instance pointing at `ORCH_PUBLIC_URL` (default
`http://127.0.0.1:$ORCH_PORT`), puts it back within seconds whenever it goes missing (a stack
restarted under the running API), and removes it at shutdown; files of instances that no longer
answer are removed by the next one to start.
"""

import contextlib
import datetime as dt
import html
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

import anyio
import httpx
import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from rp9_pipelines.api.deps import EngineDep, SettingsDep
from rp9_pipelines.api.errors import error_body
from rp9_pipelines.catalog.tables import tenants
from rp9_pipelines.domain.enforcement import next_period_start, period_of
from rp9_pipelines.domain.routing import (
    FALLBACK_PATH,
    UPSTREAM_PARAM,
    Unavailable,
    fallback_config,
    service_url,
    unavailable,
)
from rp9_pipelines.resources.traefik_dynamic import TraefikDynamicResource
from rp9_pipelines.settings import Settings

FILE_PREFIX = "rp9-fallback-"
LOOKUP_THREADS = 4
# How soon a fallback router that disappeared from Traefik's directory is put back.
REPUBLISH_EVERY_S = 2.0
MAX_WAITING = 64
HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?")
log = logging.getLogger(__name__)
T = TypeVar("T")


def host_of(request: Request) -> str:
    """The tenant address asked for, lowercase, without a port."""
    host = request.headers.get("host", "").strip().lower()
    return host.rsplit(":", 1)[0] if not host.endswith("]") else host


def host_condition(host: str, base_domain: str) -> sa.ColumnElement[bool]:
    """The tenant whose address `host` is: its custom domain, or its slug's subdomain."""
    condition = tenants.c.custom_domain == host
    suffix = "." + base_domain
    if host.endswith(suffix) and "." not in host[: -len(suffix)]:
        condition = sa.or_(condition, tenants.c.slug == host[: -len(suffix)])
    return condition


def _lookup(connection: sa.Connection, host: str, base_domain: str) -> Any:
    query = (
        sa.select(tenants.c.slug, tenants.c.status, tenants.c.suspension_reason)
        .where(host_condition(host, base_domain))
        .order_by((tenants.c.status == "deleted").asc())
        .limit(1)
    )
    return connection.execute(query).first()


def _page(title: str, message: str) -> str:
    title, message = html.escape(title), html.escape(message)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<title>{title}</title></head><body style="font-family:sans-serif;max-width:40em;'
        f'margin:4em auto"><h1>{title}</h1><p>{message}</p></body></html>'
    )


async def _answers(url: str) -> bool:
    try:
        async with httpx.AsyncClient(timeout=5) as client:
            return (await client.get(url.rstrip("/") + "/healthz")).status_code == 200
    except httpx.HTTPError:
        return False


async def _prune(files: TraefikDynamicResource, keep: str) -> None:
    """Remove the fallback routes of API instances that no longer answer (killed, not
    stopped): Traefik would send suspended tenants' visitors to a dead address."""
    for other in files.names(FILE_PREFIX):
        if other == keep:
            continue
        url = service_url(files.read(other) or {}, other)
        if not (url and await _answers(url)):
            files.remove(other)
            log.info("removed the fallback route of %s, which no longer answers", other)


@contextlib.asynccontextmanager
async def published(settings: Settings) -> AsyncIterator[None]:
    """This instance's fallback router, in Traefik's dynamic directory while the API runs."""
    if not settings.traefik_dynamic_dir:
        log.warning("TRAEFIK_DYNAMIC_DIR is not set: suspended tenants answer Traefik's 404")
        yield
        return
    files = TraefikDynamicResource(directory=settings.traefik_dynamic_dir)
    url = settings.orch_public_url or f"http://127.0.0.1:{settings.orch_port}"
    name = FILE_PREFIX + (urlsplit(url).netloc or url).replace(":", "-").replace(".", "-")
    config = fallback_config(
        name=name,
        url=url,
        entrypoint=settings.traefik_entrypoint,
        tls=bool(settings.traefik_cert_resolver),
    )
    try:
        await _prune(files, name)
        files.write(name, config)
    except OSError as error:
        # The API still serves its callers; only the suspended page is missing.
        log.error("cannot publish the fallback route in %s: %s", files.directory, error)
        yield
        return
    log.info("fallback route %s → %s%s", name, url, FALLBACK_PATH)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_keep_published, files, name, config)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()
    finally:
        files.remove(name)


async def _keep_published(files: TraefikDynamicResource, name: str, config: Any) -> None:
    """Put the router back whenever it is gone or changed (a stack restarted under the running
    API, a directory emptied by hand): Traefik must always have it while the API runs."""
    while True:
        await anyio.sleep(REPUBLISH_EVERY_S)
        try:
            if files.read(name) != config:
                files.write(name, config)
                log.warning("fallback route %s was missing or changed: published it again", name)
        except OSError as error:
            log.error("cannot publish the fallback route in %s: %s", files.directory, error)


# Traefik's, not a caller's: no token, and not in the API's schema.
router = APIRouter(tags=["fallback"], include_in_schema=False)


class _Lookups:
    """The catalog look-ups of this process's fallback answers: how many threads, how many wait."""

    def __init__(self) -> None:
        self.limiter: anyio.CapacityLimiter | None = None  # made on the event loop, when first used
        self.waiting = 0


_lookups = _Lookups()


def _find(engine: sa.Engine, host: str, base_domain: str) -> Any:
    with engine.connect() as connection:
        return _lookup(connection, host, base_domain)


async def run_lookup(
    find: Callable[[sa.Engine, str, str], T], engine: sa.Engine, host: str, base_domain: str
) -> T:
    """A catalog look-up for a tenant's address, in one of the fallback's few threads."""
    if _lookups.limiter is None:
        _lookups.limiter = anyio.CapacityLimiter(LOOKUP_THREADS)
    _lookups.waiting += 1
    try:
        return await anyio.to_thread.run_sync(
            find, engine, host, base_domain, limiter=_lookups.limiter
        )
    finally:
        _lookups.waiting -= 1


async def _find_bounded(engine: sa.Engine, host: str, base_domain: str) -> Any:
    return await run_lookup(_find, engine, host, base_domain)


def _answer(request: Request, answer: Unavailable, tenant: str | None = None) -> Response:
    headers = {"Cache-Control": "no-store"}
    if answer.retry_after_s is not None:
        headers["Retry-After"] = str(answer.retry_after_s)
    if "text/html" in request.headers.get("accept", ""):
        titles = {
            "tenant_suspended": "Suspended",
            "tenant_unavailable": "Unavailable",
            "tenant_busy": "Busy",
        }
        page = _page(titles.get(answer.code, "Not found"), answer.message)
        return HTMLResponse(page, status_code=answer.status_code, headers=headers)
    body: dict[str, Any] = error_body(answer.code, answer.message)
    if tenant is not None:
        body["tenant"] = tenant
    return JSONResponse(body, status_code=answer.status_code, headers=headers)


def _status(value: str | None) -> int | None:
    """The status Traefik had for a routed tenant (`?upstream=502`), when it asked."""
    if value is None:
        return None
    return int(value) if value.isdigit() and len(value) == 3 else 0


BUSY = Unavailable(503, "tenant_unavailable", "this address is temporarily unavailable", 5)


@router.api_route(
    FALLBACK_PATH, methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
)
async def tenant_fallback(request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    """Why this tenant address has no n8n behind it right now."""
    host = host_of(request)
    if not HOSTNAME.fullmatch(host):
        row = None
    elif _lookups.waiting >= MAX_WAITING:
        return _answer(request, BUSY)
    else:
        row = await _find_bounded(engine, host, settings.base_domain)
    now = dt.datetime.now(dt.UTC)
    # A tenant's own address names it already; its custom domain must not give its slug away.
    own_slug = (
        row.slug if row is not None and host == f"{row.slug}.{settings.base_domain}" else None
    )
    answer = unavailable(
        (own_slug or "this address") if row else None,
        row.status if row else None,
        row.suspension_reason if row else None,
        now,
        next_period_start(period_of(now)),
        upstream=_status(request.query_params.get(UPSTREAM_PARAM)),
    )
    return _answer(request, answer, own_slug)
