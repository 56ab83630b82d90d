"""Plan enforcement as a pure decision: a tenant's month-to-date executions against its quota →
nothing, a warning at 80 % and at 100 %, then suspension (or overage when the plan or an
entitlement allows it), and resumption of what enforcement suspended once a new period began or
the quota grew past the usage.

Each event happens once per tenant, period, metric, threshold and action (the catalog's unique
constraint backs it). Suspend and resume can alternate within a period (a plan upgrade resumes a
tenant that then reaches its new quota): the second time, the period's event of that action is
replaced rather than duplicated.
"""

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

METRIC_EXECUTIONS = "executions"
WARN_THRESHOLDS = (80, 100)
LIMIT_THRESHOLD = 100
# Tenants in other states are being changed by another flow (provisioning, promotion, ...).
JUDGED_STATUSES = frozenset({"active", "suspended"})
ENFORCEMENT = "enforcement"
OPERATOR = "operator"

EventAction = Literal["warn", "suspend", "overage", "resume"]
Act = Literal["none", "suspend", "resume"]


def period_of(at: dt.datetime) -> str:
    """The billing period (calendar month, UTC) that `at` falls in, as `YYYY-MM`."""
    if at.tzinfo is None:
        raise ValueError("a period needs an aware datetime")
    return at.astimezone(dt.UTC).strftime("%Y-%m")


def period_start(period: str) -> dt.datetime:
    year, month = (int(part) for part in period.split("-"))
    return dt.datetime(year, month, 1, tzinfo=dt.UTC)


def next_period_start(period: str) -> dt.datetime:
    start = period_start(period)
    return (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )


@dataclass(frozen=True, order=True)
class EventKey:
    """What makes an event unique within a tenant's period."""

    metric: str
    threshold: int
    action: EventAction


@dataclass(frozen=True)
class Event:
    key: EventKey
    value: float
    limit: float
    # The period already holds an event of this key from an earlier round (suspended, resumed,
    # suspended again): replace it instead of adding a second one.
    replaces: bool = False


@dataclass(frozen=True)
class Situation:
    """Everything the decision looks at for one tenant and one period."""

    period: str
    status: str
    suspension_reason: str | None
    executions: int
    limit: int
    overage_allowed: bool
    # This period's recorded events and when each was (last) recorded.
    recorded: Mapping[EventKey, dt.datetime] = field(default_factory=dict)

    @property
    def used_percent(self) -> float:
        if self.limit <= 0:
            return float("inf")
        return self.executions * 100 / self.limit

    @property
    def over_limit(self) -> bool:
        return self.executions >= self.limit


@dataclass(frozen=True)
class Decision:
    events: tuple[Event, ...]
    act: Act
    reason: str


SUSPEND = EventKey(METRIC_EXECUTIONS, LIMIT_THRESHOLD, "suspend")
RESUME = EventKey(METRIC_EXECUTIONS, LIMIT_THRESHOLD, "resume")
OVERAGE = EventKey(METRIC_EXECUTIONS, LIMIT_THRESHOLD, "overage")


def warn_key(threshold: int) -> EventKey:
    return EventKey(METRIC_EXECUTIONS, threshold, "warn")


def _later(recorded: Mapping[EventKey, dt.datetime], key: EventKey, other: EventKey) -> bool:
    """Whether `key` was recorded this period after `other` (or `other` never was)."""
    if key not in recorded:
        return False
    return other not in recorded or recorded[key] > recorded[other]


def _action_event(s: Situation, key: EventKey, opposite: EventKey) -> tuple[Event, ...]:
    """The event for a suspend or resume: none when this round's event is already recorded
    (a run that stopped half-way is finishing the same action), a replacement when the period's
    event belongs to an earlier round."""
    if _later(s.recorded, key, opposite):
        return ()
    return (Event(key, s.executions, s.limit, replaces=key in s.recorded),)


def decide(s: Situation) -> Decision:
    """What enforcement does about one tenant now."""
    usage = f"{s.executions} of {s.limit} executions ({s.used_percent:.0f} %) in {s.period}"
    if s.status not in JUDGED_STATUSES:
        return Decision((), "none", f"not judged while {s.status}")
    if s.status == "suspended" or s.suspension_reason == ENFORCEMENT:
        if s.suspension_reason != ENFORCEMENT:
            return Decision((), "none", "suspended by an operator: only an operator resumes it")
        if s.over_limit and not s.overage_allowed:
            if s.status == "active":  # a suspension that stopped half-way: finish it
                return Decision(_action_event(s, SUSPEND, RESUME), "suspend", usage)
            return Decision((), "none", f"stays suspended: {usage}")
        why = "overage is now allowed" if s.over_limit else "below the quota"
        return Decision(_action_event(s, RESUME, SUSPEND), "resume", f"{why}: {usage}")
    warnings = tuple(
        Event(warn_key(threshold), s.executions, s.limit)
        for threshold in WARN_THRESHOLDS
        if s.used_percent >= threshold and warn_key(threshold) not in s.recorded
    )
    if not s.over_limit:
        return Decision(warnings, "none", usage)
    if s.overage_allowed:
        overage = () if OVERAGE in s.recorded else (Event(OVERAGE, s.executions, s.limit),)
        return Decision(warnings + overage, "none", f"overage allowed: {usage}")
    if SUSPEND in s.recorded and not _later(s.recorded, RESUME, SUSPEND):
        # Suspended this period and active again without enforcement resuming it: an operator
        # let it run, and enforcement does not overrule that until the next period.
        return Decision(warnings, "none", f"resumed by an operator this period: {usage}")
    return Decision(warnings + _action_event(s, SUSPEND, RESUME), "suspend", usage)


def month_to_date(*sources: Mapping[dt.date, int]) -> int:
    """Executions of the period: per day, the largest of its sources' counts: what n8n still
    holds (it prunes, and its tenant may delete), what usage collected and what the platform
    tallied as executions appeared (both kept), so neither pruning, a deletion nor a day not
    collected yet hides executions."""
    days = {day for source in sources for day in source}
    return sum(max(source.get(day, 0) for source in sources) for day in days)


_CONCURRENCY_FLAG = re.compile(r"--concurrency[= ](\d+)")


def concurrency_of(command: str) -> int | None:
    """The job slots an n8n worker runs with, from its command line (None: not a worker)."""
    found = _CONCURRENCY_FLAG.search(command)
    return int(found.group(1)) if found else None


def concurrency_drift(wanted: int, worker_commands: list[str]) -> list[int]:
    """The concurrencies the tenant's workers run with that differ from its quota's (a Stripe
    entitlement or a manual quota changed it since they started)."""
    seen = [concurrency_of(command) for command in worker_commands]
    return sorted({c for c in seen if c is not None and c != wanted})
