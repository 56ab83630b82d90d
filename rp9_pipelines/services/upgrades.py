"""The shells of an upgrade (`domain/upgrades.py` decides): pre-flight, a rehearsal on a copy
of the tenant's data, a snapshot, then the switch with the promotion's edge hold (the old
stack stopped and drained, the new version started on the tenant's data, released once it
answers ready), a watch window, and the rollback that restores the snapshot and the old
version.

Never two mains at once: the new version's main is created only once the old one is stopped
and its queue drained. The rehearsal's n8n runs in a sandbox (`restore_drills`): its own
database restored from a fresh backup, its workflows unpublished before it boots (no schedule
or trigger fires), regular mode (no queue of the tenant's), its own network, no route.
"""

import datetime as dt
import secrets
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import dagster as dg
import httpx
import sqlalchemy as sa

from rp9_pipelines import launches
from rp9_pipelines.catalog import backups as backup_catalog
from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.catalog import upgrades as catalog
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.domain.restore_drills import (
    Check,
    SandboxNames,
    drill_passed,
)
from rp9_pipelines.domain.stack import other_color
from rp9_pipelines.domain.upgrades import migrations_in_log, upgrade_refusal, watch_failure
from rp9_pipelines.domain.upgrades import rollback_refusal as refuse_rollback
from rp9_pipelines.resources.postgres_dump import PgServer, restore_in_place
from rp9_pipelines.resources.s3 import StoredObject
from rp9_pipelines.resources.stack import DrillResources
from rp9_pipelines.services import promotion as edge
from rp9_pipelines.services import tenants
from rp9_pipelines.services.backups import describe, take_backup, verify_object
from rp9_pipelines.services.promotion import PromotionResources
from rp9_pipelines.services.restore_drills import restore_and_check, run_canary, teardown

Log = Callable[[str], None]
# Until the new version's main, booting beside the serving one, waits on the tenant's data (at
# the background weight, before the hold: see `promotion.BOOT_TIMEOUT_S`).
BOOT_TIMEOUT_S = 600.0


class UpgradeResources(dg.ConfigurableResource):  # type: ignore[type-arg]
    """What an upgrade acts on: the tenant's stack and edge (`cutover`, the promotion's), and
    what a restore drill uses for the rehearsal and the snapshot (`drill`)."""

    cutover: PromotionResources
    drill: DrillResources
    # After the switch: how long readiness, the probe and the error rate are watched.
    watch_s: float = 60.0
    rollback_window_s: float = 86_400.0
    # Where a rollout launches its tenants' runs (the Dagster webserver's GraphQL).
    dagster_graphql_url: str = "http://127.0.0.1:3000/graphql"


class UpgradeFailed(RuntimeError):
    """The upgrade stopped; the message says why and which version serves."""


def record(
    u: UpgradeResources,
    upgrade_id: uuid.UUID,
    phase: str,
    columns: dict[str, Any] | None = None,
    **figures: Any,
) -> None:
    with u.drill.catalog.begin() as connection:
        catalog.advance(connection, upgrade_id, phase, figures, **(columns or {}))


def finish(u: UpgradeResources, upgrade_id: uuid.UUID, status: str, **values: Any) -> None:
    with u.drill.catalog.begin() as connection:
        catalog.conclude(
            connection, upgrade_id, status=status, finished_at=dt.datetime.now(dt.UTC), **values
        )


def upgraded(tenant: Tenant, version: str) -> Tenant:
    """The tenant as the catalog has it once switched: the new version, the other color."""
    return replace(tenant, n8n_version=version, color=other_color(tenant.color))


# Pre-flight and rehearsal ---------------------------------------------------------------------


def preflight(u: UpgradeResources, tenant: Tenant, upgrade: dict[str, Any], log: Log) -> None:
    """The target still offered on this path, its image on this host."""
    target = upgrade["to_version"]
    with u.drill.catalog.begin() as connection:
        offer = catalog.offer(connection)
    why = upgrade_refusal(offer, tenant.n8n_version, target, "active", busy=False)
    if why is not None:
        raise UpgradeFailed(f"{why[0]}: {why[1]}")
    image = u.drill.platform.image_for(target)
    if not u.drill.docker_runtime.image_exists(image):
        raise UpgradeFailed(f"image {image} is not built on this host (deploy/images/n8n)")
    log(f"pre-flight: {tenant.n8n_version} -> {target} offered and tested; {image} present")
    # n8n publishes a breaking-changes report only for its major versions (1.x -> 2.0); a
    # path within one major has none to read.
    breaking = "none published within a major version"
    record(u, upgrade["id"], "preflight", image=image, breaking_changes=breaking)


