"""How many queue workers a tenant should run: the Kubernetes HPA algorithm over several
signals at once, with KEDA's backlog formula for the queue.

Each signal votes for a worker count against a per-worker target; the largest vote wins, inside
a tolerance band, clamped to the plan's range. A scale-up happens at once (bounded by a step);
a scale-down only to the highest recommendation of the stabilisation window, so a burst that
just ended keeps its workers for the whole window.
"""

import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

# Scale runs and their events are named from the decision, so one decision never gives two.
_EVENT_NAMESPACE = uuid.UUID("6f1d2c8e-3b7a-4d0e-9a61-2f9e5b7c4a10")
# Absorbs float noise such as 3 * (10 / 10) = 3.0000000000000004 before a ceiling.
_EPSILON = 1e-9
CURSOR_VERSION = 1


def worker_concurrency(concurrency_limit: int) -> int:
    """Jobs one worker runs at once (`n8n worker --concurrency`): the plan's concurrency, at
    most 10 (n8n's default) per worker."""
    return max(1, min(concurrency_limit, 10))


def scale_down_refusal(
    workers_to: int, slots_per_worker: int, running: int, waiting: int
) -> str | None:
    """Why scaling down to `workers_to` now would leave the tenant a backlog: the executions
    running and waiting already fill the remaining workers' slots (a worker told to go finishes
    what it runs, but everything after queues behind fewer slots). None: it may go ahead."""
    slots = workers_to * slots_per_worker
    if running + waiting <= slots:
        return None
    return (
        f"{running} executions are running and {waiting} waiting; {workers_to} worker(s) run "
        f"{slots} at once: scale down once the queue is under that, or pass force"
    )


