"""A tenant's day of usage as plain data: what its n8n recorded (executions, failures,
durations, percentiles) and what its containers consumed, derived from periodic samples of
each container's cumulative CPU time and resident memory.

Container samples are a counter (CPU nanoseconds since the container started) and a gauge
(memory bytes). Between two consecutive samples of one container:

- CPU used is the counter's increase; when the counter went *down*, the container restarted
  and the new value is all the CPU it used since (Prometheus' `increase` rule);
- memory held is the mean of the two readings over the interval (trapezoid), but only when
  the interval is no longer than `max_gap`: a longer silence means the container was not
  running (stopped, suspended, sampler down), and nothing is charged for it. CPU is charged
  across a gap all the same, because the counter says it was used;
- an interval that straddles a day boundary is shared between the days in proportion to time,
  so that the days of a month add up to the month.
"""

import datetime as dt
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

NS_PER_S = 1_000_000_000
BYTES_PER_GB = 1024**3
DEFAULT_MAX_GAP = dt.timedelta(minutes=5)
# n8n's execution statuses that mean "over": only those count as executions of a day.
UNFINISHED_STATUSES = ("new", "running", "waiting")
FAILED_STATUSES = ("error", "crashed")


@dataclass(frozen=True)
class Sample:
    """One reading of one container."""

    container: str
    at: dt.datetime
    cpu_total_ns: int
    memory_bytes: int


@dataclass(frozen=True)
class ResourceUse:
    cpu_seconds: float
    memory_gb_hours: float


@dataclass(frozen=True)
class ExecutionDay:
    """What a tenant's n8n recorded for executions that finished on one UTC day."""

    executions: int
    failures: int
    duration_ms_sum: int
    latency_p95_ms: float | None
    queue_wait_p95_ms: float | None


@dataclass(frozen=True)
class DayUsage:
    """One row of `usage` (tenant and day aside)."""

    executions: int
    failures: int
    duration_ms_sum: int
    latency_p95_ms: float | None
    queue_wait_p95_ms: float | None
    cpu_seconds: float
    memory_gb_hours: float

    def as_row(self) -> dict[str, Any]:
        return asdict(self)


def day_bounds(day: dt.date) -> tuple[dt.datetime, dt.datetime]:
    """[start, end) of a UTC day."""
    start = dt.datetime.combine(day, dt.time(0), tzinfo=dt.UTC)
    return start, start + dt.timedelta(days=1)


def _overlap_s(a: dt.datetime, b: dt.datetime, start: dt.datetime, end: dt.datetime) -> float:
    return max((min(b, end) - max(a, start)).total_seconds(), 0.0)


def resource_use(
    samples: Iterable[Sample],
    start: dt.datetime,
    end: dt.datetime,
    max_gap: dt.timedelta = DEFAULT_MAX_GAP,
) -> ResourceUse:
    """CPU-seconds and memory GB-hours of a tenant's containers within [start, end).

    Give it the samples of the window plus the last one before it (and the first after it),
    so that the intervals crossing the window's edges are counted in part.
    """
    by_container: dict[str, list[Sample]] = {}
    for sample in samples:
        by_container.setdefault(sample.container, []).append(sample)
    cpu_ns, memory_byte_s = 0.0, 0.0
    for series in by_container.values():
        series.sort(key=lambda s: s.at)
        for before, after in itertools.pairwise(series):
            span = (after.at - before.at).total_seconds()
            if span <= 0:
                continue
            inside = _overlap_s(before.at, after.at, start, end)
            if inside == 0:
                continue
            used = after.cpu_total_ns - before.cpu_total_ns
            if used < 0:  # restarted: the counter began again from zero
                used = after.cpu_total_ns
            cpu_ns += used * inside / span
            if after.at - before.at <= max_gap:
                memory_byte_s += (before.memory_bytes + after.memory_bytes) / 2 * inside
    return ResourceUse(
        cpu_seconds=cpu_ns / NS_PER_S, memory_gb_hours=memory_byte_s / BYTES_PER_GB / 3600
    )


def percentile_cont(values: Sequence[float], fraction: float) -> float | None:
    """Postgres' `percentile_cont`: linear interpolation between the closest ranks."""
    if not values:
        return None
    ordered = sorted(values)
    position = fraction * (len(ordered) - 1)
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def day_usage(executions: ExecutionDay, resources: ResourceUse) -> DayUsage:
    """The `usage` row: the n8n figures as recorded, resources rounded to what a bill needs
    (a millisecond of CPU, a micro-GB-hour), so re-computations compare equal."""
    return DayUsage(
        executions=executions.executions,
        failures=executions.failures,
        duration_ms_sum=executions.duration_ms_sum,
        latency_p95_ms=_round(executions.latency_p95_ms, 1),
        queue_wait_p95_ms=_round(executions.queue_wait_p95_ms, 1),
        cpu_seconds=round(resources.cpu_seconds, 3),
        memory_gb_hours=round(resources.memory_gb_hours, 6),
    )


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def business_metrics_row(
    tenant_id: str, slug: str, plan: str, day: dt.date, usage: Mapping[str, Any]
) -> dict[str, Any]:
    """The Supabase `business_metrics_daily` row of a tenant's day (JSON-ready)."""
    executions = int(usage["executions"])
    failures = int(usage["failures"])
    return {
        "tenant_id": tenant_id,
        "tenant_slug": slug,
        "plan": plan,
        "day": day.isoformat(),
        "executions": executions,
        "failures": failures,
        "error_rate": round(failures / executions, 6) if executions else 0.0,
        "duration_ms_sum": int(usage["duration_ms_sum"]),
        "latency_p95_ms": usage["latency_p95_ms"],
        "queue_wait_p95_ms": usage["queue_wait_p95_ms"],
        "cpu_seconds": float(usage["cpu_seconds"]),
        "memory_gb_hours": float(usage["memory_gb_hours"]),
    }


def supabase_identifier(tenant_id: str, day: dt.date) -> str:
    """The ledger identifier of a tenant's day in Supabase: one row there, upserted, so one
    ledger row here, updated with what was last sent."""
    return f"business_metrics:{tenant_id}:{day.isoformat()}"
