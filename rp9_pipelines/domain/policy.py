"""How fresh a tenant's proofs must be: a verified backup within 26 h (a daily schedule plus
slack), a passed restore drill within a quarter. The alert rules
(deploy/observability/prometheus/rules/) use the same figures."""

import datetime as dt
from dataclasses import dataclass

BACKUP_MAX_AGE = dt.timedelta(hours=26)
DRILL_MAX_AGE = dt.timedelta(days=92)


@dataclass(frozen=True)
class Judgement:
    passed: bool
    detail: str
    age_hours: float | None


def within(
    newest: dt.datetime | None,
    created: dt.datetime,
    now: dt.datetime,
    max_age: dt.timedelta,
    what: str,
) -> Judgement:
    """Whether the newest `what` (None: never) is recent enough at `now`; a tenant younger than
    `max_age` is not yet late for its first."""
    limit_h = max_age.total_seconds() / 3600
    if newest is None:
        if now - created <= max_age:
            return Judgement(True, f"no {what} yet; the tenant is younger than {limit_h:g} h", None)
        return Judgement(False, f"no {what} ever, and the tenant is older than {limit_h:g} h", None)
    age_h = (now - newest).total_seconds() / 3600
    if age_h <= limit_h:
        return Judgement(True, f"newest {what} {age_h:.1f} h old (limit {limit_h:g} h)", age_h)
    return Judgement(False, f"newest {what} {age_h:.1f} h old, over the {limit_h:g} h limit", age_h)
