"""Which n8n upgrades the platform may carry out, and in which order across the fleet (issue
#15: blue/green upgrades, rehearsed per tenant, rolled out in waves). Pure: the catalog holds
the versions offered and the paths tested; the shells ask these functions.

n8n's database migrations run forward only: a path goes from an older version to a newer one,
and only a path the platform has tested (rehearsed on real data) is offered.
"""

import datetime as dt
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)$")


def parse_version(version: str) -> tuple[int, int, int]:
    """`major.minor.patch` as numbers (n8n's releases); anything else is refused."""
    found = _VERSION.match(version)
    if found is None:
        raise ValueError(f"not an n8n version (major.minor.patch): {version!r}")
    major, minor, patch = (int(part) for part in found.groups())
    return major, minor, patch


@dataclass(frozen=True)
class Offer:
    """What the platform offers: the versions whose images it builds, and the upgrade paths
    (from, to) it has tested."""

    versions: frozenset[str]
    paths: frozenset[tuple[str, str]]

    def __post_init__(self) -> None:
        for version in self.versions:
            parse_version(version)
        for old, new in self.paths:
            if old not in self.versions or new not in self.versions:
                raise ValueError(f"path {old} -> {new} between versions not offered")
            if parse_version(new) <= parse_version(old):
                raise ValueError(f"path {old} -> {new} does not go forward")


def upgrade_refusal(
    offer: Offer, current: str, target: str, status: str, busy: bool
) -> tuple[str, str] | None:
    """Why a tenant on `current` cannot be upgraded to `target` now (a stable code and a
    message), or None."""
    if status in ("deleted", "deleting"):
        return "invalid_state", f"the tenant is {status}"
    if busy or status in ("upgrading", "promoting"):
        return "tenant_busy", "another change of this tenant is running"
    if status != "active":
        return "invalid_state", f"only an active tenant can be upgraded; it is {status}"
    try:
        parse_version(target)
    except ValueError as error:
        return "invalid_version", str(error)
    if target == current:
        return "already_on_version", f"the tenant already runs n8n {current}"
    if target not in offer.versions:
        offered = ", ".join(sorted(offer.versions, key=parse_version))
        return "version_not_offered", f"n8n {target} is not offered (offered: {offered})"
    if parse_version(target) < parse_version(current):
        return "downgrade", f"n8n {current} -> {target} goes back: n8n migrates forward only"
    if (current, target) not in offer.paths:
        return "path_not_tested", f"the upgrade {current} -> {target} has not been tested"
    return None


@dataclass(frozen=True)
class Wave:
    name: str
    tenants: tuple[str, ...]


def waves(
    tenants: Iterable[str], canaries: Sequence[str], percentages: Sequence[float], rollout: str
) -> list[Wave]:
    """A rollout's waves: the canaries first (those among `tenants`), then the others in an
    order fixed by `rollout` (the same rollout always orders the same way; another one mixes
    the fleet differently), each wave up to its cumulative percentage of them; the last wave
    takes whoever is left. Each tenant is in exactly one wave; empty waves are dropped."""
    if any(not 0 < p <= 100 for p in percentages) or list(percentages) != sorted(percentages):
        raise ValueError("wave percentages must rise within (0, 100]")
    every = sorted(set(tenants))
    first = tuple(t for t in dict.fromkeys(canaries) if t in every)
    rest = sorted(
        (t for t in every if t not in first),
        key=lambda t: hashlib.sha256(f"{rollout}:{t}".encode()).hexdigest(),
    )
    planned = [Wave("canary", first)]
    taken = 0
    for index, percentage in enumerate(percentages):
        until = len(rest) if index == len(percentages) - 1 else round(len(rest) * percentage / 100)
        planned.append(Wave(f"{percentage:g}%", tuple(rest[taken:until])))
        taken = max(taken, until)
    if taken < len(rest):
        planned.append(Wave("rest", tuple(rest[taken:])))
    return [wave for wave in planned if wave.tenants]


def halted(outcomes: dict[str, str]) -> list[str]:
    """The tenants of a wave whose upgrade failed its rehearsal or was rolled back: any one
    halts the rollout after that wave."""
    return sorted(t for t, outcome in outcomes.items() if outcome in ("failed", "rolled_back"))


# One upgrade's run ---------------------------------------------------------------------------

