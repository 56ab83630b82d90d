"""The enforcement decision: tables of cases, then properties over whole months of usage."""

import datetime as dt
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rp9_pipelines.domain.enforcement import (
    OVERAGE,
    RESUME,
    SUSPEND,
    EventKey,
    Situation,
    decide,
    month_to_date,
    next_period_start,
    period_of,
    period_start,
    warn_key,
)

T0 = dt.datetime(2026, 11, 3, 12, 0, tzinfo=dt.UTC)


def situation(executions: int, limit: int = 100, **changes: object) -> Situation:
    base = Situation(
        period="2026-11",
        status="active",
        suspension_reason=None,
        executions=executions,
        limit=limit,
        overage_allowed=False,
        recorded={},
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def keys(s: Situation) -> list[tuple[str, int]]:
    return [(e.key.action, e.key.threshold) for e in decide(s).events]


@pytest.mark.parametrize(
    ("executions", "expected_events", "act"),
    [
        (0, [], "none"),
        (79, [], "none"),
        (80, [("warn", 80)], "none"),
        (99, [("warn", 80)], "none"),
        (100, [("warn", 80), ("warn", 100), ("suspend", 100)], "suspend"),
        (250, [("warn", 80), ("warn", 100), ("suspend", 100)], "suspend"),
    ],
)
def test_thresholds_of_an_active_tenant(
    executions: int, expected_events: list[tuple[str, int]], act: str
) -> None:
    s = situation(executions)
    assert keys(s) == expected_events
    assert decide(s).act == act


def test_a_warning_already_recorded_this_period_is_not_repeated() -> None:
    s = situation(90, recorded={warn_key(80): T0})
    assert decide(s).events == ()
    assert decide(s).act == "none"


def test_overage_allowed_records_overage_once_and_never_suspends() -> None:
    s = situation(120, overage_allowed=True)
    assert keys(s) == [("warn", 80), ("warn", 100), ("overage", 100)]
    assert decide(s).act == "none"
    again = replace(s, recorded={warn_key(80): T0, warn_key(100): T0, OVERAGE: T0})
    assert decide(again).events == ()
    assert decide(again).act == "none"


def test_suspended_by_enforcement_stays_while_over_quota() -> None:
    s = situation(
        100,
        status="suspended",
        suspension_reason="enforcement",
        recorded={warn_key(80): T0, warn_key(100): T0, SUSPEND: T0},
    )
    assert decide(s).act == "none"
    assert decide(s).events == ()


def test_a_raised_quota_resumes_what_enforcement_suspended() -> None:
    s = situation(
        100,
        limit=1000,
        status="suspended",
        suspension_reason="enforcement",
        recorded={warn_key(80): T0, warn_key(100): T0, SUSPEND: T0},
    )
    decision = decide(s)
    assert decision.act == "resume"
    assert [(e.key, e.replaces) for e in decision.events] == [(RESUME, False)]


def test_a_new_period_resumes_what_enforcement_suspended() -> None:
    # December: nothing recorded yet, nothing executed (the tenant was stopped).
    s = situation(0, period="2026-12", status="suspended", suspension_reason="enforcement")
    assert decide(s).act == "resume"
    assert keys(s) == [("resume", 100)]


def test_overage_granted_later_resumes_a_suspended_tenant() -> None:
    s = situation(
        150,
        status="suspended",
        suspension_reason="enforcement",
        overage_allowed=True,
        recorded={SUSPEND: T0},
    )
    assert decide(s).act == "resume"


@pytest.mark.parametrize("reason", ["operator", None])
def test_never_resumes_an_operators_suspension(reason: str | None) -> None:
    s = situation(0, limit=10**9, status="suspended", suspension_reason=reason)
    assert decide(s).act == "none"
    assert decide(s).events == ()


def test_an_operators_resume_in_the_period_is_not_overruled() -> None:
    # Suspended by enforcement this period, then resumed by an operator (reason cleared).
    s = situation(150, recorded={warn_key(80): T0, warn_key(100): T0, SUSPEND: T0})
    assert decide(s).act == "none"
    assert decide(s).events == ()


def test_reaching_the_upgraded_quota_suspends_again_replacing_the_periods_event() -> None:
    later = T0 + dt.timedelta(days=2)
    s = situation(
        1000, limit=1000, recorded={warn_key(80): T0, warn_key(100): T0, SUSPEND: T0, RESUME: later}
    )
    decision = decide(s)
    assert decision.act == "suspend"
    assert [(e.key, e.replaces) for e in decision.events] == [(SUSPEND, True)]


def test_an_interrupted_suspension_is_finished_without_a_second_event() -> None:
    # The event and the reason were written, the containers not yet stopped.
    s = situation(
        100,
        suspension_reason="enforcement",
        recorded={warn_key(80): T0, warn_key(100): T0, SUSPEND: T0},
    )
    assert decide(s).act == "suspend"
    assert decide(s).events == ()


def test_an_interrupted_resume_is_finished_without_a_second_event() -> None:
    s = situation(
        10,
        status="suspended",
        suspension_reason="enforcement",
        recorded={SUSPEND: T0, RESUME: T0 + dt.timedelta(minutes=5)},
    )
    assert decide(s).act == "resume"
    assert decide(s).events == ()


@pytest.mark.parametrize("status", ["provisioning", "promoting", "upgrading", "failed", "deleted"])
def test_tenants_being_changed_are_not_judged(status: str) -> None:
    assert decide(situation(10**6, status=status)).act == "none"
    assert decide(situation(10**6, status=status)).events == ()


def test_a_zero_quota_is_always_reached() -> None:
    assert decide(situation(0, limit=0)).act == "suspend"


def test_periods_are_calendar_months_in_utc() -> None:
    late = dt.datetime(2026, 12, 31, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-2)))
    assert period_of(late) == "2027-01"
    assert period_start("2026-12") == dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
    assert next_period_start("2026-12") == dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    assert next_period_start("2026-02") == dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    with pytest.raises(ValueError, match="aware"):
        period_of(dt.datetime(2026, 1, 1))


