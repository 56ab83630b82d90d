"""The shells of a promotion (`domain/promotion.py` names the phases): build and fill the
dedicated database while the tenant serves, hold its requests at the edge, freeze and drain its
shared n8n, catch the copy up and compare it, start its n8n on the copy and release what was
held; or, on any failure before the switch, put it back on its shared schema, serving.

Never two mains on one tenant's data: the dedicated main (the other color) boots while the
shared one serves, but waits on its first read of the copy, whose tables the catch-up holds
(`TenantCopy.locked`) until the shared main is stopped, its queue drained, its role's login
taken away and the copy made exact; if that transaction never commits, the dedicated main
fails at that read. The shared one starts again only after the dedicated one was removed.
"""

import contextlib
import datetime as dt
import logging
import secrets
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

import dagster as dg
import httpx
import sqlalchemy as sa

from rp9_pipelines import launches
from rp9_pipelines.catalog import promotions as catalog
from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.domain.promotion import mismatches, refusal, rollback_refusal
from rp9_pipelines.domain.routing import (
    HELD_HEADER,
    HOLDING_PATH,
    hold_config,
    hold_name,
    release_config,
    release_name,
    service_url,
)
from rp9_pipelines.domain.stack import other_color
from rp9_pipelines.domain.tenants import TenantNames, Tier, role_limits
from rp9_pipelines.domain.upgrades import boot_failure
from rp9_pipelines.resources.n8n import N8nResource
from rp9_pipelines.resources.stack import StackResources
from rp9_pipelines.resources.tenant_copy import TenantCopy
from rp9_pipelines.resources.traefik_dynamic import TraefikDynamicResource
from rp9_pipelines.services import tenants

logger = logging.getLogger(__name__)
Log = Callable[[str], None]
FALLBACK_FILES = "rp9-fallback-"
ROUTE_TIMEOUT_S = 15.0
DRAIN_TIMEOUT_S = 60.0
MAIN_STOP_TIMEOUT_S = 1
MAIN_GRACE_S = 0.5
# Until the dedicated main, booting beside the serving one, waits on the held copy. It boots at
# the background weight behind the tenants' own load, before any hold: a slow boot costs the
# promotion time, not requests (90 s in a CI run on busy cores); one that fails stops at once.
BOOT_TIMEOUT_S = 600.0
# The hold's route stays until at most this many requests are open in the holder (a released
# backlog worked through), for at most `BACKLOG_TIMEOUT_S`.
OPEN_TO_LIFT = 10
READINESS_PATH = "/healthz/readiness"
BACKLOG_TIMEOUT_S = 120.0
HOLDING_TIMEOUT_S = 5.0
# Until the holder has sent on every request it kept: each is sent on or answered 503 within
# the holder's 50 s `HOLD_LIMIT_S`, and its answer's headers are back within its client's 120 s
# timeout. A run on busy cores took more than 15 s for a released backlog (CI, 2026-12-04):
# no reason to fail a promotion whose tenant serves.
SENT_ON_TIMEOUT_S = 180.0
# After the hold's route goes, the executions a released backlog queued (hundreds, for a webhook
# answered once queued) are worked down while the workers still have their background weight
# and the main its startup CPU: at full weight they took the cores and the database from the
# main, which then answered nothing for seconds and the edge's in-flight limit shed requests
# (bench-upgrade, 2026-12-05: 76 in 5 s, 17 s after the release). Until at most this many wait,
# for at most `QUEUE_SETTLE_TIMEOUT_S` (on cores the tenant's own traffic keeps busy the
# queue may never get that short: its workers take their weight back then).
QUEUE_SETTLED = 10
QUEUE_SETTLE_TIMEOUT_S = 60.0


class PromotionResources(dg.ConfigurableResource):  # type: ignore[type-arg]
    """What a promotion acts on: the tenant's stack, Traefik (its dynamic directory and API)
    and the tenant's n8n through it."""

    stack: StackResources
    n8n: N8nResource
    traefik_dynamic: TraefikDynamicResource
    traefik_api_url: str
    rollback_window_s: float = 86_400.0


class PromotionFailed(RuntimeError):
    """The promotion stopped; the tenant serves from the side named in the message."""


def sides(tenant: Tenant) -> tuple[TenantNames, TenantNames]:
    return TenantNames(tenant.slug, "shared"), TenantNames(tenant.slug, "dedicated")


