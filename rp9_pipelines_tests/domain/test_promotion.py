import datetime as dt

import pytest

from rp9_pipelines.domain.promotion import (
    COMPLIANCE,
    LATENCY,
    USAGE,
    PromotionPolicy,
    UsageDay,
    judge,
)

POLICY = PromotionPolicy()
START = dt.date(2026, 11, 20)


def week(
    executions: int = 100,
    latency_ms: float | None = 200.0,
    wait_ms: float | None = 50.0,
    cpu_s: float = 100.0,
    days: int = 7,
) -> list[UsageDay]:
    return [
        UsageDay(START + dt.timedelta(days=i), executions, latency_ms, wait_ms, cpu_s)
        for i in range(days)
    ]


def verdict(days: list[UsageDay], **changes: object) -> tuple[bool, str | None, str]:
    arguments: dict[str, object] = {
        "requires_dedicated": False,
        "days": days,
        "executions_per_month": 10_000,
        "shared_cpu_seconds": 10_000.0,
        "policy": POLICY,
    } | changes
    judgement = judge(**arguments)  # type: ignore[arg-type]
    return judgement.propose, judgement.trigger, "; ".join(judgement.reasons)


def test_a_quiet_tenant_is_not_proposed_and_the_record_says_what_was_looked_at() -> None:
    propose, trigger, reasons = verdict(week())
    assert (propose, trigger) == (False, None)
    assert "700 executions in 7 days project to 3000 a month, 30% of the plan's 10000" in reasons
    assert "7% of the shared tier's CPU" in reasons
    assert "latency p95 over 5000 ms on 0 of 7 days" in reasons


def test_executions_near_the_plans_allowance_propose_for_usage() -> None:
    propose, trigger, reasons = verdict(week(executions=300))  # 9,000 a month: 90 %
    assert (propose, trigger) == (True, USAGE)
    assert "90% of the plan's 10000 (≥ 80%)" in reasons


def test_a_large_share_of_the_shared_tiers_cpu_proposes_for_usage() -> None:
    propose, trigger, reasons = verdict(week(cpu_s=500.0))  # 3,500 of 10,000 s
    assert (propose, trigger) == (True, USAGE)
    assert "35% of the shared tier's CPU over the window (≥ 25%)" in reasons


@pytest.mark.parametrize("slow_days", [3, 7])
def test_latency_sustained_over_days_proposes(slow_days: int) -> None:
    days = [
        UsageDay(d.day, d.executions, 9_000.0 if i < slow_days else 200.0, 50.0, d.cpu_seconds)
        for i, d in enumerate(week())
    ]
    propose, trigger, reasons = verdict(days)
    assert (propose, trigger) == (True, LATENCY)
    assert f"latency p95 over 5000 ms on {slow_days} of 7 days (≥ 3)" in reasons


def test_one_slow_afternoon_or_missing_figures_do_not() -> None:
    days = week(latency_ms=None, wait_ms=None)
    days[0] = UsageDay(days[0].day, 100, 60_000.0, 30_000.0, 100.0)
    days[1] = UsageDay(days[1].day, 100, 60_000.0, 30_000.0, 100.0)
    propose, _, reasons = verdict(days)
    assert not propose
    assert "queue wait p95 over 2000 ms on 2 of 7 days" in reasons


def test_queue_wait_sustained_proposes_for_latency() -> None:
    assert verdict(week(wait_ms=2_500.0))[:2] == (True, LATENCY)


def test_compliance_proposes_regardless_of_usage_and_ranks_first() -> None:
    assert verdict([], requires_dedicated=True)[:2] == (True, COMPLIANCE)
    busy = week(executions=1_000, latency_ms=9_000.0)
    propose, trigger, reasons = verdict(busy, requires_dedicated=True)
    assert (propose, trigger) == (True, COMPLIANCE)
    assert "compliance flag" in reasons
    assert "latency p95 over 5000 ms on 7 of 7 days" in reasons


def test_a_new_tenant_is_too_new_to_judge_on_usage() -> None:
    propose, _, reasons = verdict(week(executions=5_000, days=2))
    assert not propose
    assert "2 day(s) of usage, fewer than 3: too new" in reasons


def test_only_the_last_window_counts() -> None:
    old_busy = [
        UsageDay(START - dt.timedelta(days=30 - i), 5_000, 9_000.0, 9_000.0, 9_000.0)
        for i in range(10)
    ]
    assert verdict(old_busy + week())[0] is False


def test_an_unlimited_plan_or_an_idle_tier_is_not_a_usage_signal() -> None:
    propose, _, reasons = verdict(week(executions=10**6), executions_per_month=None)
    assert not propose
    assert "executions" not in reasons
    assert "CPU" not in verdict(week(), shared_cpu_seconds=0.0)[2]


@pytest.mark.parametrize(
    "changes",
    [{"sustained_days": 0}, {"sustained_days": 8}, {"min_days": 9}, {"cpu_share": 1.5}],
)
def test_a_policy_that_cannot_hold_is_refused(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="must be"):
        PromotionPolicy(**changes)  # type: ignore[arg-type]
