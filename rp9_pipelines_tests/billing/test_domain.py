"""The billing decisions as plain data: meter identifiers and corrections, entitlements →
quotas, the plan catalog."""

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rp9_pipelines.domain.billing import (
    IDENTIFIER_MAX,
    OVERAGE_FEATURE,
    LedgerEntry,
    ReportDecision,
    day_window,
    decide_report,
    event_timestamp,
    feature_name,
    meter_identifier,
    plan_catalog,
    plan_of_price_keys,
    quotas_from_entitlements,
)

TENANT = "0b6f3a9e-5d1c-4c1e-9f2a-7d3b2c1a0e9f"
DAY = dt.date(2026, 11, 20)
NOW = dt.datetime(2026, 11, 21, 6, 0, tzinfo=dt.UTC)


def apply(
    decision: ReportDecision, ledger: list[LedgerEntry], sent_at: dt.datetime
) -> list[LedgerEntry]:
    """What the shell does when every call succeeds: the ledger afterwards."""
    done = [
        LedgerEntry(e.identifier, e.metric, e.quantity, "sent", sent_at)
        if e in decision.retry
        else e
        for e in ledger
    ]
    for cancel in decision.cancel:
        done.append(
            LedgerEntry(
                cancel.ledger_identifier, "executions:cancel", -cancel.quantity, "sent", sent_at
            )
        )
    for send in decision.send:
        done.append(LedgerEntry(send.identifier, "executions", send.quantity, "sent", sent_at))
    return done


def held(ledger: list[LedgerEntry]) -> int:
    return sum(e.quantity for e in ledger if e.status == "sent")


def test_first_report_sends_the_whole_day_then_a_rerun_sends_nothing() -> None:
    first = decide_report(TENANT, DAY, 40, [], NOW)
    assert [(s.quantity, s.identifier) for s in first.send] == [
        (40, f"rp9-{TENANT}-20261120-executions-e0-0-40")
    ]
    ledger = apply(first, [], NOW)
    again = decide_report(TENANT, DAY, 40, ledger, NOW)
    assert again.is_noop
    assert again.reason == "already reported"


def test_a_corrected_day_reports_only_the_difference() -> None:
    ledger = apply(decide_report(TENANT, DAY, 40, [], NOW), [], NOW)
    corrected = decide_report(TENANT, DAY, 55, ledger, NOW)
    assert [(s.quantity, s.identifier.rsplit("-", 3)[1:]) for s in corrected.send] == [
        (15, ["e0", "40", "55"])
    ]
    assert held(apply(corrected, ledger, NOW)) == 55


def test_identifiers_are_deterministic_and_fit_stripe() -> None:
    one = decide_report(TENANT, DAY, 7, [], NOW)
    two = decide_report(TENANT, DAY, 7, [], NOW + dt.timedelta(hours=3))
    assert one.send == two.send
    longest = meter_identifier(TENANT, DAY, "executions", 999, 10**12, 10**12 + 1)
    assert len(longest) <= IDENTIFIER_MAX


@pytest.mark.parametrize("status", ["pending", "failed"])
def test_a_report_in_doubt_is_retried_alone_with_its_identifier(status: str) -> None:
    identifier = meter_identifier(TENANT, DAY, "executions", 0, 0, 40)
    doubt = LedgerEntry(identifier, "executions", 40, status)  # type: ignore[arg-type]
    decision = decide_report(TENANT, DAY, 90, [doubt], NOW)
    assert decision.retry == (doubt,)
    assert not decision.send
    assert not decision.cancel


def test_downward_correction_within_24_hours_cancels_and_resends_the_total() -> None:
    sent_at = NOW - dt.timedelta(hours=2)
    ledger = apply(decide_report(TENANT, DAY, 40, [], sent_at), [], sent_at)
    ledger = apply(decide_report(TENANT, DAY, 55, ledger, sent_at), ledger, sent_at)
    down = decide_report(TENANT, DAY, 30, ledger, NOW)
    assert [c.quantity for c in down.cancel] == [40, 15]
    assert [(s.quantity, s.identifier.rsplit("-", 3)[1:]) for s in down.send] == [
        (30, ["e2", "0", "30"])
    ]
    after = apply(down, ledger, NOW)
    assert held(after) == 30
    # Back up to 40: a new identifier, never the cancelled `e0-0-40`.
    up = decide_report(TENANT, DAY, 40, after, NOW)
    assert up.send[0].identifier.endswith("-e2-30-40")
    assert all(up.send[0].identifier != e.identifier for e in after)


def test_downward_correction_to_zero_only_cancels() -> None:
    ledger = apply(decide_report(TENANT, DAY, 5, [], NOW), [], NOW)
    down = decide_report(TENANT, DAY, 0, ledger, NOW)
    assert len(down.cancel) == 1
    assert not down.send
    assert held(apply(down, ledger, NOW)) == 0


def test_downward_correction_past_the_cancel_window_sends_nothing_and_flags_it() -> None:
    old = NOW - dt.timedelta(hours=30)
    ledger = apply(decide_report(TENANT, DAY, 40, [], old), [], old)
    down = decide_report(TENANT, DAY, 31, ledger, NOW)
    assert down.is_noop
    assert down.over_reported == 9


def test_an_event_received_at_an_unknown_time_is_never_cancelled() -> None:
    held_already = LedgerEntry(
        meter_identifier(TENANT, DAY, "executions", 0, 0, 40), "executions", 40, "sent", None
    )
    down = decide_report(TENANT, DAY, 30, [held_already], NOW)
    assert down.is_noop
    assert down.over_reported == 10