def as_tier(tenant: Tenant, tier: Tier) -> Tenant:
    return replace(tenant, tier=tier)


def record(
    r: PromotionResources,
    promotion_id: uuid.UUID,
    phase: str,
    columns: dict[str, Any] | None = None,
    **figures: Any,
) -> None:
    """The run reached `phase`, having measured `figures` (and set `columns` of its row)."""
    with r.stack.catalog.begin() as connection:
        catalog.advance(connection, promotion_id, phase, figures, **(columns or {}))


def finish(r: PromotionResources, promotion_id: uuid.UUID, status: str, **values: Any) -> None:
    with r.stack.catalog.begin() as connection:
        catalog.conclude(
            connection, promotion_id, status=status, finished_at=dt.datetime.now(dt.UTC), **values
        )


# Prepare ------------------------------------------------------------------------------------


def prepare(r: PromotionResources, tenant: Tenant, promotion_id: uuid.UUID, log: Log) -> None:
    """A dedicated database from the n8n template, nobody able to log in to it yet, filled from
    one snapshot of the shared schema. Again from scratch on a re-run."""
    s = r.stack
    if tenant.n8n_version != s.platform.n8n_version:
        raise PromotionFailed(
            f"{tenant.slug} runs n8n {tenant.n8n_version}, the platform's template is"
            f" {s.platform.n8n_version}: upgrade it first; it serves from its shared schema"
        )
    shared, dedicated = sides(tenant)
    record(r, promotion_id, "preparing")
    template = tenants.ensure_template(s, log)
    # A copy left by an earlier attempt is never trusted: it starts again, empty.
    if s.tenant_db.exists(dedicated):
        log(f"removing the dedicated database {dedicated.db_name} of an earlier attempt")
        s.tenant_db.drop(dedicated)
    with s.catalog.begin() as connection:
        limits = role_limits(tenant_catalog.limits_for(connection, tenant.id))
    # A throwaway password: the tenant's own (which its containers hold) is set at the switch,
    # so no tenant code reaches the copy before it is the tenant's.
    s.tenant_db.ensure(dedicated, secrets.token_hex(24), template, limits)
    s.tenant_db.set_login(dedicated, False)
    copy = TenantCopy(s.tenant_db, shared, dedicated)
    keys = copy.foreign_keys()
    copy.drop_foreign_keys(keys)
    copied = copy.copy_all()
    log(
        f"copied {sum(copied.rows.values())} rows of {len(copied.rows)} tables"
        f" in {copied.seconds:.1f} s"
    )
    record(
        r,
        promotion_id,
        "prepared",
        copied_rows=copied.rows,
        copy_s=round(copied.seconds, 3),
        floor=copied.floor,
        foreign_keys=keys,
    )


# The edge ------------------------------------------------------------------------------------


def holder_url(r: PromotionResources) -> str:
    """The URL of a running API (its published fallback route), whose holder keeps the tenant's
    requests during the cutover; none answering: `PromotionFailed`, before anything changes."""
    for name in r.traefik_dynamic.names(FALLBACK_FILES):
        url = service_url(r.traefik_dynamic.read(name) or {}, name)
        with contextlib.suppress(httpx.HTTPError):
            if url and httpx.get(url.rstrip("/") + "/healthz", timeout=3).status_code == 200:
                return str(url)
    raise PromotionFailed("no rp9 API answers to hold the tenant's requests: start the API")


def _router(r: PromotionResources, name: str) -> dict[str, Any] | None:
    try:
        answer = httpx.get(f"{r.traefik_api_url}/api/http/routers/{name}", timeout=3)
    except httpx.HTTPError:
        return None
    return answer.json() if answer.status_code == 200 else None


def wait_for(what: str, ready: Callable[[], bool], timeout_s: float) -> float:
    started = time.monotonic()
    while not ready():
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"{what} after {timeout_s} s")
        time.sleep(0.05)
    return time.monotonic() - started