def _backup(u: UpgradeResources, tenant: Tenant, log: Log) -> dict[str, Any]:
    d = u.drill
    outcome = take_backup(d.catalog, d.admin_url, d.s3, tenant, "pre_upgrade", None, log)
    with d.catalog.begin() as connection:
        found = backup_catalog.get_backup(connection, outcome.backup_id)
    assert found is not None
    return found


def rehearse(u: UpgradeResources, tenant: Tenant, upgrade: dict[str, Any], log: Log) -> None:
    """A fresh backup restored into a sandbox, the new version booted on it (its migrations
    timed from its log), checked through n8n: the counts, every workflow, the credentials
    decrypting, a probe workflow executed. Torn down whatever happened; `UpgradeFailed` with
    the failed checks."""
    record(u, upgrade["id"], "rehearsing")
    started = time.monotonic()
    backup = _backup(u, tenant, log)
    sandbox = SandboxNames.for_rehearsal(upgrade["id"])
    server = PgServer.from_url(u.drill.admin_url)
    image = u.drill.platform.image_for(upgrade["to_version"])
    checks: list[Check] = []
    error = None
    boot_log = ""
    try:
        # In the background: the tenant serves meanwhile, on the same cores.
        restore_and_check(
            u.drill,
            server,
            tenant,
            backup,
            sandbox,
            checks,
            log,
            image=image,
            cpu_shares=tenants.BACKGROUND_CPU_SHARES,
        )
    except Exception as failure:
        error = describe(failure)
    finally:
        boot_log = u.drill.docker_runtime.logs(sandbox.container, tail="all", timestamps=True)
        checks.append(teardown(u.drill, server, sandbox))
    migrations = migrations_in_log(boot_log.splitlines())
    figures: dict[str, Any] = {
        "rehearsal_s": round(time.monotonic() - started, 3),
        "rehearsal_backup_id": str(backup["id"]),
        "rehearsal_checks": [c.as_json() for c in checks],
        "rehearsal_migrations": migrations.count,
        "rehearsal_migration_s": migrations.seconds,
    }
    failed = [c for c in checks if not c.ok]
    if error is not None or not drill_passed(checks):
        record(u, upgrade["id"], "rehearsing", **figures)
        why = "; ".join(([error] if error else []) + [f"{c.name}: {c.detail}" for c in failed])
        raise UpgradeFailed(f"the rehearsal on a copy of the tenant's data failed: {why[:1500]}")
    log(
        f"rehearsed in {figures['rehearsal_s']:.1f} s: {migrations.count} migrations in"
        f" {migrations.seconds or 0:.1f} s; every check passed"
    )
    record(u, upgrade["id"], "rehearsed", **figures)


# The switch ------------------------------------------------------------------------------------


def snapshot(u: UpgradeResources, tenant: Tenant, upgrade: dict[str, Any], log: Log) -> None:
    """A verified backup to restore on a rollback, taken just before the hold."""
    started = time.monotonic()
    backup = _backup(u, tenant, log)
    record(
        u,
        upgrade["id"],
        "snapshot",
        snapshot_backup_id=str(backup["id"]),
        snapshot_s=round(time.monotonic() - started, 3),
    )


def _start_main(u: UpgradeResources, tenant: Tenant, log: Log) -> str:
    """The main of `tenant` (its version and color as the catalog now has them), alone on the
    data, at its startup CPU; routed for the held requests once it answers ready."""
    s = u.cutover.stack
    main = tenants.boot_main(s, tenant, log)
    tenants.boost(s, tenant, main)
    edge.route_release(u.cutover, tenant, main)
    edge.ready_through_release(u.cutover, tenant, main)
    return main


