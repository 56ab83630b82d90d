"""Promotion runs: `promote_tenant` (prepare → cut over → complete, each phase recorded in
`promotions`), `roll_back_promotion` (back to the shared schema within the window) and
`remove_shared_schema` (after it). Each is tagged with its tenant, so it never runs beside
another change of that tenant.

Re-running a run that died (its process killed, the machine gone) resumes from the recorded
phase: before the switch the tenant is put back on its shared schema and the promotion marked
failed; from the switch on the promotion finishes on the dedicated side.
"""

import datetime as dt
import time
import uuid
from typing import Any

import dagster as dg

from rp9_pipelines.catalog import promotions as catalog
from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.defs.tenants.jobs import mark_failed
from rp9_pipelines.domain.promotion import BOOT_READS, after_switch
from rp9_pipelines.launches import KIND_TAG
from rp9_pipelines.resources.tenant_copy import TenantCopy
from rp9_pipelines.services import promotion as promote
from rp9_pipelines.services import tenants
from rp9_pipelines.services.promotion import PromotionFailed, PromotionResources


class PromotionRef(dg.Config):
    promotion_id: str


class PromotionRequest(dg.Config):
    """The promotion to carry out (the API and the sensor record it first), or, from the
    Dagster UI, the tenant (UUID or slug) to promote: an operator approving a proposal."""

    promotion_id: str = ""
    tenant_id: str = ""


def _requested(r: PromotionResources, config: PromotionRequest) -> str:
    if config.promotion_id:
        return config.promotion_id
    if not config.tenant_id:
        raise ValueError("give promotion_id, or tenant_id to promote a tenant")
    tenant = tenants.load(r.stack, config.tenant_id)
    return str(promote.CatalogPromotions(r.stack.catalog.engine).start(tenant, "manual"))


def _load(r: PromotionResources, promotion_id: str) -> tuple[dict[str, Any], Tenant]:
    with r.stack.catalog.begin() as connection:
        found = catalog.get(connection, uuid.UUID(promotion_id))
        if found is None:
            raise ValueError(f"no promotion {promotion_id}")
        tenant = tenant_catalog.require_tenant(connection, found["tenant_id"])
    return found, tenant


def _fail_back(
    context: dg.OpExecutionContext,
    r: PromotionResources,
    promotion: dict[str, Any],
    tenant: Tenant,
    error: BaseException,
) -> None:
    """Before the switch: the tenant back on its shared schema, serving, the promotion failed
    with why. A rollback that fails too leaves the tenant `promoting`, for a re-run."""
    why = f"{promotion['phase']}: {type(error).__name__}: {error}"
    context.log.error(f"promotion failed at {why}; returning {tenant.slug} to its shared schema")
    promote.roll_back(r, tenant, context.log.info)
    promote.end_release(r, tenant)
    # The copy never served: it goes (a new promotion makes a new one).
    dedicated = promote.sides(tenant)[1]
    if r.stack.tenant_db.exists(dedicated):
        r.stack.tenant_db.drop(dedicated)
    tenants.set_status(r.stack, promote.as_tier(tenant, "shared"), status="active")
    promote.finish(r, promotion["id"], "failed", error=why[:2000])


@dg.op
def prepare_dedicated(
    context: dg.OpExecutionContext, config: PromotionRequest, promotion: PromotionResources
) -> str:
    """Build the dedicated database from the n8n template and fill it from one snapshot of the
    shared schema, while the tenant serves. A re-run of a cutover that died rolls it back."""
    promotion_id = _requested(promotion, config)
    found, tenant = _load(promotion, promotion_id)
    with tenants.acting_on(promotion.stack, str(tenant.id), "promote"):
        if found["status"] != "running":
            raise PromotionFailed(f"promotion {promotion_id} is {found['status']}")
        if found["phase"] in ("holding", "frozen", "verified") and tenant.tier == "shared":
            error = PromotionFailed(f"the run was interrupted at {found['phase']}")
            _fail_back(context, promotion, found, tenant, error)
            raise error
        if found["phase"] in ("requested", "preparing"):
            try:
                promote.prepare(promotion, tenant, found["id"], context.log.info)
            except Exception as error:
                _fail_back(context, promotion, found, tenant, error)
                raise
    return promotion_id