def hold(r: PromotionResources, tenant: Tenant, reason: str = "promotion") -> float:
    """Route the tenant's hosts to the holder, and wait until Traefik does; the seconds."""
    url = holder_url(r)
    platform = r.stack.platform
    with r.stack.catalog.begin() as connection:
        catalog.hold(connection, tenant.id, reason, secrets.token_hex(16))
    name = hold_name(tenant.slug)
    r.traefik_dynamic.write(
        name,
        hold_config(
            slug=tenant.slug,
            hosts=tenant.names.hosts(platform.base_domain, tenant.custom_domain),
            holder_url=url,
            entrypoint=platform.traefik_entrypoint,
            tls=bool(platform.traefik_cert_resolver),
        ),
    )
    return wait_for(
        f"Traefik did not route {tenant.slug} to the holder",
        lambda: _router(r, f"{name}@file") is not None,
        ROUTE_TIMEOUT_S,
    )


def _enabled(r: PromotionResources, name: str) -> Callable[[], bool]:
    def check() -> bool:
        found = _router(r, name)
        return bool(found and found.get("status") == "enabled")

    return check


def routed(r: PromotionResources, tenant: Tenant) -> bool:
    """Traefik routes the tenant's hosts to its own n8n (its docker router is enabled)."""
    return _enabled(r, _own_router(r, tenant))()


def _own_router(r: PromotionResources, tenant: Tenant) -> str:
    """The router Traefik makes of the tenant's main's labels: its docker provider's, or on a
    Swarm its file provider's (the route files that follow the tasks)."""
    return f"{tenant.names.router}@{r.stack.docker_runtime.route_provider}"


def require_running(r: PromotionResources, name: str) -> None:
    """`name` runs and never exited (n8n exits when its boot fails: Docker restarts it)."""
    state = r.stack.docker_runtime.state(name)
    if state is None or state.status not in ("created", "running"):
        raise PromotionFailed(f"{name} is not running ({state and state.status})")
    if state.restarts:
        logs = r.stack.docker_runtime.logs(name, tail=300, timestamps=True)
        raise PromotionFailed(f"{name} exited and restarted: {boot_failure(logs.splitlines())}")


def _token(r: PromotionResources, tenant: Tenant) -> str:
    with r.stack.catalog.begin() as connection:
        return catalog.hold_token(connection, tenant.id) or secrets.token_hex(16)


def _write_release(r: PromotionResources, tenant: Tenant, **target: str) -> None:
    platform = r.stack.platform
    r.traefik_dynamic.write(
        release_name(tenant.slug),
        release_config(
            slug=tenant.slug,
            hosts=tenant.names.hosts(platform.base_domain, tenant.custom_domain),
            token=_token(r, tenant),
            entrypoint=platform.traefik_entrypoint,
            tls=bool(platform.traefik_cert_resolver),
            **target,
        ),
    )


def route_release(r: PromotionResources, tenant: Tenant, main: str) -> None:
    """While the tenant is held: the release route, straight to `main` (booted for the
    cutover: neither Docker's health check nor Traefik's docker provider has called it ready
    yet), so that what was held goes on the moment it answers (`ready_through_release`)."""
    state = r.stack.docker_runtime.state(main)
    if state is None or not state.url:
        raise PromotionFailed(f"{main} is not running")
    _write_release(r, tenant, url=state.url)


def ready_through_release(r: PromotionResources, tenant: Tenant, main: str) -> float:
    """Until `main` answers ready through the release route (what the held requests will take);
    the seconds. A main that stops meanwhile fails it."""
    token = _token(r, tenant)
    host = tenant.names.host(r.stack.platform.base_domain)
    checked = 0.0

    def ready() -> bool:
        nonlocal checked
        if time.monotonic() - checked > 1:  # the engine asked once a second, not each probe
            require_running(r, main)
            checked = time.monotonic()
        with contextlib.suppress(httpx.HTTPError):
            answer = client.get(READINESS_PATH, headers={HELD_HEADER: token}, timeout=2)
            return answer.status_code == 200
        return False

    with r.n8n.client(host) as client:
        return wait_for(
            f"{main} did not answer ready through the release route",
            ready,
            r.stack.platform.ready_timeout_s,
        )


def unroute_release(r: PromotionResources, tenant: Tenant) -> None:
    """No release route (one to a main that goes, or may have been replaced), as Traefik sees
    it: `release` routes to the tenant's own service then."""
    name = release_name(tenant.slug)
    if r.traefik_dynamic.read(name) is not None:
        r.traefik_dynamic.remove(name)
        wait_for(
            f"Traefik kept the release route of {tenant.slug}",
            lambda: _router(r, f"{name}@file") is None,
            ROUTE_TIMEOUT_S,
        )


