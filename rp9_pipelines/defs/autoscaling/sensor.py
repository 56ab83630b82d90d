"""The worker autoscaler: a sensor that judges every managed tenant each tick and requests a
`scale_tenant` run for each one whose worker count should change (removed workers drain)."""

import time

import dagster as dg

from rp9_pipelines import launches
from rp9_pipelines.catalog import autoscaling as autoscaling_catalog
from rp9_pipelines.domain.autoscaling import dump_histories, event_id, load_histories, run_key
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.resources.prometheus import PrometheusResource
from rp9_pipelines.resources.redis_queue import RedisResource
from rp9_pipelines.services.autoscaling import Judged, Tick, evaluate
from rp9_pipelines.settings import AutoscalingSettings, PlatformSettings

SENSOR_NAME = "autoscale_workers"


def scale_request(judged: Judged, key: str) -> dg.RunRequest:
    candidate, decision = judged.observation.candidate, judged.decision
    launch = launches.autoscale(
        str(candidate.id), candidate.slug, decision.workers_to, str(event_id(key))
    )
    return launch.run_request(run_key=key)


def _names(items: list[str], limit: int = 5) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def summary(tick: Tick) -> str:
    """Why nothing was requested, in a line the Dagster UI shows for the tick."""
    held = [j for j in tick.judged if j.decision.held]
    counted = [f"{len(tick.judged)} judged"]
    if held:
        counted.append(
            "scale-down held by the stabilisation window for "
            + _names([f"{j.observation.candidate.slug} ({j.decision.reason})" for j in held])
        )
    if tick.in_flight:
        counted.append("a run already in flight for " + _names([c.slug for c in tick.in_flight]))
    return (
        "no worker count to change: "
        + "; ".join(counted)
        + "".join(f"; {note}" for note in tick.notes)
    )


def build_autoscaler(settings: AutoscalingSettings) -> dg.SensorDefinition:
    """The sensor, shaped by `AUTOSCALE_*` (its interval and default status are fixed when the
    code location loads)."""
    policy = settings.policy()

    @dg.sensor(
        name=SENSOR_NAME,
        job_name="scale_tenant",
        minimum_interval_seconds=settings.interval_s,
        default_status=(
            dg.DefaultSensorStatus.RUNNING if settings.enabled else dg.DefaultSensorStatus.STOPPED
        ),
    )
    def autoscale_workers(
        context: dg.SensorEvaluationContext,
        catalog: CatalogResource,
        redis: RedisResource,
        n8n_data: N8nDataResource,
        prometheus: PrometheusResource,
    ) -> dg.SensorResult:
        """Scale each active tenant's queue workers from its queue (Redis) and its executions
        (Postgres, Prometheus): up at once, down after the stabilisation window."""
        now = time.time()
        started = time.perf_counter()
        with catalog.begin() as connection:
            candidates = autoscaling_catalog.candidates(connection, settings.tenants)
        catalog_ms = round((time.perf_counter() - started) * 1000, 1)
        histories = load_histories(context.cursor)
        if not candidates:
            return dg.SensorResult(
                skip_reason=f"no active tenant matches AUTOSCALE_TENANTS={settings.tenants!r}",
                cursor=dump_histories({}),
            )
        tick = evaluate(
            candidates,
            histories,
            launches.tenants_in_flight(context.instance),
            redis=redis,
            n8n_data=n8n_data,
            prometheus=prometheus,
            policy=policy,
            signal_window_s=settings.signal_window_s,
            now=now,
        )
        tick.timings_ms["catalog"] = catalog_ms
        number = int(now // settings.interval_s)
        requests, events = [], []
        for judged in tick.changes:
            candidate, decision = judged.observation.candidate, judged.decision
            key = run_key(str(candidate.id), decision, number)
            requests.append(scale_request(judged, key))
            events.append(
                {
                    "id": event_id(key),
                    "tenant_id": candidate.id,
                    "signals": {**judged.observation.as_json(), "votes": dict(decision.votes)},
                    "workers_from": decision.workers_from,
                    "workers_to": decision.workers_to,
                    "reason": decision.reason,
                }
            )
            context.log.info(f"{candidate.slug}: {decision.reason}")
        with catalog.begin() as connection:
            autoscaling_catalog.record_events(connection, events)
        for note in tick.notes:
            context.log.warning(note)
        context.log.info(
            f"judged {len(tick.judged)} tenant(s) ({tick.read_from_databases} read from their "
            f"databases), {len(tick.in_flight)} with a run in flight, in "
            f"{(time.perf_counter() - started) * 1000:.0f} ms: {tick.timings_ms}"
        )
        cursor = dump_histories(tick.histories)
        if not requests:
            return dg.SensorResult(skip_reason=summary(tick), cursor=cursor)
        return dg.SensorResult(run_requests=requests, cursor=cursor)

    return autoscale_workers


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(sensors=[build_autoscaler(PlatformSettings().autoscaling)])
