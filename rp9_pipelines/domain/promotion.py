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
from typing import Any

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


# The promotion run --------------------------------------------------------------------------
#
# A promotion moves a shared tenant (a schema in `n8n_shared`) into a database of its own while
# it keeps serving: the data is copied live from one snapshot (`prepared`), then, with the
# tenant's requests held at the edge and its shared n8n stopped and drained, what changed since
# is copied again (`frozen` → `verified`), and its dedicated n8n starts on the copy
# (`switched`), when the held requests are sent on to it. Each phase is recorded before the next
# begins; a run that dies is re-run: before the switch it puts the tenant back on its shared
# schema, from the switch on it finishes.

PHASES = (
    "requested",  # recorded by the API or the sensor; nothing changed yet
    "preparing",  # the dedicated database is being built and filled beside the shared schema
    "prepared",  # a consistent copy is in it; the tenant still serves from the shared schema
    "holding",  # the tenant's requests are held at the edge
    "frozen",  # its shared n8n is stopped and drained, its shared role cannot log in
    "verified",  # the copy was caught up and compared: row counts, digests, sequences
    "switched",  # its n8n runs on the dedicated database; the held requests were released
    "done",
)
# From here on the dedicated side is the tenant's: a re-run finishes forward.
SWITCHED = "switched"
# The one table copied again by difference at the freeze instead of whole: execution payloads,
# most of the data and immutable once their execution stopped.
DELTA_TABLE = "execution_data"
DELTA_KEY = "executionId"
# What n8n's main reads at its boot before its modules start (n8n 2.20.12, its queries logged):
# its migrations, keys, settings, packages, roles, the owner it sets up from the environment
# (`user`), the executions it must resume and the test runs it marks interrupted. The cutover
# leaves these tables of the copy open to the dedicated main it boots, so that it gets that far
# before the catch-up (with the official image, its editor's assets generated there: 1.5-3 s of
# CPU on two busy cores; the local image has them built in, deploy/images/n8n); every
# other table waits for the catch-up's commit, and the first of them it reads
# (`instance_version_history`, its modules' first, then `workflow_entity` as it activates the
# workflows) holds it there, before its server answers anything, ready included. What it read
# or wrote in these is replaced by the catch-up and kept in no cache: nothing activates a
# workflow, nor answers a request, before the commit. A version that reads another table earlier
# only waits earlier.
BOOT_READS = frozenset(
    {
        "migrations",
        "deployment_key",
        "settings",
        "installed_packages",
        "installed_nodes",
        "scope",
        "role",
        "role_scope",
        "execution_entity",
        "test_run",
        "user",
    }
)


def after_switch(phase: str) -> bool:
    """Whether a run recorded at `phase` had put the tenant on its dedicated side."""
    return phase in PHASES and PHASES.index(phase) >= PHASES.index(SWITCHED)


def refusal(tier: str, status: str, running: bool) -> tuple[str, str] | None:
    """Why a tenant cannot be promoted now (a stable code and a message), or None."""
    if status in ("deleted", "deleting"):
        return "invalid_state", f"the tenant is {status}"
    if running or status == "promoting":
        return "promotion_in_progress", "a promotion of this tenant is already running"
    if tier == "dedicated":
        return "already_dedicated", "the tenant already has a dedicated database"
    if status != "active":
        return "invalid_state", f"only an active tenant can be promoted; it is {status}"
    return None


def rollback_refusal(
    tier: str, status: str, last: dict[str, Any] | None, now: dt.datetime
) -> tuple[str, str] | None:
    """Why a promoted tenant cannot go back to its shared schema now, or None."""
    if status != "active" or tier != "dedicated":
        return "invalid_state", f"only an active dedicated tenant can go back; it is {status}"
    if last is None or last["status"] != "succeeded":
        return "no_promotion", "the tenant has no completed promotion to roll back"
    if last["shared_removed_at"] is not None or (
        last["rollback_until"] is not None and now > last["rollback_until"]
    ):
        return "rollback_window_over", "the shared schema is gone: the rollback window is over"
    return None


@dataclass(frozen=True)
class Delta:
    """What the freeze copies of `DELTA_TABLE`: ids to delete from the copy and ids to copy."""

    delete: tuple[int, ...]
    copy: tuple[int, ...]


def delta(source: set[int], copied: set[int], floor: int) -> Delta:
    """Executions from `floor` on may have changed since the snapshot (they had not stopped):
    copied again; the rest: what is gone from the source is deleted, what is new is copied."""
    changed = {i for i in source if i >= floor}
    delete = (copied - source) | (copied & changed)
    copy = (source - copied) | changed
    return Delta(tuple(sorted(delete)), tuple(sorted(copy)))


@dataclass(frozen=True)
class Side:
    """One side's figures for the comparison: rows per table, digests, sequence values."""

    rows: dict[str, int]
    digests: dict[str, str]
    sequences: dict[str, int]


def mismatches(source: Side, copy: Side) -> list[str]:
    """Every difference between the frozen source and its copy (none: the copy is exact)."""
    found = []
    for table in sorted(source.rows.keys() | copy.rows.keys()):
        a, b = source.rows.get(table), copy.rows.get(table)
        if a != b:
            found.append(f"{table}: {a} rows in the shared schema, {b} in the copy")
    for name in sorted(source.digests.keys() | copy.digests.keys()):
        if source.digests.get(name) != copy.digests.get(name):
            found.append(f"{name}: digests differ")
    for name in sorted(source.sequences.keys() | copy.sequences.keys()):
        if source.sequences.get(name) != copy.sequences.get(name):
            found.append(
                f"sequence {name}: {source.sequences.get(name)} against {copy.sequences.get(name)}"
            )
    return found