def release(r: PromotionResources, tenant: Tenant) -> float:
    """The hold lifted: the held requests go on at once, through the release route (written
    by `route_release` for a cutover, else now, once Traefik routes the tenant's own n8n); the
    seconds. The routes go with `end_release`."""
    own = _own_router(r, tenant)
    name = release_name(tenant.slug)
    started = time.monotonic()
    if r.traefik_dynamic.read(name) is None:
        wait_for(
            f"Traefik did not route {tenant.slug} to its n8n", _enabled(r, own), ROUTE_TIMEOUT_S
        )
        _write_release(r, tenant, service=own)
    wait_for(
        f"Traefik did not take the release route of {tenant.slug}",
        _enabled(r, f"{name}@file"),
        ROUTE_TIMEOUT_S,
    )
    with r.stack.catalog.begin() as connection:
        catalog.release(connection, tenant.id)
    return time.monotonic() - started


def _holder_has(url: str, tenant: Tenant, what: str, at_most: int) -> Callable[[], bool]:
    """Whether the holder at `url` has at most `at_most` of the tenant's requests `what`
    (`open`, `unrouted`). One gone (no URL, refused, not answering 200) has none, and with it
    went what it held; one too busy to answer within `HOLDING_TIMEOUT_S` (sending on a released
    backlog of hundreds) has them still."""

    def check() -> bool:
        if not url:
            return True
        try:
            answer = httpx.get(f"{url}{HOLDING_PATH}/{tenant.id}", timeout=HOLDING_TIMEOUT_S)
        except httpx.TimeoutException:
            return False
        except httpx.HTTPError:
            return True
        return answer.status_code != 200 or answer.json().get(what, 0) <= at_most

    return check


def end_release(r: PromotionResources, tenant: Tenant) -> None:
    """Back to the tenant's own route, edge limits and all. Until then every request passes
    through the holder, which sends it on at once past the limits: the backlog released
    together is worked through without the in-flight limit shedding what arrives meanwhile. So
    the hold's route goes once few requests are open in the holder (at most
    `OPEN_TO_LIFT`, or after `BACKLOG_TIMEOUT_S`), then the release route, once the holder sent
    on everything it had."""
    name = hold_name(tenant.slug)
    url = service_url(r.traefik_dynamic.read(name) or {}, name).rstrip("/")

    few_open = _holder_has(url, tenant, "open", OPEN_TO_LIFT)
    with contextlib.suppress(TimeoutError):  # a backlog that lasts: the limits apply again
        wait_for(f"the backlog of {tenant.slug}", few_open, BACKLOG_TIMEOUT_S)
    # What arrives from now on takes the tenant's own route (a main released to before Docker
    # called it healthy is routed there moments later).
    own = _own_router(r, tenant)
    wait_for(f"Traefik did not route {tenant.slug} to its n8n", _enabled(r, own), ROUTE_TIMEOUT_S)
    r.traefik_dynamic.remove(name)
    wait_for(
        f"Traefik kept the hold of {tenant.slug}",
        lambda: _router(r, f"{name}@file") is None,
        ROUTE_TIMEOUT_S,
    )

    sent_on = _holder_has(url, tenant, "unrouted", 0)
    try:
        wait_for(f"the holder kept requests of {tenant.slug}", sent_on, SENT_ON_TIMEOUT_S)
    except TimeoutError as error:
        # Past the holder's own limits: what it still keeps is stuck there, not on its way.
        logger.warning("%s; its release route goes anyway", error)
    r.traefik_dynamic.remove(release_name(tenant.slug))


# Boot, freeze, catch up, switch ----------------------------------------------------------------


def boot(r: PromotionResources, tenant: Tenant, copy: TenantCopy, log: Log) -> tuple[str, float]:
    """While the shared main serves: the dedicated role gets the tenant's password and login,
    and the dedicated main (the other color) boots, at its plan's CPU, until it waits on its
    first read of the copy (held by `copy.locked`). Its name, and the seconds."""
    s = r.stack
    _, dedicated = sides(tenant)
    password = (s.vault.require(tenant.names.vault_path))["db_password"]
    with s.catalog.begin() as connection:
        limits = role_limits(tenant_catalog.limits_for(connection, tenant.id))
    s.tenant_db.ensure(dedicated, password, None, limits)
    name = tenants.boot_main(s, promoted(tenant), log)

    def waits() -> bool:
        require_running(r, name)
        return copy.waiting() > 0

    return name, wait_for(f"{name} did not reach the copy", waits, BOOT_TIMEOUT_S)


