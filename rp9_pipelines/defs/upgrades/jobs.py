"""Upgrade runs: `upgrade_tenant` (pre-flight and rehearsal → snapshot and switch → watch, each
phase recorded in `upgrades`), `roll_back_upgrade` (the snapshot and the old version back,
within the window) and `upgrade_rollout` (a fleet in waves, one `upgrade_tenant` run per
tenant, halted by the first failure). The tenant runs are tagged with their tenant, so they
never run beside another change of it.

A re-run of a run that died resumes from the recorded phase: before the new version started on
the tenant's data the old stack is put back and the upgrade failed; after, the snapshot and the
old version are restored.
"""

import datetime as dt
import time
import uuid
from typing import Any

import dagster as dg
from pydantic import Field

from rp9_pipelines.api.dagster_client import DagsterClient
from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.catalog import upgrades as catalog
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.defs.tenants.jobs import mark_failed
from rp9_pipelines.domain.upgrades import halted, touched_data, waves
from rp9_pipelines.launches import KIND_TAG
from rp9_pipelines.services import tenants
from rp9_pipelines.services import upgrades as service
from rp9_pipelines.services.upgrades import UpgradeFailed, UpgradeResources


class UpgradeRef(dg.Config):
    upgrade_id: str
    fail_probe: bool = Field(
        default=False,
        description="A drill of the automatic rollback: the watch's probe is made to fail.",
    )


def _load(u: UpgradeResources, upgrade_id: str) -> tuple[dict[str, Any], Tenant]:
    with u.drill.catalog.begin() as connection:
        found = catalog.get(connection, uuid.UUID(upgrade_id))
        if found is None:
            raise ValueError(f"no upgrade {upgrade_id}")
        tenant = tenant_catalog.require_tenant(connection, found["tenant_id"])
    return found, tenant


def _failed(u: UpgradeResources, tenant: Tenant, upgrade: dict[str, Any], why: str) -> None:
    """The tenant serves as before, active; the upgrade failed with why."""
    tenants.set_status(u.cutover.stack, tenant, status="active")
    service.finish(u, upgrade["id"], "failed", error=why[:2000])


def _rolled_back(
    context: dg.OpExecutionContext,
    u: UpgradeResources,
    upgrade: dict[str, Any],
    tenant: Tenant,
    why: str,
) -> None:
    """The new version touched the data: the snapshot and the old version back, serving."""
    context.log.error(f"rolling {tenant.slug} back to n8n {upgrade['from_version']}: {why}")
    try:
        figures = _roll_back(context, u, upgrade, tenant)
    except Exception as error:
        service.finish(u, upgrade["id"], "failed", error=f"{why}; the rollback failed: {error}")
        raise
    service.record(u, upgrade["id"], "rolled_back", **figures)
    tenants.set_status(u.cutover.stack, tenant, status="active")
    service.finish(u, upgrade["id"], "rolled_back", error=why[:2000])


def _roll_back(
    context: dg.OpExecutionContext, u: UpgradeResources, upgrade: dict[str, Any], tenant: Tenant
) -> dict[str, Any]:
    """`service.roll_back`; failed, the tenant serves again on whatever the catalog names (the
    new version on its data: a failed restore puts the data back as it was), active."""
    try:
        return service.roll_back(u, tenant, upgrade, context.log.info)
    except Exception as error:
        _, now = _load(u, str(upgrade["id"]))
        context.log.error(
            f"the rollback failed ({type(error).__name__}: {error}); {now.slug} serves n8n"
            f" {now.n8n_version} again"
        )
        # Whatever serves now (the new version on its data: a failed restore put it back).
        current = {**upgrade, "from_version": now.n8n_version, "figures": {"from_color": now.color}}
        service.put_back(u, now, current, context.log.info)
        tenants.set_status(u.cutover.stack, now, status="active")
        raise


def _recover(
    context: dg.OpExecutionContext, u: UpgradeResources, upgrade: dict[str, Any], tenant: Tenant
) -> None:
    """A run that died mid-switch, re-run: the tenant back on what served before."""
    why = f"the run was interrupted at {upgrade['phase']}"
    if touched_data(upgrade["phase"]):
        _rolled_back(context, u, upgrade, tenant, why)
    else:
        service.put_back(u, tenant, upgrade, context.log.info)
        _failed(u, tenant, upgrade, why)
    raise UpgradeFailed(why)