@dataclass(frozen=True)
class Signals:
    """What was seen of one tenant; None where a source had nothing (no executions yet)."""

    workers: int
    concurrency: int
    queue_depth: int
    oldest_wait_s: float | None
    active: int
    executions_per_minute: float | None = None
    latency_p95_s: float | None = None
    queue_wait_p95_s: float | None = None

    def as_json(self) -> dict[str, float | int | None]:
        return {
            "workers": self.workers,
            "concurrency": self.concurrency,
            "queue_depth": self.queue_depth,
            "oldest_wait_s": _round(self.oldest_wait_s),
            "active": self.active,
            "executions_per_minute": _round(self.executions_per_minute),
            "latency_p95_s": _round(self.latency_p95_s),
            "queue_wait_p95_s": _round(self.queue_wait_p95_s),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


@dataclass(frozen=True)
class Policy:
    """Per-worker targets and the behaviour around them (`AUTOSCALE_*` settings)."""

    # Busy job slots over all slots, for the backlog and the throughput signals.
    target_utilisation: float = 0.8
    target_oldest_wait_s: float = 10.0
    target_queue_wait_p95_s: float = 10.0
    # An execution's duration is mostly the workflow's own, so it votes only when an operator
    # sets a target; it always sizes the throughput signal.
    target_latency_p95_s: float | None = None
    tolerance: float = 0.1
    max_step_up: int = 4
    stabilisation_window_s: float = 300.0

    def __post_init__(self) -> None:
        if not 0 < self.target_utilisation <= 1:
            raise ValueError("target_utilisation must be within (0, 1]")
        if not 0 <= self.tolerance < 1:
            raise ValueError("tolerance must be within [0, 1)")
        if self.max_step_up < 1 or self.stabilisation_window_s < 0:
            raise ValueError("max_step_up must be >= 1 and the window >= 0")
        targets = (self.target_oldest_wait_s, self.target_queue_wait_p95_s)
        if any(t <= 0 for t in targets) or (self.target_latency_p95_s or 1) <= 0:
            raise ValueError("targets must be positive")


@dataclass(frozen=True)
class Recommendation:
    at: float
    workers: int


@dataclass(frozen=True)
class Decision:
    workers_from: int
    workers_to: int
    recommended: int
    votes: Mapping[str, int]
    reason: str
    # What the next decision for this tenant needs (the window's highest recommendations).
    history: tuple[Recommendation, ...]
    # A scale-down the stabilisation window holds back.
    held: bool = False

    @property
    def change(self) -> bool:
        return self.workers_to != self.workers_from

    @property
    def direction(self) -> str:
        if self.workers_to > self.workers_from:
            return "up"
        return "down" if self.workers_to < self.workers_from else "hold"


def _hpa(current: int, ratio: float, tolerance: float) -> int:
    """HPA's rule: ceil(current * metric / target), or the current count inside the tolerance
    band. A tenant with no worker counts as one, so a ratio still means something."""
    base = max(current, 1)
    if abs(ratio - 1) <= tolerance:
        return base
    return max(0, math.ceil(base * ratio - _EPSILON))


def votes(signals: Signals, policy: Policy) -> dict[str, int]:
    """One worker count per signal that has data."""
    s, tolerance = signals, policy.tolerance
    base = max(s.workers, 1)
    slots = s.concurrency * policy.target_utilisation
    # KEDA's list scaler, in job slots: what waits or runs, over the slots a worker should keep
    # busy; so the vote is ceil(backlog / slots) outside the band, whatever runs now.
    result = {"backlog": _hpa(s.workers, (s.queue_depth + s.active) / (base * slots), tolerance)}
    if s.oldest_wait_s is not None:
        ratio = s.oldest_wait_s / policy.target_oldest_wait_s
        result["oldest_wait"] = _hpa(s.workers, ratio, tolerance)
    if s.queue_wait_p95_s is not None:
        ratio = s.queue_wait_p95_s / policy.target_queue_wait_p95_s
        result["queue_wait_p95"] = _hpa(s.workers, ratio, tolerance)
    if s.latency_p95_s and s.executions_per_minute is not None:
        # What one worker finishes per minute at this latency, at the target utilisation.
        per_worker = s.concurrency * 60 / s.latency_p95_s * policy.target_utilisation
        ratio = s.executions_per_minute / (base * per_worker)
        result["throughput"] = _hpa(s.workers, ratio, tolerance)
    if s.latency_p95_s is not None and policy.target_latency_p95_s is not None:
        ratio = s.latency_p95_s / policy.target_latency_p95_s
        result["latency_p95"] = _hpa(s.workers, ratio, tolerance)
    return result


def _describe(name: str, signals: Signals, policy: Policy) -> str:
    s, p = signals, policy
    if name == "backlog":
        return (
            f"backlog {s.queue_depth} waiting + {s.active} running, {s.concurrency} slots per "
            f"worker at {p.target_utilisation:.0%}"
        )
    if name == "oldest_wait":
        return f"oldest waiting job {s.oldest_wait_s:.1f} s (target {p.target_oldest_wait_s:g} s)"
    if name == "queue_wait_p95":
        target = p.target_queue_wait_p95_s
        return f"queue wait p95 {s.queue_wait_p95_s:.1f} s (target {target:g} s)"
    if name == "throughput":
        return (
            f"{s.executions_per_minute:.1f} executions/min at latency p95 {s.latency_p95_s:.1f} s"
        )
    return f"latency p95 {s.latency_p95_s:.1f} s (target {p.target_latency_p95_s:g} s)"


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def _compact(history: list[Recommendation], min_workers: int) -> tuple[Recommendation, ...]:
    """The window's running maximum as a monotonic queue: an entry matters only while no newer
    one is as high, and one at the plan's minimum never does (nothing goes below it)."""
    kept: list[Recommendation] = []
    for entry in sorted(history, key=lambda r: r.at):
        while kept and kept[-1].workers <= entry.workers:
            kept.pop()
        kept.append(entry)
    return tuple(r for r in kept if r.workers > min_workers)


def decide(
    signals: Signals,
    *,
    min_workers: int,
    max_workers: int,
    policy: Policy,
    history: tuple[Recommendation, ...] | None,
    now: float,
) -> Decision:
    """The worker count for one tenant now, and why.

    `history` is what the previous decision returned; None for a tenant not seen before, whose
    present size then counts as a recommendation made now (as the HPA controller does when it
    starts), so a restart never scales anything down before a full window has passed.
    """
    if min_workers > max_workers:
        raise ValueError(f"min_workers {min_workers} > max_workers {max_workers}")
    current = signals.workers
    by_signal = votes(signals, policy)
    wanted = max(by_signal.values())
    recommended = _clamp(wanted, min_workers, max_workers)
    driver = max(by_signal, key=lambda name: by_signal[name])
    why = _describe(driver, signals, policy)
    if history is None:
        history = (Recommendation(now, current),)
    window_start = now - policy.stabilisation_window_s
    recent = [r for r in history if r.at > window_start]
    recent.append(Recommendation(now, recommended))
    ceiling = max(r.workers for r in recent)
    window = f"{policy.stabilisation_window_s:g} s"
    held = False

    if recommended > current:
        # HPA's default scale-up policy: +max_step_up workers or +100 %, whichever is more;
        # never left below the plan's minimum.
        step = max(policy.max_step_up, current)
        target = max(min_workers, min(recommended, current + step))
        limits = []
        if wanted > max_workers:
            limits.append(f"{wanted} wanted, the plan allows {max_workers}")
        if target < recommended:
            limits.append(f"step bounded to +{step}")
        suffix = f" ({'; '.join(limits)})" if limits else ""
        reason = f"scale up {current}→{target}: {why} → {wanted}{suffix}"
    elif recommended < current:
        target = min(current, max(recommended, ceiling), max_workers)
        if current > max_workers:
            reason = f"scale down {current}→{target}: above the plan's maximum {max_workers}"
        elif target < current:
            reason = (
                f"scale down {current}→{target}: {why} → {recommended}; highest "
                f"recommendation over the last {window}: {ceiling}"
            )
        else:
            held = True
            reason = (
                f"hold {current}: {why} → {recommended}, but {ceiling} was recommended within "
                f"the last {window} (stabilisation)"
            )
    else:
        target = current
        reason = f"hold {current}: {why} → {wanted}" + (
            f" (the plan allows {max_workers})" if wanted > max_workers else ""
        )
    return Decision(
        workers_from=current,
        workers_to=target,
        recommended=recommended,
        votes=by_signal,
        reason=reason,
        history=_compact(recent, min_workers),
        held=held,
    )


def run_key(tenant_id: str, decision: Decision, tick: int) -> str:
    """Deterministic per tenant, change and sensor tick: a re-evaluated tick asks again with
    the same key, and Dagster launches nothing twice."""
    return f"autoscale:{tenant_id}:{decision.workers_from}->{decision.workers_to}:{tick}"


def event_id(key: str) -> uuid.UUID:
    return uuid.uuid5(_EVENT_NAMESPACE, key)


def dump_histories(histories: Mapping[str, tuple[Recommendation, ...]]) -> str:
    """The sensor's cursor: per tenant, only the recommendations that can still matter."""
    kept = {
        tenant: [[round(r.at, 1), r.workers] for r in entries]
        for tenant, entries in sorted(histories.items())
        if entries
    }
    return json.dumps({"v": CURSOR_VERSION, "history": kept}, separators=(",", ":"))


def load_histories(cursor: str | None) -> dict[str, tuple[Recommendation, ...]]:
    """Read a cursor; an unknown or unreadable one is an empty history (every tenant is then
    new, which only delays scale-downs by one window)."""
    if not cursor:
        return {}
    try:
        raw = json.loads(cursor)
        if raw.get("v") != CURSOR_VERSION:
            return {}
        return {
            str(tenant): tuple(Recommendation(float(at), int(n)) for at, n in entries)
            for tenant, entries in raw["history"].items()
        }
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}
