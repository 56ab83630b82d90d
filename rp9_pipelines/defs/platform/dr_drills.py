"""The platform DR drill: rebuild the platform from S3 alone in a scratch environment, prove
every active tenant comes back, tear down, and record the RTO and RPO. A failed drill fails
its run."""

import datetime as dt
import uuid
from typing import Any

import dagster as dg
from pydantic import Field

from rp9_pipelines.catalog import platform_recovery as catalog
from rp9_pipelines.launches import KIND_TAG
from rp9_pipelines.resources.stack import DrillResources, PlatformBackupResources
from rp9_pipelines.services.backups import describe
from rp9_pipelines.services.platform_dr_drills import (
    STALE_DRILL,
    PlatformDrillOutcome,
    record,
    run_platform_drill,
    summary,
)

PLATFORM_DR_DRILL_KIND = "platform_dr_drill"


class PlatformDrillRequest(dg.Config):
    drill_id: str | None = None  # chosen by the API so it can answer with it
    tenants: list[str] = Field(default_factory=list)  # slugs; default: every active tenant


@dg.op
def run_platform_dr_drill(
    context: dg.OpExecutionContext,
    config: PlatformDrillRequest,
    drill: DrillResources,
    platform_backup: PlatformBackupResources,
) -> dict[str, Any]:
    """Restore the newest complete platform set (catalog, secrets, Dagster storage) and every
    active tenant's newest verified backup into a scratch environment; boot each tenant's n8n,
    run a canary and decrypt its credentials; tear down; record RTO and RPO."""
    drill_id = uuid.UUID(config.drill_id) if config.drill_id else uuid.uuid4()
    now = dt.datetime.now(dt.UTC)
    with drill.catalog.begin() as connection:
        stale = [
            d["id"]
            for d in catalog.running_drills(connection)
            if d["started_at"] < now - STALE_DRILL
        ]
        catalog.fail_interrupted_drills(connection, stale)
        catalog.insert_drill(connection, drill_id=drill_id, run_id=context.run_id, request_id=None)
    try:
        outcome = run_platform_drill(
            drill,
            platform_backup.backup_key,
            drill_id,
            context.log.info,
            frozenset(config.tenants),
        )
    except BaseException as error:  # interrupted: the row must not say running
        record(drill, PlatformDrillOutcome(drill_id, error=describe(error)))
        raise
    record(drill, outcome)
    context.log.info(f"platform DR drill {drill_id}: {summary(outcome)}")
    if not outcome.passed:
        failed = [c.name for c in outcome.checks if not c.ok]
        failed += [t["slug"] for t in outcome.tenants if not t["passed"]]
        raise dg.Failure(
            description=f"platform DR drill {drill_id} failed: {outcome.error or failed}",
            metadata={"drill_id": str(drill_id)},
        )
    return {
        "drill_id": str(drill_id),
        "rto_seconds": outcome.rto_seconds,
        "rpo_seconds": outcome.rpo_seconds,
        "tenants": len(outcome.tenants),
    }


@dg.job(tags={KIND_TAG: PLATFORM_DR_DRILL_KIND}, executor_def=dg.in_process_executor)
def platform_dr_drill() -> None:
    """Rebuild the platform from S3 alone in a scratch environment and prove every tenant."""
    run_platform_dr_drill()


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[platform_dr_drill])