@dg.op
def cut_over(
    context: dg.OpExecutionContext, promotion_id: str, promotion: PromotionResources
) -> str:
    """Hold the tenant's requests, freeze and drain its shared n8n, catch the copy up and
    compare it, start its n8n on the dedicated database, release what was held. Any failure
    before the switch returns it to the shared schema."""
    found, tenant = _load(promotion, promotion_id)
    log = context.log.info
    with tenants.acting_on(promotion.stack, str(tenant.id), "promote"):
        # The catalog names the tenant dedicated from the switch on, even if the run died
        # before it could record the phase.
        if after_switch(found["phase"]) or tenant.tier == "dedicated":
            log(f"already switched ({found['phase']}): making sure the dedicated side serves")
            promote.serve(promotion, tenant, log, roles={"main"})
            if promote.held(promotion, tenant):
                promote.unroute_release(promotion, tenant)
                promote.release(promotion, tenant)
            if not after_switch(found["phase"]):
                now = dt.datetime.now(dt.UTC)
                until = now + dt.timedelta(seconds=promotion.rollback_window_s)
                promote.record(
                    promotion,
                    found["id"],
                    "switched",
                    {"switched_at": now, "rollback_until": until},
                )
            return promotion_id
        shared, dedicated = promote.sides(tenant)
        copy = TenantCopy(promotion.stack.tenant_db, shared, dedicated)
        try:
            # The dedicated main boots while the shared one serves, up to its first read of
            # a table of the copy beyond `BOOT_READS`, which waits until the copy is exact
            # (the end of `locked`).
            copy.withhold(BOOT_READS)
            with copy.locked(BOOT_READS):
                main, boot_s = promote.boot(promotion, tenant, copy, log)
                # Waiting on the copy it uses no CPU: first from now on, before the hold.
                tenants.boost(promotion.stack, tenant, main)
                started = dt.datetime.now(dt.UTC)
                route_s = promote.hold(promotion, tenant)
                promote.record(
                    promotion,
                    found["id"],
                    "holding",
                    boot_s=round(boot_s, 3),
                    hold_route_s=round(route_s, 3),
                )
                promote.route_release(promotion, tenant, main)
                frozen = promote.freeze(promotion, tenant, shared, log)
                promote.record(promotion, found["id"], "frozen", None, **frozen.figures())
                found, _ = _load(promotion, promotion_id)
                promote.catch_up(promotion, copy, found, log)
                committing = time.monotonic()
            commit_s = time.monotonic() - committing
            moved, ready_s = promote.switch(promotion, tenant, main)
        except Exception as error:
            found, _ = _load(promotion, promotion_id)
            _fail_back(context, promotion, found, tenant, error)
            raise
        release_s = promote.release(promotion, moved)
        now = dt.datetime.now(dt.UTC)
        hold_s = (now - started).total_seconds()
        window = dt.timedelta(seconds=promotion.rollback_window_s)
        promote.record(
            promotion,
            found["id"],
            "switched",
            {"switched_at": now, "rollback_until": now + window},
            hold_s=round(hold_s, 3),
            commit_s=round(commit_s, 3),
            ready_s=round(ready_s, 3),
            release_s=round(release_s, 3),
        )
        log(f"switched to {moved.names.db_name}; requests were held {hold_s:.1f} s")
    return promotion_id


