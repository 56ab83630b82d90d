"""Which shared tenants should move to a dedicated database, and why (the `promotion_candidates`
sensor's judgement, DESIGN.md flow 9).

A shared tenant is judged on the days of usage the platform collected (`usage`: executions,
latency p95, queue-wait p95 and CPU seconds per day) and on its compliance flag. A signal counts
only when it is sustained: latency and queue wait over their thresholds on at least
`sustained_days` of the window, not one bad afternoon; executions projected over a month
against the plan's allowance; the tenant's share of the shared tier's CPU over the window.
"""

import datetime as dt
from dataclasses import dataclass

# Why a promotion is proposed, strongest first (`promotions.trigger`).
COMPLIANCE, USAGE, LATENCY = "compliance", "usage", "latency"
DAYS_PER_MONTH = 30


@dataclass(frozen=True)
class PromotionPolicy:
    window_days: int = 7
    # A latency or queue-wait signal must hold on this many days of the window.
    sustained_days: int = 3
    # Executions projected over a month, as a share of the plan's allowance.
    executions_share: float = 0.8
    latency_p95_ms: float = 5_000.0
    queue_wait_p95_ms: float = 2_000.0
    # The tenant's share of the CPU every shared tenant used over the window.
    cpu_share: float = 0.25
    # Fewer days of usage than this and usage alone never proposes (a new tenant).
    min_days: int = 3

    def __post_init__(self) -> None:
        if not 1 <= self.sustained_days <= self.window_days:
            raise ValueError("sustained_days must be within 1..window_days")
        if not 1 <= self.min_days <= self.window_days:
            raise ValueError("min_days must be within 1..window_days")
        if self.executions_share <= 0 or not 0 < self.cpu_share <= 1:
            raise ValueError("executions_share must be positive and cpu_share within (0, 1]")


@dataclass(frozen=True)
class UsageDay:
    day: dt.date
    executions: int
    latency_p95_ms: float | None
    queue_wait_p95_ms: float | None
    cpu_seconds: float


@dataclass(frozen=True)
class Judgement:
    """A tenant's verdict: propose (with the strongest trigger) or not, and every reason."""

    propose: bool
    trigger: str | None
    reasons: tuple[str, ...]


def judge(
    *,
    requires_dedicated: bool,
    days: list[UsageDay],
    executions_per_month: int | None,
    shared_cpu_seconds: float,
    policy: PromotionPolicy,
) -> Judgement:
    """The verdict for one shared tenant from its last `policy.window_days` days of usage and
    the CPU seconds of every shared tenant over the same days. Reasons are given for a tenant
    that is not proposed too, so the record says what was looked at."""
    window = sorted(days, key=lambda d: d.day)[-policy.window_days :]
    reasons: list[str] = []
    triggers: list[str] = []
    if requires_dedicated:
        triggers.append(COMPLIANCE)
        reasons.append("its compliance flag requires a dedicated database")
    if len(window) < policy.min_days:
        reasons.append(f"{len(window)} day(s) of usage, fewer than {policy.min_days}: too new")
        return _verdict(triggers, reasons)

    def signal(trigger: str, line: str, met: bool, bound: str) -> None:
        reasons.append(f"{line} (≥ {bound})" if met else line)
        if met:
            triggers.append(trigger)

    executions = sum(d.executions for d in window)
    if executions_per_month:
        projected = executions / len(window) * DAYS_PER_MONTH
        share = projected / executions_per_month
        line = (
            f"{executions} executions in {len(window)} days project to {projected:.0f} a month, "
            f"{share:.0%} of the plan's {executions_per_month}"
        )
        signal(USAGE, line, share >= policy.executions_share, f"{policy.executions_share:.0%}")
    if shared_cpu_seconds > 0:
        share = sum(d.cpu_seconds for d in window) / shared_cpu_seconds
        line = f"{share:.0%} of the shared tier's CPU over the window"
        signal(USAGE, line, share >= policy.cpu_share, f"{policy.cpu_share:.0%}")
    for name, threshold, values in (
        ("latency p95", policy.latency_p95_ms, [d.latency_p95_ms for d in window]),
        ("queue wait p95", policy.queue_wait_p95_ms, [d.queue_wait_p95_ms for d in window]),
    ):
        over = sum(1 for value in values if value is not None and value > threshold)
        line = f"{name} over {threshold:.0f} ms on {over} of {len(window)} days"
        signal(LATENCY, line, over >= policy.sustained_days, str(policy.sustained_days))
    return _verdict(triggers, reasons)


def _verdict(triggers: list[str], reasons: list[str]) -> Judgement:
    ranked = [t for t in (COMPLIANCE, USAGE, LATENCY) if t in triggers]
    return Judgement(bool(ranked), ranked[0] if ranked else None, tuple(reasons))