def switch(u: UpgradeResources, tenant: Tenant, upgrade: dict[str, Any], log: Log) -> Tenant:
    """The new version's main boots while the old stack serves, up to its first read of the
    tenant's `migrations` table (held by `migrations_locked`); then the tenant's requests are
    held, the old stack stopped and drained, and the lock's commit lets the new main migrate
    the data and finish its boot: never do two mains work on it. The held requests go on the
    moment it answers ready. The tenant as switched."""
    c = u.cutover
    s = c.stack
    moved = upgraded(tenant, upgrade["to_version"])
    s.tenant_db.withhold_migrations(tenant.names)
    with s.tenant_db.migrations_locked(tenant.names):
        boot_started = time.monotonic()
        main = tenants.boot_main(s, moved, log)

        def waits() -> bool:
            edge.require_running(c, main)
            return s.tenant_db.waiting_on_lock(tenant.names) > 0

        preboot_s = edge.wait_for(f"{main} did not reach the tenant's data", waits, BOOT_TIMEOUT_S)
        # Waiting on the lock it uses no CPU: first from now on, before the hold.
        tenants.boost(s, moved, main)
        started = time.monotonic()
        edge.hold(c, tenant, "upgrade")
        record(u, upgrade["id"], "holding", preboot_s=round(preboot_s, 3), from_color=tenant.color)
        edge.route_release(c, moved, main)
        frozen = edge.freeze(c, tenant, tenant.names, log, lock_out=False)
        record(u, upgrade["id"], "stopped", None, **frozen.figures())
        with s.catalog.begin() as connection:
            tenant_catalog.update_tenant(
                connection, tenant.id, n8n_version=moved.n8n_version, color=moved.color
            )
        # From the commit on, the new version migrates the tenant's data.
        record(u, upgrade["id"], "started")
    ready_started = time.monotonic()
    edge.ready_through_release(c, moved, main)
    ready_s = time.monotonic() - ready_started
    edge.release(c, moved)
    hold_s = time.monotonic() - started
    migrations = migrations_in_log(
        s.docker_runtime.logs(main, tail="all", timestamps=True).splitlines()
    )
    now = dt.datetime.now(dt.UTC)
    record(
        u,
        upgrade["id"],
        "switched",
        {"switched_at": now, "rollback_until": now + dt.timedelta(seconds=u.rollback_window_s)},
        hold_s=round(hold_s, 3),
        boot_s=round(time.monotonic() - boot_started, 3),
        ready_s=round(ready_s, 3),
        migrations=migrations.count,
        migration_s=migrations.seconds,
    )
    log(
        f"{moved.slug} serves n8n {moved.n8n_version}; requests held {hold_s:.1f} s"
        f" ({migrations.count} migrations in {migrations.seconds or 0:.1f} s, ready"
        f" {ready_s:.1f} s after the old stack stopped)"
    )
    return moved


def settle(u: UpgradeResources, tenant: Tenant, log: Log) -> None:
    """The workers of the serving version (the other color's containers go), booting in the
    background while requests still pass the holder, past the edge limits (the main works
    through the released backlog meanwhile); then back to the tenant's own route."""
    edge.settle(u.cutover, tenant, log)


def put_back(u: UpgradeResources, tenant: Tenant, upgrade: dict[str, Any], log: Log) -> None:
    """Before the new version touched the data: the old stack (the version and color before
    `upgrade`) serves again, whatever was held released, the tenant's rights on its
    `migrations` table back."""
    c = u.cutover
    back = replace(
        tenant,
        n8n_version=upgrade["from_version"],
        color=upgrade["figures"].get("from_color", tenant.color),
    )
    with c.stack.catalog.begin() as connection:
        tenant_catalog.update_tenant(
            connection, tenant.id, n8n_version=back.n8n_version, color=back.color
        )
    edge.unroute_release(c, back)
    for state in c.stack.docker_runtime.states(back.slug):
        if state.role == "main" and state.name != back.names.container("main", back.color):
            c.stack.docker_runtime.remove(state.name, graceful=False)
    c.stack.tenant_db.restore_migrations(back.names)
    tenants.converge(c.stack, back, log, roles={"main"})
    if edge.held(c, back):
        edge.release(c, back)
    edge.settle(c, back, log)


# The watch -------------------------------------------------------------------------------------


def _main_url(u: UpgradeResources, tenant: Tenant) -> str | None:
    """The tenant's serving main at its own address: n8n itself, past the edge's limits (the
    tenant's own load may fill them: their 429 and 503 are the edge's, not the version's)."""
    state = u.cutover.stack.docker_runtime.state(tenant.names.container("main", tenant.color))
    if state is None or state.status != "running" or not state.url:
        return None
    return state.url


def _ready(u: UpgradeResources, tenant: Tenant) -> bool:
    """n8n's main answers ready, and Traefik routes the tenant's hosts to it."""
    url = _main_url(u, tenant)
    if url is None:
        return False
    try:
        answer = httpx.get(f"{url}/healthz/readiness", timeout=3)
    except httpx.HTTPError:
        return False
    return answer.status_code == 200 and edge.routed(u.cutover, tenant)