@dg.op
def rehearse_upgrade(
    context: dg.OpExecutionContext, config: UpgradeRef, upgrade: UpgradeResources
) -> dict[str, Any]:
    """Pre-flight (the target offered on a tested path, its image here), then the rehearsal:
    the new version booted on a copy of the tenant's data, its migrations timed, checked
    through n8n. A failure leaves the tenant untouched and serving."""
    found, tenant = _load(upgrade, config.upgrade_id)
    with tenants.acting_on(upgrade.cutover.stack, str(tenant.id), "upgrade"):
        if found["status"] != "running":
            raise UpgradeFailed(f"upgrade {config.upgrade_id} is {found['status']}")
        if found["phase"] in ("holding", "stopped") or touched_data(found["phase"]):
            _recover(context, upgrade, found, tenant)
        if found["phase"] in ("requested", "preflight", "rehearsing"):
            try:
                service.preflight(upgrade, tenant, found, context.log.info)
                service.rehearse(upgrade, tenant, found, context.log.info)
            except Exception as error:
                _failed(upgrade, tenant, found, f"{type(error).__name__}: {error}")
                raise
    return {"upgrade_id": config.upgrade_id, "fail_probe": config.fail_probe}


@dg.op
def switch_version(
    context: dg.OpExecutionContext, ref: dict[str, Any], upgrade: UpgradeResources
) -> dict[str, Any]:
    """A snapshot, then the held switch: the old stack stopped and drained, the new version
    started on the tenant's data, released once it answers ready, its workers after the
    backlog. Never ready: rolled back to the snapshot."""
    found, tenant = _load(upgrade, ref["upgrade_id"])
    log = context.log.info
    with tenants.acting_on(upgrade.cutover.stack, str(tenant.id), "upgrade"):
        try:
            service.snapshot(upgrade, tenant, found, log)
        except Exception as error:
            _failed(upgrade, tenant, found, f"snapshot: {type(error).__name__}: {error}")
            raise
        found, _ = _load(upgrade, ref["upgrade_id"])
        try:
            moved = service.switch(upgrade, tenant, found, log)
            service.settle(upgrade, moved, log)
        except Exception as error:
            found, now = _load(upgrade, ref["upgrade_id"])
            why = f"{found['phase']}: {type(error).__name__}: {error}"
            if touched_data(found["phase"]):
                _rolled_back(context, upgrade, found, now, why)
            else:
                service.put_back(upgrade, now, found, log)
                _failed(upgrade, tenant, found, why)
            raise
    return ref


@dg.op
def watch_upgrade(
    context: dg.OpExecutionContext, ref: dict[str, Any], upgrade: UpgradeResources
) -> None:
    """The watch window: n8n's readiness and its route, the probe workflow through a worker, the
    error rate; any failing rolls the tenant back to the snapshot and the old version."""
    found, tenant = _load(upgrade, ref["upgrade_id"])
    with tenants.acting_on(upgrade.cutover.stack, str(tenant.id), "upgrade"):
        why = service.watch(upgrade, tenant, found, context.log.info, ref["fail_probe"])
        found, tenant = _load(upgrade, ref["upgrade_id"])
        if why is not None:
            _rolled_back(context, upgrade, found, tenant, f"watch: {why}")
            raise UpgradeFailed(f"rolled back: {why}")
        tenants.set_status(upgrade.cutover.stack, tenant, status="active", last_error=None)
        service.record(upgrade, found["id"], "done")
        service.finish(upgrade, found["id"], "succeeded")
    context.log.info(f"{tenant.slug} runs n8n {tenant.n8n_version}")


@dg.job(tags={KIND_TAG: "tenant"}, hooks={mark_failed}, executor_def=dg.in_process_executor)
def upgrade_tenant() -> None:
    """Upgrade a tenant's n8n blue/green: rehearsed on a copy of its data, switched with its
    requests held at the edge, watched, rolled back automatically."""
    watch_upgrade(switch_version(rehearse_upgrade()))


