"""The autoscaler's shell: gather every managed tenant's signals in bulk, decide with
`domain.autoscaling`, and hand back what changes. One tick costs a fixed number of round trips
(catalog, Redis, Prometheus) plus one connection per tenant database that has work to judge."""

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from rp9_pipelines.catalog.autoscaling import Candidate
from rp9_pipelines.domain.autoscaling import (
    Decision,
    Policy,
    Recommendation,
    Signals,
    decide,
    worker_concurrency,
)
from rp9_pipelines.resources.n8n_data import ExecutionWindow, N8nDataResource
from rp9_pipelines.resources.prometheus import ExecutionRates, PrometheusResource
from rp9_pipelines.resources.redis_queue import QueueSnapshot, RedisResource


@dataclass(frozen=True)
class Observation:
    candidate: Candidate
    signals: Signals
    # Where each figure came from ("redis", "db", "prometheus"), for the event row.
    sources: Mapping[str, str]

    def as_json(self) -> dict[str, object]:
        return {**self.signals.as_json(), "sources": dict(self.sources)}


@dataclass
class Gathered:
    observations: list[Observation]
    timings_ms: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    read_from_databases: int = 0
    # Tenants whose queue could not be read (malformed keys): not judged this tick.
    unreadable: list[Candidate] = field(default_factory=list)


@dataclass(frozen=True)
class Judged:
    observation: Observation
    decision: Decision


@dataclass
class Tick:
    judged: list[Judged]
    in_flight: list[Candidate]
    histories: dict[str, tuple[Recommendation, ...]]
    timings_ms: dict[str, float]
    notes: list[str]
    read_from_databases: int

    @property
    def changes(self) -> list[Judged]:
        return [j for j in self.judged if j.decision.change]


class _Stopwatch:
    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    def lap(self, name: str, started: float) -> None:
        self.timings[name] = round((time.perf_counter() - started) * 1000, 1)


def _needs_executions(candidate: Candidate, queue: QueueSnapshot) -> bool:
    """Only a tenant with work, or with more than its minimum, can decide differently with its
    execution history; an idle one at its minimum is left alone (most of a fleet, mostly)."""
    return bool(queue.waiting or queue.active or candidate.workers > candidate.limits.min_workers)


def gather(
    candidates: list[Candidate],
    *,
    redis: RedisResource,
    n8n_data: N8nDataResource,
    prometheus: PrometheusResource | None,
    signal_window_s: int,
) -> Gathered:
    """Queue depth, head-of-line age and running jobs of every tenant from Redis (two pipelined
    round trips); executions/min and latency p95 of every tenant from Prometheus when it is
    configured (two queries); queue-wait p95 (and the others, without Prometheus) from the
    `execution_entity` of the tenants with work to judge."""
    gathered = Gathered([])
    watch = _Stopwatch(gathered.timings_ms)
    started = time.perf_counter()
    snapshots = redis.queue_snapshots([c.names.bull_prefix for c in candidates])
    watch.lap("redis", started)
    # A tenant writes its own keys as it likes: one whose queue cannot be read is left out of
    # this tick (its figures would be zeros, a scale-down), and the others are judged as usual.
    queues: dict[str, QueueSnapshot] = {}
    for candidate in candidates:
        queue = snapshots[candidate.names.bull_prefix]
        if queue.readable:
            queues[candidate.names.bull_prefix] = queue
        else:
            gathered.unreadable.append(candidate)
            gathered.notes.append(f"queue of {candidate.slug} unreadable: {queue.error}")
    candidates = [c for c in candidates if c.names.bull_prefix in queues]

    rates: dict[str, ExecutionRates] = {}
    if prometheus is not None and prometheus.configured:
        started = time.perf_counter()
        try:
            rates = prometheus.execution_rates(signal_window_s)
        except Exception as error:
            gathered.notes.append(f"Prometheus unavailable, executions from the databases: {error}")
        watch.lap("prometheus", started)

    busy = [c for c in candidates if _needs_executions(c, queues[c.names.bull_prefix])]
    started = time.perf_counter()
    result = n8n_data.execution_windows([c.names for c in busy], signal_window_s)
    watch.lap("databases", started)
    gathered.read_from_databases = len(busy)
    gathered.notes.extend(
        f"executions of {slug} unreadable: {e}" for slug, e in result.errors.items()
    )
    busy_slugs = {c.slug for c in busy}
    # Unreadable executions are left out like an unreadable queue: judged on no figures, a busy
    # tenant would look idle and be scaled down.
    gathered.unreadable.extend(c for c in candidates if c.slug in result.errors)
    candidates = [c for c in candidates if c.slug not in result.errors]

    for candidate in candidates:
        queue = queues[candidate.names.bull_prefix]
        sources = {"queue": "redis"}
        window: ExecutionWindow | None = result.windows.get(candidate.slug)
        per_minute = latency = queue_wait = None
        if window is not None:
            per_minute = window.per_minute
            latency = window.latency_p95_ms / 1000 if window.latency_p95_ms is not None else None
            queue_wait = (
                window.queue_wait_p95_ms / 1000 if window.queue_wait_p95_ms is not None else None
            )
            sources["executions"] = sources["queue_wait"] = "db"
        elif candidate.slug in busy_slugs:
            per_minute = 0.0  # no table yet: nothing ran
        rate = rates.get(candidate.slug)
        if rate is not None:
            per_minute, latency = rate.per_minute, rate.latency_p95_s
            sources["executions"] = "prometheus"
        signals = Signals(
            workers=candidate.workers,
            concurrency=worker_concurrency(candidate.limits.concurrency),
            queue_depth=queue.waiting,
            oldest_wait_s=queue.oldest_wait_s,
            active=queue.active,
            executions_per_minute=per_minute,
            latency_p95_s=latency,
            queue_wait_p95_s=queue_wait,
        )
        gathered.observations.append(Observation(candidate, signals, sources))
    return gathered


def evaluate(
    candidates: list[Candidate],
    histories: Mapping[str, tuple[Recommendation, ...]],
    in_flight: Iterable[str],
    *,
    redis: RedisResource,
    n8n_data: N8nDataResource,
    prometheus: PrometheusResource | None,
    policy: Policy,
    signal_window_s: int,
    now: float,
) -> Tick:
    """One autoscaler tick over `candidates`. A tenant with a run in flight (any tenant run: a
    scale, a suspend...) is not judged: its count is about to change, and its history is kept;
    so is the history of a tenant whose queue could not be read."""
    busy_ids = set(in_flight)
    waiting = [c for c in candidates if str(c.id) in busy_ids]
    judged_now = [c for c in candidates if str(c.id) not in busy_ids]
    gathered = gather(
        judged_now,
        redis=redis,
        n8n_data=n8n_data,
        prometheus=prometheus,
        signal_window_s=signal_window_s,
    )
    started = time.perf_counter()
    judged = []
    kept = [*waiting, *gathered.unreadable]
    next_histories = {str(c.id): histories[str(c.id)] for c in kept if str(c.id) in histories}
    for observation in gathered.observations:
        tenant_id = str(observation.candidate.id)
        decision = decide(
            observation.signals,
            min_workers=observation.candidate.limits.min_workers,
            max_workers=observation.candidate.limits.max_workers,
            policy=policy,
            history=histories.get(tenant_id),
            now=now,
        )
        judged.append(Judged(observation, decision))
        next_histories[tenant_id] = decision.history
    gathered.timings_ms["decide"] = round((time.perf_counter() - started) * 1000, 1)
    return Tick(
        judged,
        waiting,
        next_histories,
        gathered.timings_ms,
        gathered.notes,
        gathered.read_from_databases,
    )