@dg.op
def complete(
    context: dg.OpExecutionContext, promotion_id: str, promotion: PromotionResources
) -> None:
    """The dedicated workers, then back to the tenant's own route once the held backlog is
    answered; the tenant is active on its own database, its shared schema kept for the
    rollback window."""
    found, tenant = _load(promotion, promotion_id)
    with tenants.acting_on(promotion.stack, str(tenant.id), "promote"):
        # The workers boot in the background while the main answers the backlog past the edge
        # limits: a webhook its workflow answers waits in the queue for them.
        promote.settle(promotion, tenant, context.log.info)
        tenants.set_status(promotion.stack, tenant, status="active", last_error=None)
        promote.record(promotion, found["id"], "done")
        promote.finish(promotion, found["id"], "succeeded")
    context.log.info(f"{tenant.slug} promoted; rollback possible until {found['rollback_until']}")


@dg.job(tags={KIND_TAG: "tenant"}, hooks={mark_failed}, executor_def=dg.in_process_executor)
def promote_tenant() -> None:
    """Move a shared tenant to a dedicated database, live, with a held cutover."""
    complete(cut_over(prepare_dedicated()))


@dg.op
def return_to_shared(
    context: dg.OpExecutionContext, config: PromotionRef, promotion: PromotionResources
) -> None:
    """Within the rollback window: hold, stop and drain the dedicated n8n, serve from the shared
    schema again, release; record how many executions made on the dedicated side stay behind
    (in the dedicated database, kept until the next promotion)."""
    found, tenant = _load(promotion, config.promotion_id)
    log = context.log.info
    with tenants.acting_on(promotion.stack, str(tenant.id), "promote"):
        shared, dedicated = promote.sides(tenant)
        started = time.monotonic()
        promote.hold(promotion, tenant)
        promote.freeze(promotion, tenant, dedicated, log)
        copy = TenantCopy(promotion.stack.tenant_db, shared, dedicated)
        behind = copy.executions_after(int(found["figures"].get("last_execution_id", 0)))
        released = promote.roll_back(promotion, tenant, log)
        seconds = time.monotonic() - started
        serving = (released or time.monotonic()) - started
        promote.end_release(promotion, tenant)
        tenants.set_status(promotion.stack, promote.as_tier(tenant, "shared"), status="active")
        promote.record(
            promotion,
            found["id"],
            "rolled_back",
            executions_left_behind=behind,
            # Until the shared side answered what was held, and until the run's end (the
            # backlog answered, the workers started).
            rollback_s=round(serving, 3),
            rollback_total_s=round(seconds, 3),
        )
        promote.finish(promotion, found["id"], "rolled_back")
    log(
        f"{tenant.slug} serves from its shared schema again ({serving:.1f} s; run {seconds:.1f} s);"
        f" {behind} execution(s) made on the dedicated side stay behind"
    )


@dg.job(tags={KIND_TAG: "tenant"}, hooks={mark_failed}, executor_def=dg.in_process_executor)
def roll_back_promotion() -> None:
    """Return a promoted tenant to its shared schema within the rollback window."""
    return_to_shared()


@dg.op
def drop_shared_schema(
    context: dg.OpExecutionContext, config: PromotionRef, promotion: PromotionResources
) -> None:
    """The rollback window is over: the shared schema and role of a promoted tenant go."""
    found, tenant = _load(promotion, config.promotion_id)
    if tenant.tier != "dedicated" or found["status"] != "succeeded":
        context.log.info(f"{tenant.slug} is {tenant.tier}, the promotion {found['status']}: kept")
        return
    shared, _ = promote.sides(tenant)
    promotion.stack.tenant_db.drop(shared)
    with promotion.stack.catalog.begin() as connection:
        catalog.conclude(connection, found["id"], shared_removed_at=dt.datetime.now(dt.UTC))
    context.log.info(f"removed {shared.db_schema} and role {shared.db_role} of {tenant.slug}")


@dg.job(tags={KIND_TAG: "tenant"}, executor_def=dg.in_process_executor)
def remove_shared_schema() -> None:
    """Drop a promoted tenant's shared schema once its rollback window is over."""
    drop_shared_schema()


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[promote_tenant, roll_back_promotion, remove_shared_schema])
