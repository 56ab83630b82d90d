"""Plan enforcement: the `enforce_limits` job (schedule every 5 minutes, `POST /enforcement/run`)
warns at 80 % and 100 % of a tenant's monthly executions, suspends it at 100 % unless overage
is allowed, and resumes what it suspended once a new period began or the quota grew."""

import datetime as dt
from typing import Any

import dagster as dg
from pydantic import Field

from rp9_pipelines import launches
from rp9_pipelines.launches import ENFORCEMENT_KIND, IN_FLIGHT, KIND_TAG
from rp9_pipelines.resources.stack import StackResources
from rp9_pipelines.services.enforcement import enforce
from rp9_pipelines.settings import EnforcementSettings, PlatformSettings

SCHEDULE_NAME = "enforce_limits_every_5_minutes"


class EnforceRequest(dg.Config):
    # Slugs or ids; empty: every tenant that ENFORCEMENT_TENANTS matches.
    tenants: list[str] = Field(default_factory=list)
    # The enforcement clock, ISO 8601 with a timezone (default: now). For drills and tests of a
    # period change; the API never sets it.
    as_of: str | None = None


@dg.op
def enforce_quotas(
    context: dg.OpExecutionContext,
    config: EnforceRequest,
    stack: StackResources,
    settings: dg.ResourceParam[PlatformSettings],
) -> dict[str, Any]:
    """Judge every active or suspended tenant on its month-to-date executions, record each
    threshold's event once per period, suspend or resume, and deliver the events to the
    warnings webhook. Fails (after doing everything it could) when a tenant's action failed."""
    now = dt.datetime.fromisoformat(config.as_of) if config.as_of else dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("as_of needs a timezone (e.g. 2026-12-01T00:00:00+00:00)")
    outcome = enforce(
        stack,
        settings.enforcement,
        refs=config.tenants,
        now=now,
        in_flight=launches.tenants_in_flight(context.instance),
        run_id=context.run_id,
        log=context.log.info,
    )
    summary = outcome.summary()
    context.add_output_metadata(
        {
            "period": outcome.period,
            "judged": len(outcome.judged),
            "events": len(outcome.events),
            "suspended": dg.MetadataValue.json(outcome.suspended),
            "resumed": dg.MetadataValue.json(outcome.resumed),
            "reconciled": dg.MetadataValue.json(outcome.reconciled),
            "deferred": dg.MetadataValue.json(outcome.deferred),
            "delivered": summary["delivered"],
        }
    )
    if outcome.failed or outcome.unreadable:
        raise dg.Failure(
            description=f"enforcement failed for {sorted(outcome.failed)}; unreadable "
            f"tenants {sorted(outcome.unreadable)}",
            metadata={"summary": dg.MetadataValue.json(summary)},
        )
    return summary


# The queue (`dagster.yaml`) runs one at a time, scheduled or from the API, by this kind.
@dg.job(tags={KIND_TAG: ENFORCEMENT_KIND}, executor_def=dg.in_process_executor)
def enforce_limits() -> None:
    """Apply every tenant's plan limits: warn, suspend or allow overage, resume."""
    enforce_quotas()


def build_schedule(settings: EnforcementSettings) -> dg.ScheduleDefinition:
    @dg.schedule(
        name=SCHEDULE_NAME,
        cron_schedule="*/5 * * * *",
        job=enforce_limits,
        execution_timezone="UTC",
        default_status=(
            dg.DefaultScheduleStatus.RUNNING
            if settings.enabled
            else dg.DefaultScheduleStatus.STOPPED
        ),
    )
    def schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        running = context.instance.get_runs(
            filters=dg.RunsFilter(
                job_name=enforce_limits.name,
                statuses=IN_FLIGHT,
                tags={KIND_TAG: ENFORCEMENT_KIND},
            ),
            limit=1,
        )
        if running:
            return dg.SkipReason(f"enforcement run {running[0].run_id} is still in flight")
        return launches.enforcement(None, requested_by=SCHEDULE_NAME).run_request()

    return schedule


@dg.definitions
def defs() -> dg.Definitions:
    settings = PlatformSettings().enforcement
    return dg.Definitions(jobs=[enforce_limits], schedules=[build_schedule(settings)])
