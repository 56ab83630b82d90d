"""The holder: where Traefik sends a tenant's requests while its n8n changes places (a
promotion's cutover, `domain.routing.hold_config`), so that they wait instead of failing.

Each held request waits until the tenant's hold (`edge_holds`) is released, then goes on through
Traefik with its own method, path, query, headers and body and the hold's token in
`HELD_HEADER`, which Traefik's release route (`routing.release_config`, in force before the
release) sends straight to wherever the tenant is served by then, past its edge limits; its
answer comes back as n8n gave it. A request that carries `HELD_HEADER` here came back (no
release route): it, and a request held past `HOLD_LIMIT_S`, is answered 503 with `Retry-After`,
as the fallback answers. No Bearer token: these are the tenant's visitors.

However many requests wait, one of them asks the catalog about the tenant's hold every
`POLL_S`, from the fallback's few threads; the others sleep until it sees the release (or, at
most `FOLLOW_S` later, take its place if it went): hundreds of held requests cost no CPU.

Released, a tenant's requests go on oldest first, `SEND_AT_ONCE` at a time (`_Gate`): n8n
shares its one thread among every request it has, so a backlog sent on together is answered
all at once at its end (the oldest waiting the hold and the whole backlog), while in order the
oldest are answered first and the backlog takes no longer. A request whose answer is slow (a
workflow that answers at its end waits for a worker) gives its place up after `SLOT_S`.
"""

import asyncio
import heapq
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import anyio
import httpx
import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import Response

from rp9_pipelines.api.deps import EngineDep, SettingsDep
from rp9_pipelines.api.routes.tenant_fallback import (
    HOSTNAME,
    _answer,
    host_condition,
    host_of,
    run_lookup,
)
from rp9_pipelines.catalog.tables import edge_holds, tenants
from rp9_pipelines.domain.routing import HELD_HEADER, HOLD_PATH, HOLDING_PATH, Unavailable

# Longer than any cutover's hold lasts (`make bench-promote`: 11-19 s on two cores), shorter
# than the minute after which most senders give up: a sender that waits gets its answer late
# rather than a 503.
HOLD_LIMIT_S = 50.0
# How long a released request's answer may take (Traefik's entrypoint lets it: readTimeout).
SEND_ON_TIMEOUT_S = 120.0
POLL_S = 0.1
FOLLOW_S = 1.0
MAX_HELD = 2000
# Few: the new main answers what it is sent together at about the same time, and the oldest
# held requests (the hold's slowest) are in the first lot. With 16 they were answered 0.6 s
# after the release, with 4 0.3 s (bench-promote, 2026-12-05); the whole backlog took about as
# long either way (its last answer 1.4-2.5 s after the release with 4, 2.0-2.2 s with 16).
SEND_AT_ONCE = 4
SLOT_S = 0.25
MAX_BODY_BYTES = 16 * 1024 * 1024  # n8n's own limit (N8N_PAYLOAD_SIZE_MAX)
# Headers of one hop only (RFC 9110 §7.6.1), and what is recomputed for the next one.
HOP_HEADERS = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
}
TIMED_OUT = Unavailable(503, "tenant_unavailable", "this address is changing servers", 5)
LOOPED = Unavailable(503, "tenant_unavailable", "this address is changing servers", 2)
TOO_MANY = Unavailable(503, "tenant_busy", "this address is changing servers", 2)
log = logging.getLogger(__name__)
router = APIRouter(tags=["hold"], include_in_schema=False)


class _Watch:
    """One hold of a tenant as this process waits on it: `released` is set, with the hold's
    `token`, once the catalog says so; whoever holds `polling` asks it."""

    def __init__(self) -> None:
        self.released = anyio.Event()
        self.token = ""
        self.polling = anyio.Lock()