def _probe(u: UpgradeResources, tenant: Tenant, fail: bool) -> str | None:
    """A webhook workflow installed through the tenant's public API with its own key, called
    (queue mode: a worker executes it), then deleted; None when it answered its nonce. `fail`
    expects another nonce (a drill of the automatic rollback)."""
    s = u.cutover.stack
    api_key = (s.vault.read(tenant.names.vault_path) or {}).get("n8n_api_key", "")
    url = _main_url(u, tenant)
    if url is None:
        return "the main is not running"
    path = f"rp9-upgrade-probe-{secrets.token_hex(6)}"
    check, _ = run_canary(url, api_key, path, remove=True, expect_other=fail)
    return None if check.ok else check.detail


def watch(
    u: UpgradeResources, tenant: Tenant, upgrade: dict[str, Any], log: Log, fail_probe: bool
) -> str | None:
    """For `watch_s` after the switch: n8n's readiness (and Traefik's route to it) once a
    second, the probe once, and the executions failing since the switch against before; why it
    calls for a rollback, or None."""
    s = u.cutover.stack
    record(u, upgrade["id"], "watching")
    before = s.n8n_data.execution_window(tenant.names, 900)
    try:
        probe = _probe(u, tenant, fail_probe)
    except httpx.HTTPError as error:
        probe = f"the probe could not reach n8n: {type(error).__name__}: {error}"
    looks: list[bool] = []
    started = time.monotonic()
    while probe is None and time.monotonic() - started < u.watch_s:
        looks.append(_ready(u, tenant))
        if watch_failure(looks, None, (0, 0), (0, 0)) is not None:
            break
        time.sleep(1)
    since = max(1, int(time.monotonic() - started) + 1)
    after = s.n8n_data.execution_window(tenant.names, since)
    why = watch_failure(looks, probe, (before.total, before.failed), (after.total, after.failed))
    record(
        u,
        upgrade["id"],
        "watching",
        watch_looks=len(looks),
        watch_not_ready=looks.count(False),
        watch_executions=after.total,
        watch_failed=after.failed,
        watch_verdict=why or "healthy",
    )
    log(f"watched {len(looks)} s: {why or 'healthy'}")
    return why


# Rollback --------------------------------------------------------------------------------------


def _restore_snapshot(u: UpgradeResources, tenant: Tenant, backup_id: str) -> int:
    """The tenant's schema as the snapshot has it (read back and verified first); how many
    executions of the replaced data it does not have."""
    d = u.drill
    with d.catalog.begin() as connection:
        backup = backup_catalog.get_backup(connection, uuid.UUID(backup_id))
    if backup is None or backup["status"] != "ok":
        raise UpgradeFailed(f"the snapshot {backup_id} is not a verified backup")
    password = d.vault.require(tenant.names.vault_path)["db_password"]
    admin = PgServer.from_url(d.admin_url)
    server = admin.login(tenant.names.db_role, password)
    with tempfile.TemporaryDirectory() as directory:
        dump = Path(directory) / "snapshot.dump"
        with dump.open("wb") as into:
            stored = StoredObject(backup["key"], backup["size_bytes"], backup["sha256"], 0)
            verify_object(d.s3, stored, into=into)
        aside = f"{tenant.names.db_schema}_upgraded_{secrets.token_hex(4)}"
        return restore_in_place(admin, server, tenant.names, dump, aside)


def roll_back(
    u: UpgradeResources, tenant: Tenant, upgrade: dict[str, Any], log: Log
) -> dict[str, Any]:
    """Back to the version before `upgrade`, on the data of its snapshot: hold, stop and drain
    the new version, restore the snapshot, start the old version's main, release. Its
    figures: the seconds until the old version answered what was held, and the executions
    made since the snapshot that stay behind."""
    c = u.cutover
    started = time.monotonic()
    if not edge.held(c, tenant):
        edge.hold(c, tenant, "upgrade")
    edge.unroute_release(c, tenant)
    edge.freeze(c, tenant, tenant.names, log, lock_out=False)
    for state in c.stack.docker_runtime.states(tenant.slug):
        if state.role == "main":  # stopped by now; the old version's main is another color
            c.stack.docker_runtime.remove(state.name, graceful=False)
    snapshot_id = upgrade["figures"].get("snapshot_backup_id")
    if not snapshot_id:
        raise UpgradeFailed("no snapshot was taken: nothing to roll back to")
    restore_started = time.monotonic()
    behind = _restore_snapshot(u, tenant, snapshot_id)
    restore_s = time.monotonic() - restore_started
    back = replace(tenant, n8n_version=upgrade["from_version"], color=other_color(tenant.color))
    with c.stack.catalog.begin() as connection:
        tenant_catalog.update_tenant(
            connection, tenant.id, n8n_version=back.n8n_version, color=back.color
        )
    _start_main(u, back, log)
    edge.release(c, back)
    serving_s = time.monotonic() - started
    settle(u, back, log)
    figures = {
        "rollback_s": round(serving_s, 3),
        "rollback_restore_s": round(restore_s, 3),
        "rollback_total_s": round(time.monotonic() - started, 3),
        "executions_left_behind": behind,
    }
    log(
        f"{tenant.slug} serves n8n {back.n8n_version} again on its snapshot ({serving_s:.1f} s);"
        f" {behind} execution(s) made since the snapshot stay behind"
    )
    return figures


