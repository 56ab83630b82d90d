"""`promotion_candidates`: which shared tenants should move to a dedicated database. Each tick
judges every active shared tenant on its collected usage and its compliance flag
(`domain/promotion.py`) and records the day's decision with its reasons (`promotion_decisions`);
a proposal waits for an operator, who sees them in the tick's summary and the catalog."""

import datetime as dt

import dagster as dg

from rp9_pipelines.catalog import promotions
from rp9_pipelines.domain.promotion import Judgement, PromotionPolicy, judge
from rp9_pipelines.resources.catalog import CatalogResource

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
    policy: PromotionPolicy, today: dt.date | None = None
) -> dg.SensorDefinition:
    """The sensor under `policy`; `today` fixes the day judged (tests), else the UTC date."""

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=INTERVAL_S,
        default_status=dg.DefaultSensorStatus.RUNNING,
    )
    def promotion_candidates(
        context: dg.SensorEvaluationContext, catalog: CatalogResource
    ) -> dg.SkipReason:
        """Judge each shared tenant's usage (executions against its plan, sustained latency and
        queue wait, its share of the shared tier's CPU) and compliance flag; record why."""
        day = today or dt.datetime.now(dt.UTC).date()
        since = day - dt.timedelta(days=policy.window_days)
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
            if judgement.propose:
                context.log.info(
                    f"{tenant.slug}: promotion proposed ({judgement.trigger}): "
                    + "; ".join(judgement.reasons)
                )
        return dg.SkipReason(summary([(t.slug, j) for t, j in judged]))

    return promotion_candidates


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(sensors=[build_promotion_candidates(PromotionPolicy())])