def promoted(tenant: Tenant) -> Tenant:
    """The tenant as the catalog has it once switched: dedicated, served by the other color."""
    return replace(tenant, tier="dedicated", color=other_color(tenant.color))


@dataclass(frozen=True)
class Frozen:
    """A freeze's figures: the main's stop, its queue's drain, the workers' stop (seconds)."""

    main_s: float
    drain_s: float
    workers_s: float

    @property
    def seconds(self) -> float:
        return self.main_s + self.drain_s + self.workers_s

    def figures(self) -> dict[str, float]:
        return {
            "freeze_s": round(self.seconds, 3),
            "main_stop_s": round(self.main_s, 3),
            "drain_s": round(self.drain_s, 3),
            "workers_stop_s": round(self.workers_s, 3),
        }


def stop_main(r: PromotionResources, main: str, drained: Callable[[], bool]) -> None:
    """Stop `main`, whose visitors wait at the edge now: SIGTERM, and SIGKILL once its queue
    is `drained` after `MAIN_GRACE_S`, or after `MAIN_STOP_TIMEOUT_S` in any case.

    What it still serves (a webhook is answered once it is queued: milliseconds) finishes
    within the grace: n8n's own shutdown gives it no more (it exits as soon as none of the
    executions it queued runs, answered or not). But it waits for those in steps of 0.5 s, and
    its whole graceful timeout for what else it stops (32 s measured for an idle main): with
    any execution running at the stop it outlasted the timeout (1.3-1.5 s with the engine's
    kill, against 0.3 s without; bench-promote, 2026-12-05)."""
    runtime = r.stack.docker_runtime
    with ThreadPoolExecutor(max_workers=1) as pool:
        stopping = pool.submit(runtime.stop, main, MAIN_STOP_TIMEOUT_S)
        asked = time.monotonic()

        def over() -> bool:
            return stopping.done() or (time.monotonic() - asked >= MAIN_GRACE_S and drained())

        # The engine ends the stop itself (its kill at the timeout): this bound is only for an
        # engine that never answers.
        wait_for(f"{main} did not stop", over, DRAIN_TIMEOUT_S)
        if not stopping.done():
            runtime.stop(main, timeout_s=0)
        stopping.result()


def freeze(
    r: PromotionResources, tenant: Tenant, names: TenantNames, log: Log, *, lock_out: bool = True
) -> Frozen:
    """Stop the main of `names`' side (held requests wait at the edge), let its workers drain
    its queue, stop them, and (`lock_out`) take that side's role's login away: nothing writes
    its data."""
    s = r.stack
    started = time.monotonic()
    main = names.container("main", tenant.color)
    log(f"stopping {main}")

    def drained() -> bool:
        counts = s.redis.queue_counts(names.bull_prefix)
        return counts.waiting == 0 and counts.active == 0

    stop_main(r, main, drained)
    stopped = time.monotonic()
    log(f"{main} stopped in {stopped - started:.2f} s")
    wait_for(f"the queue of {tenant.slug} did not drain", drained, DRAIN_TIMEOUT_S)
    emptied = time.monotonic()
    # Their queue is empty: nothing runs in them. Stopped together (one engine call each).
    # (Stopping them beside the catch-up instead gained nothing measurable on two cores: the
    # engine's work for them slowed the catch-up and its commit as much.)
    workers = [o.name for o in s.docker_runtime.states(tenant.slug) if o.role == "worker"]
    with ThreadPoolExecutor(max_workers=max(1, len(workers))) as pool:
        list(pool.map(lambda name: s.docker_runtime.stop(name, timeout_s=0), workers))
    if lock_out:
        s.tenant_db.set_login(names, False)
    return Frozen(stopped - started, emptied - stopped, time.monotonic() - emptied)