# What the API asks ----------------------------------------------------------------------------

Launcher = Callable[[Any], str]


class Upgrades(Protocol):
    """The catalog as upgrade requests read and write it (`CatalogUpgrades`)."""

    def start(self, tenant: Tenant, version: str, rollout: str | None = None) -> uuid.UUID: ...

    def forget(self, upgrade_id: uuid.UUID, tenant: Tenant) -> None: ...

    def start_rollback(self, tenant: Tenant, now: dt.datetime) -> uuid.UUID: ...

    def forget_rollback(self, tenant: Tenant) -> None: ...

    def of_tenant(self, tenant_id: uuid.UUID) -> list[dict[str, Any]]: ...


@dataclass(frozen=True)
class CatalogUpgrades:
    engine: sa.Engine

    def start(self, tenant: Tenant, version: str, rollout: str | None = None) -> uuid.UUID:
        """Record a requested upgrade (the tenant `upgrading`), or `Conflict` with a stable code:
        `tenant_busy`, `invalid_state`, `already_on_version`, `version_not_offered`,
        `downgrade`, `path_not_tested`, `invalid_version`."""
        with self.engine.begin() as connection:
            current = tenant_catalog.require_tenant(connection, tenant.id)
            busy = catalog.running(connection, tenant.id)
            why = upgrade_refusal(
                catalog.offer(connection), current.n8n_version, version, current.status, busy
            )
            if why is not None:
                raise tenants.Conflict(*why)
            try:
                return catalog.start(connection, tenant.id, current.n8n_version, version, rollout)
            except catalog.UpgradeRunning:
                raise tenants.Conflict(
                    "tenant_busy", "an upgrade of this tenant is already running"
                ) from None

    def forget(self, upgrade_id: uuid.UUID, tenant: Tenant) -> None:
        with self.engine.begin() as connection:
            catalog.forget(connection, upgrade_id, tenant.status)

    def start_rollback(self, tenant: Tenant, now: dt.datetime) -> uuid.UUID:
        with self.engine.begin() as connection:
            current = tenant_catalog.require_tenant(connection, tenant.id)
            last = catalog.last(connection, tenant.id)
            why = refuse_rollback(current.status, last, now)
            if why is not None:
                raise tenants.Conflict(*why)
            assert last is not None
            tenant_catalog.update_tenant(connection, tenant.id, status="upgrading")
            upgrade_id: uuid.UUID = last["id"]
            return upgrade_id

    def forget_rollback(self, tenant: Tenant) -> None:
        with self.engine.begin() as connection:
            tenant_catalog.update_tenant(connection, tenant.id, status=tenant.status)

    def of_tenant(self, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            return catalog.of_tenant(connection, tenant_id)


def request_upgrade(
    upgrades: Upgrades,
    launch: Launcher,
    tenant: Tenant,
    version: str,
    rollout: str | None = None,
    requested_by: str = launches.API,
) -> tuple[uuid.UUID, str]:
    """Record the upgrade (the tenant `upgrading`), then launch its run; no run, no upgrade."""
    upgrade_id = upgrades.start(tenant, version, rollout)
    try:
        run_id = launch(
            launches.upgrade(
                "upgrade_tenant",
                str(upgrade_id),
                str(tenant.id),
                tenant.slug,
                requested_by,
                rollout,
            )
        )
    except Exception:
        upgrades.forget(upgrade_id, tenant)
        raise
    return upgrade_id, run_id


def request_rollback(
    upgrades: Upgrades, launch: Launcher, tenant: Tenant, now: dt.datetime
) -> tuple[uuid.UUID, str]:
    upgrade_id = upgrades.start_rollback(tenant, now)
    try:
        run_id = launch(
            launches.upgrade("roll_back_upgrade", str(upgrade_id), str(tenant.id), tenant.slug)
        )
    except Exception:
        upgrades.forget_rollback(tenant)
        raise
    return upgrade_id, run_id