class _Gate:
    """A tenant's requests sent on through the holder: in the order they came (`ticket`, taken
    on arrival), at most `SEND_AT_ONCE` at a time, each holding its place until its answer
    begins or `SLOT_S`. The places are handed out once every request woken with them has
    asked (the released backlog wakes in no particular order)."""

    def __init__(self) -> None:
        self.free = SEND_AT_ONCE
        self.tickets = itertools.count()
        self.waiting: list[tuple[int, asyncio.Future[None]]] = []
        self.handing = False

    def ticket(self) -> int:
        return next(self.tickets)

    def _hand_out(self) -> None:
        self.handing = False
        while self.free and self.waiting:
            _, place = heapq.heappop(self.waiting)
            if not place.done():
                self.free -= 1
                place.set_result(None)

    def _give_back(self) -> None:
        self.free += 1
        self._hand_out()

    async def send(
        self, ticket: int, sending: Callable[[Callable[[], None]], Awaitable[Response]]
    ) -> Response:
        """`sending(answered)` once `ticket`'s turn comes: `answered()` gives its place up."""
        loop = asyncio.get_running_loop()
        place: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self.waiting, (ticket, place))
        if not self.handing:
            self.handing = True
            loop.call_soon(self._hand_out)
        try:
            await place
        except asyncio.CancelledError:
            if place.done() and not place.cancelled():
                self._give_back()  # a place handed to a request that went meanwhile
            raise
        given_up = False

        def answered() -> None:
            nonlocal given_up
            if not given_up:
                given_up = True
                self._give_back()

        # A timer, not a task: the send's own errors reach the caller as they are.
        timer = loop.call_later(SLOT_S, answered)
        try:
            return await sending(answered)
        finally:
            timer.cancel()
            answered()


class _Holds:
    """This process's view of the tenants' holds, and the requests it has of each."""

    def __init__(self) -> None:
        self.watches: dict[uuid.UUID, _Watch] = {}
        self.held = 0
        # Requests of each tenant here whose way on Traefik has not chosen yet (waiting, or sent
        # without an answer's headers): the release route stays until none is left.
        self.unrouted: dict[uuid.UUID, int] = {}
        # Requests of each tenant here until their answer goes back: while a released backlog
        # is worked through, the tenant stays behind the holder (no in-flight limit sheds).
        self.open: dict[uuid.UUID, int] = {}
        # The gate of each tenant with requests here (gone with its last one).
        self.gates: dict[uuid.UUID, _Gate] = {}
        self.client: httpx.AsyncClient | None = None


_holds = _Holds()


def _held(engine: sa.Engine, host: str, base_domain: str) -> tuple[uuid.UUID, bool, str] | None:
    """The tenant at `host`, whether its requests are still held, and the hold's token."""
    query = (
        sa.select(tenants.c.id, edge_holds.c.held_at, edge_holds.c.released_at, edge_holds.c.token)
        .select_from(tenants.outerjoin(edge_holds, edge_holds.c.tenant_id == tenants.c.id))
        .where(host_condition(host, base_domain), tenants.c.status != "deleted")
        .limit(1)
    )
    with engine.connect() as connection:
        row = connection.execute(query).first()
    if row is None:
        return None
    return row.id, row.held_at is not None and row.released_at is None, row.token or ""


def _watch(tenant_id: uuid.UUID) -> _Watch:
    """The watch of the tenant's current hold (a new one once the last was released)."""
    watch = _holds.watches.get(tenant_id)
    if watch is None or watch.released.is_set():
        watch = _holds.watches[tenant_id] = _Watch()
    return watch


async def _released(
    engine: sa.Engine, host: str, watch: _Watch, deadline: float, base: str
) -> str | None:
    """The hold's token once it is released; None past `deadline`. One waiter polls the
    catalog; the others wait for it (and one of them polls once it stops)."""
    while not watch.released.is_set():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        if watch.polling.locked():
            with anyio.move_on_after(min(FOLLOW_S, remaining)):
                await watch.released.wait()
            continue
        async with watch.polling:
            while time.monotonic() < deadline:
                found = await run_lookup(_held, engine, host, base)
                if found is None or not found[1]:
                    watch.token = found[2] if found is not None else ""
                    watch.released.set()
                    break
                await anyio.sleep(POLL_S)
    return watch.token