def catch_up(r: PromotionResources, copy: TenantCopy, promotion: dict[str, Any], log: Log) -> None:
    """The copy made exact from the frozen source, compared, its foreign keys back (within
    `copy.locked`: the dedicated main sees none of it until it commits)."""
    figures = promotion["figures"]
    caught = copy.catch_up(int(figures.get("floor", 0)))
    started = time.monotonic()
    copy.add_foreign_keys(figures.get("foreign_keys", []))
    keyed = time.monotonic()
    source, copied = copy.compare()
    compared = time.monotonic()
    wrong = mismatches(source, copied)
    if wrong:
        raise PromotionFailed("the copy differs from the shared schema: " + "; ".join(wrong[:5]))
    log(f"caught up in {caught.seconds:.1f} s; {sum(source.rows.values())} rows compared equal")
    record(
        r,
        promotion["id"],
        "verified",
        catch_up_s=round(caught.seconds, 3),
        foreign_keys_s=round(keyed - started, 3),
        compare_s=round(compared - keyed, 3),
        verified_rows=source.rows,
        digests=source.digests,
        last_execution_id=copy.last_execution_id(),
    )


def serve(r: PromotionResources, tenant: Tenant, log: Log, *, roles: set[str]) -> None:
    """Converge the tenant's containers of `roles` on its current tier."""
    tenants.converge(r.stack, tenant, log, roles=roles)


def settle(r: PromotionResources, tenant: Tenant, log: Log) -> None:
    """After the hold's release: the workers of the side that serves now, booting in the
    background while the main works through the released backlog past the edge limits (a
    webhook answered by its workflow, `Respond to Webhook` or the last node, waits in the
    queue for them), then back to the tenant's own route (`end_release`, once the backlog is
    answered). Until then the main keeps its startup CPU and the workers their background
    weight (the executions the backlog queued wait for the cores it needs); the other side's
    stopped main goes after."""

    def backlog_answered() -> None:
        if held(r, tenant) or r.traefik_dynamic.read(release_name(tenant.slug)) is not None:
            end_release(r, tenant)
        queue_worked_down(r, tenant, log)

    tenants.converge(
        r.stack,
        tenant,
        log,
        roles={"worker"},
        background_workers=True,
        meanwhile=backlog_answered,
    )
    tenants.converge(r.stack, tenant, log, roles={"main"})


def queue_worked_down(r: PromotionResources, tenant: Tenant, log: Log) -> None:
    """Until at most `QUEUE_SETTLED` of the tenant's executions wait in its queue, for at most
    `QUEUE_SETTLE_TIMEOUT_S`."""
    prefix = tenant.names.bull_prefix
    started = time.monotonic()

    def short() -> bool:
        return r.stack.redis.queue_counts(prefix).waiting <= QUEUE_SETTLED

    try:
        wait_for(f"the queue of {tenant.slug}", short, QUEUE_SETTLE_TIMEOUT_S)
    except TimeoutError:
        waiting = r.stack.redis.queue_counts(prefix).waiting
        log(f"{waiting} executions still queued after {QUEUE_SETTLE_TIMEOUT_S:.0f} s")
    else:
        log(f"queue worked down in {time.monotonic() - started:.1f} s")


def switch(r: PromotionResources, tenant: Tenant, main: str) -> tuple[Tenant, float]:
    """The tenant is dedicated from here (the copy committed): the catalog says so; its main,
    booted on the copy, answers ready through the release route (the seconds it took). Then
    the hold is released and its containers converge (`settle`: the stopped shared ones go,
    the main's CPU goes back from the startup boost to its plan's, the workers start)."""
    moved = promoted(tenant)
    with r.stack.catalog.begin() as connection:
        tenant_catalog.update_tenant(connection, tenant.id, tier="dedicated", color=moved.color)
    return moved, ready_through_release(r, moved, main)


def roll_back(r: PromotionResources, tenant: Tenant, log: Log) -> float | None:
    """Back on the shared schema, serving: whatever of the dedicated side runs goes first, the
    shared role logs in again, the shared main converges, the hold is released, the workers
    start. When (monotonic) the held requests were released, if they were."""
    s = r.stack
    shared, dedicated = sides(tenant)
    with s.catalog.begin() as connection:
        tenant_catalog.update_tenant(connection, tenant.id, tier="shared", color=tenant.color)
    back = as_tier(tenant, "shared")
    unroute_release(r, tenant)
    if s.tenant_db.exists(dedicated):
        s.tenant_db.set_login(dedicated, False)
    # A dedicated main of the other color (booted for a cutover that did not happen) never
    # served: it goes at once. One of the same name is replaced, not joined, by the shared one
    # (its configuration differs: the converge removes it before it creates the other).
    serving = back.names.container("main", back.color)
    for state in s.docker_runtime.states(tenant.slug):
        if state.role == "main" and state.name != serving:
            log(f"removing {state.name}")
            s.docker_runtime.remove(state.name, graceful=False)
            with s.catalog.begin() as connection:
                tenant_catalog.set_instances_state(connection, tenant.id, "removed", [state.name])
    s.tenant_db.set_login(shared, True)
    serve(r, back, log, roles={"main"})
    released = None
    if held(r, tenant):
        release(r, back)
        released = time.monotonic()
    settle(r, back, log)
    return released


