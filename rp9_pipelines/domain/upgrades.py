"""Which n8n upgrades the platform may carry out, and in which order across the fleet (issue
#15: blue/green upgrades, rehearsed per tenant, rolled out in waves). Pure: the catalog holds
the versions offered and the paths tested; the shells ask these functions.

n8n's database migrations run forward only: a path goes from an older version to a newer one,
and only a path the platform has tested (rehearsed on real data) is offered.
"""

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