def test_days_older_than_35_days_are_not_sent() -> None:
    decision = decide_report(TENANT, DAY, 10, [], NOW + dt.timedelta(days=40))
    assert decision.is_noop
    assert decision.extra == {"unreported": 10}


def test_negative_usage_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        decide_report(TENANT, DAY, -1, [], NOW)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.integers(0, 40), st.booleans()),
        min_size=1,
        max_size=12,
    )
)
def test_any_sequence_of_corrections_leaves_stripe_holding_the_usage_or_flagged(
    steps: list[tuple[int, int, bool]],
) -> None:
    """Whatever the corrections, after each reconciliation Stripe holds exactly the usage,
    except an over-report it can no longer cancel, which is flagged; no identifier repeats."""
    ledger: list[LedgerEntry] = []
    clock = NOW - dt.timedelta(days=2)
    for target, hours_later, crash in steps:
        clock += dt.timedelta(hours=hours_later)
        decision = decide_report(TENANT, DAY, target, ledger, clock)
        if crash and decision.send:  # the call happened, the ledger write did not
            pending = decision.send[0]
            ledger.append(
                LedgerEntry(pending.identifier, "executions", pending.quantity, "pending")
            )
            decision = decide_report(TENANT, DAY, target, ledger, clock)
            assert decision.retry
        ledger = apply(decision, ledger, clock)
        while not (decision := decide_report(TENANT, DAY, target, ledger, clock)).is_noop:
            ledger = apply(decision, ledger, clock)
        assert held(ledger) == target + decision.over_reported
        identifiers = [e.identifier for e in ledger]
        assert len(identifiers) == len(set(identifiers))


def test_event_timestamp_stays_inside_the_day_and_never_in_the_future() -> None:
    start, end = day_window(DAY)
    assert end - start == 86_400
    assert start <= event_timestamp(DAY, NOW) < end
    midday = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
    assert event_timestamp(DAY, midday) == int(midday.timestamp())


@pytest.mark.parametrize(
    ("keys", "plan_min", "expected"),
    [
        ([], None, {}),
        (
            ["quota:executions_per_month:100000", "quota:concurrency:20", "quota:max_workers:4"],
            1,
            {
                "executions_per_month": 100_000,
                "concurrency": 20,
                "max_workers": 4,
                "overage_allowed": False,
            },
        ),
        (
            [
                "quota:executions_per_month:10000",
                "quota:executions_per_month:1000000",
                OVERAGE_FEATURE,
            ],
            None,
            {"executions_per_month": 1_000_000, "overage_allowed": True},
        ),
        (
            ["quota:max_workers:1"],
            2,
            {"max_workers": 1, "min_workers": 1, "overage_allowed": False},
        ),
        (["someone-elses-feature"], None, {}),
    ],
)
def test_entitlements_become_quotas(
    keys: list[str], plan_min: int | None, expected: dict[str, object]
) -> None:
    entitled = quotas_from_entitlements(keys, plan_min)
    assert {k: v for k, v in entitled.values.items() if v is not None} == expected
    assert set(entitled.values) >= {"executions_per_month", "concurrency", "overage_allowed"}


def test_unknown_features_are_ignored_not_applied() -> None:
    entitled = quotas_from_entitlements(["quota:cpu:64", "feature:sso"])
    assert entitled.ignored == ("feature:sso", "quota:cpu:64")


PLANS = [
    {
        "name": "starter",
        "executions_per_month": 10_000,
        "concurrency": 5,
        "max_workers": 1,
        "overage_allowed": False,
    },
    {
        "name": "business",
        "executions_per_month": 1_000_000,
        "concurrency": 50,
        "max_workers": 8,
        "overage_allowed": True,
    },
    {
        "name": "internal",
        "executions_per_month": 1,
        "concurrency": 1,
        "max_workers": 1,
        "overage_allowed": False,
    },
]


def test_plan_catalog_maps_priced_plans_to_products_prices_and_features() -> None:
    specs = {spec.name: spec for spec in plan_catalog(PLANS)}
    assert sorted(specs) == ["business", "starter"]  # no price, not sold through Stripe
    business = specs["business"]
    assert business.product_key == "plan:business"
    assert business.base_price_key == "plan:business:base"
    assert business.metered_price_key == "plan:business:executions"
    assert business.features == (
        "quota:executions_per_month:1000000",
        "quota:concurrency:50",
        "quota:max_workers:8",
        "feature:overage",
    )
    assert OVERAGE_FEATURE not in specs["starter"].features
    # The catalog round-trips: a product's features are the quotas of its plan.
    assert quotas_from_entitlements(business.features).values["max_workers"] == 8
    assert feature_name("quota:executions_per_month:1000000") == ("Executions per month: 1,000,000")


def test_the_plan_of_a_subscription_comes_from_its_prices() -> None:
    ranking = {"starter": 10_000, "pro": 100_000, "business": 1_000_000}
    assert plan_of_price_keys(["plan:pro:base", "plan:pro:executions"], ranking) == "pro"
    assert plan_of_price_keys(["plan:pro:base", "plan:business:base"], ranking) == "business"
    assert plan_of_price_keys(["plan:gold:base", "other"], ranking) is None
    assert plan_of_price_keys([], ranking) is None