@dg.op
def restore_previous(
    context: dg.OpExecutionContext, config: UpgradeRef, upgrade: UpgradeResources
) -> None:
    """Within the rollback window: the snapshot taken before the switch and the version before
    it, back; the figures say how many executions made since the snapshot stay behind."""
    found, tenant = _load(upgrade, config.upgrade_id)
    with tenants.acting_on(upgrade.cutover.stack, str(tenant.id), "upgrade"):
        figures = _roll_back(context, upgrade, found, tenant)
        service.record(upgrade, found["id"], "rolled_back", **figures)
        tenants.set_status(upgrade.cutover.stack, tenant, status="active")
        service.finish(upgrade, found["id"], "rolled_back", error="rolled back on request")


@dg.job(tags={KIND_TAG: "tenant"}, hooks={mark_failed}, executor_def=dg.in_process_executor)
def roll_back_upgrade() -> None:
    """Return an upgraded tenant to its previous n8n version and snapshot, within the window."""
    restore_previous()


class RolloutConfig(dg.Config):
    rollout_id: str
    version: str
    canaries: list[str] = Field(default_factory=list)
    waves: list[float] = Field(default_factory=lambda: [100.0])
    # Tenants (slugs) to roll out to; empty: every active tenant not on `version`.
    tenants: list[str] = Field(default_factory=list)
    # Seconds one tenant's upgrade may take before the rollout gives up waiting on it.
    tenant_timeout_s: float = 1800.0


def _outcome(u: UpgradeResources, upgrade_id: uuid.UUID) -> str:
    with u.drill.catalog.begin() as connection:
        found = catalog.get(connection, upgrade_id)
    return str(found["status"]) if found else "failed"


@dg.op
def roll_out(
    context: dg.OpExecutionContext, config: RolloutConfig, upgrade: UpgradeResources
) -> None:
    """The canaries, then each wave: one `upgrade_tenant` run per tenant (tagged with the
    rollout), the wave awaited, and the rollout halted after a wave with a failed rehearsal or
    a rollback. Tenants the catalog refuses (busy, on the version already, …) are skipped."""
    engine = upgrade.drill.catalog.engine
    with engine.connect() as connection:
        fleet = {
            t.slug: t
            for t in tenant_catalog.list_tenants(connection)
            if t.status == "active" and t.n8n_version != config.version
        }
    chosen = [s for s in (config.tenants or fleet) if s in fleet]
    planned = waves(chosen, config.canaries, config.waves, config.rollout_id)
    context.log.info("waves: " + "; ".join(f"{w.name}: {', '.join(w.tenants)}" for w in planned))
    launcher = DagsterClient(upgrade.dagster_graphql_url)
    upgrades = service.CatalogUpgrades(engine)
    for number, wave in enumerate(planned, 1):
        started: dict[str, uuid.UUID] = {}
        for slug in wave.tenants:
            try:
                upgrade_id, run_id = service.request_upgrade(
                    upgrades,
                    launcher.launch,
                    fleet[slug],
                    config.version,
                    config.rollout_id,
                    requested_by="upgrade_rollout",
                )
            except tenants.Conflict as refused:
                context.log.warning(f"{slug} skipped: {refused.code}: {refused}")
                continue
            started[slug] = upgrade_id
            context.log.info(f"wave {wave.name}: {slug} upgrading in run {run_id}")
        outcomes: dict[str, str] = {}
        deadline = time.monotonic() + config.tenant_timeout_s
        while len(outcomes) < len(started):
            for slug, upgrade_id in started.items():
                status = _outcome(upgrade, upgrade_id)
                if status != "running":
                    outcomes[slug] = status
            if len(outcomes) < len(started):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"wave {wave.name} still running after the timeout")
                time.sleep(2)
        context.log.info(f"wave {wave.name}: {outcomes}")
        stopped = halted(outcomes)
        if stopped:
            left = [t for w in planned[number:] for t in w.tenants]
            raise UpgradeFailed(
                f"rollout {config.rollout_id} halted after wave {wave.name}: {', '.join(stopped)}"
                f" failed or rolled back; not upgraded: {', '.join(left) or 'none'}"
            )
    context.log.info(f"rollout {config.rollout_id} done at {dt.datetime.now(dt.UTC).isoformat()}")


@dg.job(tags={KIND_TAG: "rollout"}, executor_def=dg.in_process_executor)
def upgrade_rollout() -> None:
    """Upgrade a fleet to one n8n version in waves: canaries first, halted by a failure."""
    roll_out()


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[upgrade_tenant, roll_back_upgrade, upgrade_rollout])