# Where an upgrade's run is, in order (`upgrades.phase`). Before `started` the tenant's data is
# as it was (the rehearsal works on a copy); from `started` the new version has migrated it, so
# going back means restoring the snapshot.
PHASES = (
    "requested",
    "preflight",
    "rehearsing",
    "rehearsed",
    "snapshot",
    "holding",
    "stopped",
    "started",
    "switched",
    "watching",
    "done",
    "rolled_back",
)


def touched_data(phase: str) -> bool:
    """Whether the new version may have migrated the tenant's own data by `phase`."""
    return PHASES.index(phase) >= PHASES.index("started")


@dataclass(frozen=True)
class Migrations:
    """What n8n's log says of its migrations at a boot: how many ran, and the seconds from the
    first one's start to the last one's end (None when none ran)."""

    count: int
    seconds: float | None
    names: tuple[str, ...]
    # The migration that started and never finished (the boot failed in it), if any.
    unfinished: str | None = None


_MIGRATION_LINE = re.compile(r"^(\S+)\s.*\b(Starting|Finished) migration (\S+)")


def migrations_in_log(lines: Iterable[str]) -> Migrations:
    """Read `docker logs --timestamps` of an n8n boot (RFC 3339 timestamps first)."""
    started: dt.datetime | None = None
    finished: dt.datetime | None = None
    names: list[str] = []
    running: str | None = None
    for line in lines:
        found = _MIGRATION_LINE.match(line.strip())
        if found is None:
            continue
        stamp, what, name = found.groups()
        when = dt.datetime.fromisoformat(stamp[:26].rstrip("Z") + "+00:00")
        if what == "Starting":
            started = started or when
            running = name
        if what == "Finished":
            finished = when
            names.append(name)
            running = None
    seconds = (finished - started).total_seconds() if started and finished else None
    return Migrations(len(names), seconds, tuple(names), running)


def boot_failure(lines: Sequence[str]) -> str:
    """Why an n8n boot failed, from its log: the migration it was running, if one did not
    finish, and its first error line (`QueryFailedError: ...`)."""
    unfinished = migrations_in_log(lines).unfinished
    errors = [
        line.split(" ", 1)[-1].strip()
        for line in lines
        if re.search(r"\w*Error\b|\berror:", line) and " at " not in line
    ]
    parts = [f"migration {unfinished} failed" if unfinished else ""]
    parts.append(errors[0][:500] if errors else "")
    return "; ".join(p for p in parts if p) or "n8n exited (no error in its log)"


# Readiness may blink once (a worker starting takes the CPU); three looks in a row do not.
READY_MISSES = 3
# More than this share of the executions since the switch failing, above the share before it
# (and at least `MIN_FAILURES` of them), is the new version's doing.
ERROR_RATE_MARGIN = 0.05
MIN_FAILURES = 5


def watch_failure(
    ready: Sequence[bool],
    probe: str | None,
    before: tuple[int, int],
    after: tuple[int, int],
) -> str | None:
    """Why the watch after a switch calls for a rollback, or None: `ready` are its looks at
    n8n's readiness (and its route), `probe` the probe workflow's failure (None: it passed),
    `before`/`after` the (executions, failed) before the hold and since the switch."""
    if probe is not None:
        return f"the probe failed: {probe}"
    misses = 0
    for look in ready:
        misses = 0 if look else misses + 1
        if misses >= READY_MISSES:
            return f"n8n or its route was not ready {READY_MISSES} times in a row"
    total, failed = after
    base = before[1] / before[0] if before[0] else 0.0
    if failed >= MIN_FAILURES and failed / max(total, 1) > base + ERROR_RATE_MARGIN:
        return (
            f"{failed} of {total} executions failed since the switch"
            f" ({failed / total:.0%}; {base:.0%} before it)"
        )
    return None


def rollback_refusal(
    status: str, last: dict[str, object] | None, now: dt.datetime
) -> tuple[str, str] | None:
    """Why `POST /tenants/{id}/upgrade/rollback` is refused (the tenant's `status`, its last
    upgrade `last`), or None."""
    if status != "active":
        return "invalid_state", f"only an active tenant can be rolled back; it is {status}"
    if last is None or last.get("status") != "succeeded":
        return "no_upgrade", "the tenant has no completed upgrade to roll back"
    until = last.get("rollback_until")
    if not isinstance(until, dt.datetime) or now > until:
        return "rollback_window_over", f"the rollback window closed at {until}"
    return None
