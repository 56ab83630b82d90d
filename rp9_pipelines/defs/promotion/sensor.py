"""`promotion_candidates`: which shared tenants should move to a dedicated database. Each tick
judges every active shared tenant on its collected usage and its compliance flag
(`domain/promotion.py`) and records the day's decision with its reasons (`promotion_decisions`);
a proposal waits for an operator, who sees them in the tick's summary and the catalog, and
approves one with `POST /tenants/{id}/promote` (or, with PROMOTION_MODE=auto, the sensor starts
the promotion itself). `promotion_windows` removes a promoted tenant's shared schema once its
rollback window is over."""

import datetime as dt

import dagster as dg

from rp9_pipelines import launches
from rp9_pipelines.catalog import promotions
from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.domain.promotion import Judgement, PromotionPolicy, judge
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.settings import PlatformSettings

SENSOR_NAME = "promotion_candidates"
# Usage is collected per day: judging more often only repeats the day's decision.
INTERVAL_S = 3600


def summary(judged: list[tuple[str, Judgement]]) -> str:
    proposed = [f"{slug} ({j.trigger})" for slug, j in judged if j.propose]
    if not proposed:
        return f"{len(judged)} shared tenant(s) judged: none to promote"
    return (
        f"{len(judged)} shared tenant(s) judged; promotion proposed for an operator to approve: "
        + ", ".join(proposed)
    )


def build_promotion_candidates(
    policy: PromotionPolicy, today: dt.date | None = None, mode: str = "propose"
) -> dg.SensorDefinition:
    """The sensor under `policy`; `today` fixes the day judged (tests), else the UTC date. In
    "auto" `mode` each proposal also starts its promotion (one at a time per tenant)."""

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def promotion_candidates(
        context: dg.SensorEvaluationContext, catalog: CatalogResource
    ) -> dg.SensorResult | dg.SkipReason:
        """Judge each shared tenant's usage (executions against its plan, sustained latency and
        queue wait, its share of the shared tier's CPU) and compliance flag; record why."""
        day = today or dt.datetime.now(dt.UTC).date()
        since = day - dt.timedelta(days=policy.window_days)
        requests = []
        with catalog.begin() as connection:
            shared = promotions.shared_tenants(connection, since)
            shared_cpu = sum(d.cpu_seconds for tenant in shared for d in tenant.days)
            judged = [
                (
                    tenant,
                    judge(
                        requires_dedicated=tenant.requires_dedicated,
                        days=tenant.days,
                        executions_per_month=tenant.executions_per_month,
                        shared_cpu_seconds=shared_cpu,
                        policy=policy,
                    ),
                )
                for tenant in shared
            ]
            promotions.record_decisions(connection, day, [(t.id, j) for t, j in judged])
            for tenant, judgement in judged:
                if mode == "auto" and judgement.propose and judgement.trigger:
                    try:
                        promotion_id = promotions.start(connection, tenant.id, judgement.trigger)
                    except promotions.PromotionRunning:
                        continue
                    launch = launches.promotion(
                        "promote_tenant",
                        str(promotion_id),
                        str(tenant.id),
                        tenant.slug,
                        SENSOR_NAME,
                    )
                    requests.append(launch.run_request(run_key=str(promotion_id)))
        for tenant, judgement in judged:
            if judgement.propose:
                context.log.info(
                    f"{tenant.slug}: promotion proposed ({judgement.trigger}): "
                    + "; ".join(judgement.reasons)
                )
        if requests:
            return dg.SensorResult(run_requests=requests)
        return dg.SkipReason(summary([(t.slug, j) for t, j in judged]))

    return promotion_candidates


WINDOWS_SENSOR = "promotion_windows"


@dg.sensor(
    name=WINDOWS_SENSOR,
    minimum_interval_seconds=600,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def promotion_windows(
    context: dg.SensorEvaluationContext, catalog: CatalogResource
) -> dg.SensorResult | dg.SkipReason:
    """A promoted tenant's shared schema goes once its rollback window is over."""
    with catalog.begin() as connection:
        due = promotions.to_remove(connection, dt.datetime.now(dt.UTC))
        slugs = {
            row["tenant_id"]: tenant_catalog.require_tenant(connection, row["tenant_id"]).slug
            for row in due
        }
    if not due:
        return dg.SkipReason("no rollback window is over")
    return dg.SensorResult(
        run_requests=[
            launches.promotion(
                "remove_shared_schema",
                str(row["id"]),
                str(row["tenant_id"]),
                slugs[row["tenant_id"]],
                WINDOWS_SENSOR,
            ).run_request(run_key=f"remove-shared-{row['id']}")
            for row in due
        ]
    )


@dg.definitions
def defs() -> dg.Definitions:
    mode = PlatformSettings().promotion.mode
    return dg.Definitions(
        sensors=[build_promotion_candidates(PromotionPolicy(), mode=mode), promotion_windows]
    )