def _client() -> httpx.AsyncClient:
    if _holds.client is None:
        limits = httpx.Limits(max_connections=MAX_HELD, max_keepalive_connections=50)
        _holds.client = httpx.AsyncClient(timeout=SEND_ON_TIMEOUT_S, limits=limits)
    return _holds.client


async def _send_on(
    request: Request, body: bytes, traefik_url: str, token: str, routed: Callable[[], None]
) -> Response:
    path = request.url.path.removeprefix(HOLD_PATH) or "/"
    url = traefik_url.rstrip("/") + path + (f"?{request.url.query}" if request.url.query else "")
    headers = [(k, v) for k, v in request.headers.items() if k.lower() not in HOP_HEADERS]
    headers.append((HELD_HEADER, token or "released"))
    outgoing = _client().build_request(request.method, url, headers=headers, content=body)
    try:
        answer = await _client().send(outgoing, stream=True)
    finally:
        routed()
    try:
        content = b"".join([chunk async for chunk in answer.aiter_raw()])
    finally:
        await answer.aclose()
    kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
    return Response(content=content, status_code=answer.status_code, headers=kept)


@router.api_route(
    HOLD_PATH + "/{rest:path}",
    methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
)
async def held_request(request: Request, engine: EngineDep, settings: SettingsDep) -> Response:
    """Wait for the tenant's hold to be released, then send the request on."""
    del request.path_params["rest"]
    if request.headers.get(HELD_HEADER):
        return _answer(request, LOOPED)
    host = host_of(request)
    if not HOSTNAME.fullmatch(host):
        return _answer(request, TIMED_OUT)
    if _holds.held >= MAX_HELD:
        return _answer(request, TOO_MANY)
    _holds.held += 1
    try:
        body = await request.body()
        if len(body) > MAX_BODY_BYTES:
            return Response(status_code=413)
        found = await run_lookup(_held, engine, host, settings.base_domain)
        if found is None:
            return await _send_on(request, body, settings.traefik_url, "", lambda: None)
        tenant_id, held, token = found
        _holds.unrouted[tenant_id] = _holds.unrouted.get(tenant_id, 0) + 1
        _holds.open[tenant_id] = _holds.open.get(tenant_id, 0) + 1
        gate = _holds.gates.setdefault(tenant_id, _Gate())
        ticket = gate.ticket()
        counted = True

        def routed() -> None:
            nonlocal counted
            if counted:
                counted = False
                _holds.unrouted[tenant_id] -= 1

        try:
            if held:
                deadline = time.monotonic() + HOLD_LIMIT_S
                watch = _watch(tenant_id)
                released = await _released(engine, host, watch, deadline, settings.base_domain)
                if released is None:
                    log.warning("hold of %s outlasted %s s: answered 503", host, HOLD_LIMIT_S)
                    return _answer(request, TIMED_OUT)
                token = released

            async def sending(answered: Callable[[], None]) -> Response:
                def on_its_way() -> None:
                    routed()
                    answered()

                return await _send_on(request, body, settings.traefik_url, token, on_its_way)

            return await gate.send(ticket, sending)
        finally:
            routed()
            _holds.open[tenant_id] -= 1
            if not _holds.open[tenant_id]:
                _holds.gates.pop(tenant_id, None)
    except httpx.HTTPError as error:
        log.warning("a held request to %s could not be sent on: %s", host, error)
        return _answer(request, TIMED_OUT)
    finally:
        _holds.held -= 1


@router.get(HOLDING_PATH + "/{tenant_id}")
async def holding(tenant_id: uuid.UUID) -> dict[str, int]:
    """The tenant's requests in this holder: `open` until answered, `unrouted` until sent on
    (the run that held them lifts the hold once few are open, and removes the release route
    once none is unrouted). Not routed from any tenant's host."""
    return {
        "open": _holds.open.get(tenant_id, 0),
        "unrouted": _holds.unrouted.get(tenant_id, 0),
    }