def test_month_to_date_takes_the_larger_count_of_each_day() -> None:
    d1, d2, d3 = (dt.date(2026, 11, day) for day in (1, 2, 3))
    # d1 pruned from n8n (kept by usage), d2 both, d3 not collected yet.
    assert month_to_date({d2: 5, d3: 7}, {d1: 10, d2: 4}) == 10 + 5 + 7
    # d3's executions deleted in n8n after the platform tallied them: the tally holds.
    assert month_to_date({d2: 5}, {d1: 10, d2: 4}, {d2: 5, d3: 7}) == 10 + 5 + 7


# Properties: a whole period, step by step, with the shell's effects modelled -------------


@dataclass
class Tenant:
    status: str = "active"
    reason: str | None = None
    recorded: dict[EventKey, dt.datetime] = field(default_factory=dict)
    emitted: list[EventKey] = field(default_factory=list)
    clock: dt.datetime = T0


def step(t: Tenant, executions: int, limit: int, overage: bool) -> str:
    """One enforcement run: decide, record the events, act (as enforce.py does)."""
    decision = decide(
        Situation("2026-11", t.status, t.reason, executions, limit, overage, dict(t.recorded))
    )
    t.clock += dt.timedelta(minutes=5)
    for event in decision.events:
        assert event.replaces == (event.key in t.recorded), event
        t.recorded[event.key] = t.clock
        t.emitted.append(event.key)
    if decision.act == "suspend":
        t.status, t.reason = "suspended", "enforcement"
    elif decision.act == "resume":
        t.status, t.reason = "active", None
    return decision.act


usage_steps = st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(increments=usage_steps, limit=st.integers(min_value=1, max_value=200), overage=st.booleans())
def test_a_fixed_quota_warns_once_per_threshold_and_suspends_at_most_once(
    increments: list[int], limit: int, overage: bool
) -> None:
    t, executions = Tenant(), 0
    for increment in increments:
        # A suspended tenant runs nothing.
        executions += increment if t.status == "active" else 0
        step(t, executions, limit, overage)
        # Never active over its quota without overage; never suspended under it.
        if not overage:
            assert (t.status == "suspended") == (executions >= limit)
        else:
            assert t.status == "active"
    assert len(t.emitted) == len(set(t.emitted)), t.emitted
    peak = executions * 100 / limit
    warned = {k.threshold for k in t.emitted if k.action == "warn"}
    assert warned == {threshold for threshold in (80, 100) if peak >= threshold}
    assert (OVERAGE in t.emitted) == (overage and executions >= limit)
    assert (SUSPEND in t.emitted) == (not overage and executions >= limit)
    # Another run on the same numbers changes nothing.
    before = list(t.emitted)
    assert step(t, executions, limit, overage) == "none"
    assert t.emitted == before


@settings(max_examples=300, deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.integers(min_value=0, max_value=60), st.integers(min_value=1, max_value=150)),
        min_size=1,
        max_size=30,
    )
)
def test_quota_changes_alternate_suspend_and_resume_without_duplicate_rows(
    plan: list[tuple[int, int]],
) -> None:
    t, executions = Tenant(), 0
    for increment, limit in plan:
        executions += increment if t.status == "active" else 0
        act = step(t, executions, limit, False)
        assert (t.status == "suspended") == (executions >= limit), (act, executions, limit)
    # Each key is one row; suspend and resume strictly alternate, starting with a suspension.
    rounds = [k.action for k in t.emitted if k in (SUSPEND, RESUME)]
    assert rounds == ["suspend", "resume"] * (len(rounds) // 2) + ["suspend"] * (len(rounds) % 2)
    warns = [k for k in t.emitted if k.action == "warn"]
    assert len(warns) == len(set(warns))


@settings(max_examples=200, deadline=None)
@given(
    executions=st.integers(min_value=0, max_value=500),
    limit=st.integers(min_value=1, max_value=500),
    overage=st.booleans(),
)
def test_an_operators_suspension_is_left_alone(executions: int, limit: int, overage: bool) -> None:
    t = Tenant(status="suspended", reason="operator")
    assert step(t, executions, limit, overage) == "none"
    assert (t.status, t.reason, t.emitted) == ("suspended", "operator", [])
