import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rp9_pipelines.domain.promotion import (
    BOOT_READS,
    COMPLIANCE,
    LATENCY,
    PHASES,
    USAGE,
    Delta,
    PromotionPolicy,
    Side,
    UsageDay,
    after_switch,
    delta,
    judge,
    mismatches,
    refusal,
    rollback_refusal,
)
from rp9_pipelines.domain.stack import other_color

POLICY = PromotionPolicy()
HOUR = dt.timedelta(hours=1)
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


# The promotion run's decisions ---------------------------------------------------------------


def test_the_freeze_copies_what_is_new_and_unsettled_and_deletes_what_is_gone() -> None:
    source = {1, 2, 3, 5, 6, 7}  # 4 pruned since the snapshot; 6 and 7 new
    copied = {1, 2, 3, 4, 5}  # 5 had not stopped at the snapshot (floor 5)
    change = delta(source, copied, floor=5)
    assert change.delete == (4, 5)
    assert change.copy == (5, 6, 7)


def test_a_settled_copy_needs_nothing_at_the_freeze() -> None:
    assert delta({1, 2}, {1, 2}, floor=3) == Delta((), ())


@given(st.sets(st.integers(1, 60)), st.sets(st.integers(1, 60)), st.integers(1, 61))
def test_after_the_delta_the_copy_holds_exactly_the_source(
    source: set[int], copied: set[int], floor: int
) -> None:
    change = delta(source, copied, floor)
    after = (copied - set(change.delete)) | set(change.copy)
    assert after == source
    assert not set(change.copy) & (copied - set(change.delete))  # never a duplicate key


def test_mismatches_name_every_difference() -> None:
    same = Side({"a": 1, "b": 2}, {"workflow_entity": "x"}, {"s": 3})
    assert mismatches(same, same) == []
    other = Side({"a": 1, "b": 3}, {"workflow_entity": "y"}, {"s": 4})
    found = mismatches(same, other)
    assert found == [
        "b: 2 rows in the shared schema, 3 in the copy",
        "workflow_entity: digests differ",
        "sequence s: 3 against 4",
    ]


@pytest.mark.parametrize(
    ("tier", "status", "running", "code"),
    [
        ("shared", "active", False, None),
        ("dedicated", "active", False, "already_dedicated"),
        ("shared", "suspended", False, "invalid_state"),
        ("shared", "deleted", False, "invalid_state"),
        ("shared", "promoting", False, "promotion_in_progress"),
        ("shared", "active", True, "promotion_in_progress"),
    ],
)
def test_who_can_be_promoted(tier: str, status: str, running: bool, code: str | None) -> None:
    why = refusal(tier, status, running)
    assert (why[0] if why else None) == code


def test_a_rollback_needs_a_succeeded_promotion_inside_its_window() -> None:
    now = dt.datetime(2026, 12, 2, 12, tzinfo=dt.UTC)
    done = {"status": "succeeded", "shared_removed_at": None, "rollback_until": now + HOUR}
    assert rollback_refusal("dedicated", "active", done, now) is None
    assert rollback_refusal("dedicated", "active", None, now)[0] == "no_promotion"  # type: ignore[index]
    late = {**done, "rollback_until": now - HOUR}
    assert rollback_refusal("dedicated", "active", late, now)[0] == "rollback_window_over"  # type: ignore[index]
    removed = {**done, "shared_removed_at": now}
    assert rollback_refusal("dedicated", "active", removed, now)[0] == "rollback_window_over"  # type: ignore[index]
    assert rollback_refusal("shared", "active", done, now)[0] == "invalid_state"  # type: ignore[index]
    failed = {**done, "status": "failed"}
    assert rollback_refusal("dedicated", "active", failed, now)[0] == "no_promotion"  # type: ignore[index]


def test_phases_before_the_switch_roll_back_and_after_it_finish() -> None:
    assert [p for p in PHASES if not after_switch(p)] == [
        "requested",
        "preparing",
        "prepared",
        "holding",
        "frozen",
        "verified",
    ]
    assert after_switch("switched")
    assert after_switch("done")
    assert not after_switch("rolled_back")


def test_what_a_booting_main_reads_before_the_catch_up_activates_and_answers_nothing() -> None:
    """Workflows, webhooks, sharing, credentials, API keys and execution payloads wait for the
    catch-up's commit: a main that read them from a copy not yet caught up could run a schedule
    or answer a request from stale data. So does the table its modules read first
    (`instance_version_history`), before its server calls itself ready."""
    assert BOOT_READS.isdisjoint(
        {
            "workflow_entity",
            "webhook_entity",
            "shared_workflow",
            "project",
            "project_relation",
            "credentials_entity",
            "shared_credentials",
            "user_api_keys",
            "execution_data",
            "instance_version_history",
        }
    )
    assert "migrations" in BOOT_READS  # n8n's first read: without it the boot waits at once


def test_a_cutover_boots_the_other_color() -> None:
    assert other_color("blue") == "green"
    assert other_color("green") == "blue"