def held(r: PromotionResources, tenant: Tenant) -> bool:
    return r.traefik_dynamic.read(hold_name(tenant.slug)) is not None


# What the API asks: start a promotion, or its rollback ----------------------------------------

Launcher = Callable[[Any], str]


class Promotions(Protocol):
    """The catalog as promotion requests read and write it (`CatalogPromotions`)."""

    def start(self, tenant: Tenant, trigger: str) -> uuid.UUID:
        """Record a requested promotion and mark the tenant `promoting`, or `Conflict` with a
        stable code when its state (or a promotion already running) refuses."""
        ...

    def forget(self, promotion_id: uuid.UUID, tenant: Tenant) -> None:
        """Undo `start` (its run could not be launched)."""

    def start_rollback(self, tenant: Tenant, now: dt.datetime) -> uuid.UUID:
        """The promotion to go back from, the tenant marked `promoting`; or `Conflict`."""
        ...

    def forget_rollback(self, tenant: Tenant) -> None: ...

    def of_tenant(self, tenant_id: uuid.UUID) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class CatalogPromotions:
    engine: sa.Engine

    def start(self, tenant: Tenant, trigger: str) -> uuid.UUID:
        with self.engine.begin() as connection:
            current = tenant_catalog.require_tenant(connection, tenant.id)
            why = refusal(current.tier, current.status, catalog.running(connection, tenant.id))
            if why is not None:
                raise tenants.Conflict(*why)
            try:
                return catalog.start(connection, tenant.id, trigger)
            except catalog.PromotionRunning:
                raise tenants.Conflict(
                    "promotion_in_progress", "a promotion of this tenant is already running"
                ) from None

    def forget(self, promotion_id: uuid.UUID, tenant: Tenant) -> None:
        with self.engine.begin() as connection:
            catalog.forget(connection, promotion_id, tenant.status)

    def start_rollback(self, tenant: Tenant, now: dt.datetime) -> uuid.UUID:
        with self.engine.begin() as connection:
            current = tenant_catalog.require_tenant(connection, tenant.id)
            last = catalog.last_switched(connection, tenant.id)
            why = rollback_refusal(current.tier, current.status, last, now)
            if why is not None:
                raise tenants.Conflict(*why)
            assert last is not None
            tenant_catalog.update_tenant(connection, tenant.id, status="promoting")
            promotion_id: uuid.UUID = last["id"]
            return promotion_id

    def forget_rollback(self, tenant: Tenant) -> None:
        with self.engine.begin() as connection:
            tenant_catalog.update_tenant(connection, tenant.id, status=tenant.status)

    def of_tenant(self, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            return catalog.of_tenant(connection, tenant_id)


def request_promotion(
    promotions: Promotions, launch: Launcher, tenant: Tenant, trigger: str = "manual"
) -> tuple[uuid.UUID, str]:
    """Record the promotion (the tenant `promoting`), then launch its run; no run, no
    promotion."""
    promotion_id = promotions.start(tenant, trigger)
    try:
        run_id = launch(
            launches.promotion("promote_tenant", str(promotion_id), str(tenant.id), tenant.slug)
        )
    except Exception:
        promotions.forget(promotion_id, tenant)
        raise
    return promotion_id, run_id


def request_rollback(
    promotions: Promotions, launch: Launcher, tenant: Tenant, now: dt.datetime
) -> tuple[uuid.UUID, str]:
    """Launch the return to the shared schema of the tenant's last promotion, if its window is
    open (`Conflict` otherwise)."""
    promotion_id = promotions.start_rollback(tenant, now)
    try:
        run_id = launch(
            launches.promotion(
                "roll_back_promotion", str(promotion_id), str(tenant.id), tenant.slug
            )
        )
    except Exception:
        promotions.forget_rollback(tenant)
        raise
    return promotion_id, run_id
