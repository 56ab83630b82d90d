import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rp9_pipelines.domain.chargeback import (
    UNIT,
    Capacity,
    Price,
    Rates,
    compute,
    month_hours,
    share_out,
)

RATES = Rates(
    per_execution=0.001, per_duration_hour=0.5, per_cpu_core_hour=0.03, per_memory_gb_hour=0.004
)
HOURS = month_hours("2026-11")


def usage(*rows: tuple[str, int, int, float, float]) -> pd.DataFrame:
    return pd.DataFrame(
        rows,
        columns=["tenant_id", "executions", "duration_ms_sum", "cpu_seconds", "memory_gb_hours"],
    )


def test_month_hours() -> None:
    assert month_hours("2026-11") == 720
    assert month_hours("2026-02") == 672
    assert month_hours("2028-02") == 696


def test_usage_is_priced_at_the_rates_and_days_add_up() -> None:
    frame = usage(
        ("a", 1000, 3_600_000, 3600.0, 10.0),  # day 1
        ("a", 1000, 3_600_000, 3600.0, 10.0),  # day 2
    )
    result = compute(frame, RATES, Capacity(0, 0), HOURS)
    row = result.tenants.iloc[0]
    assert (row.executions, row.duration_hours, row.cpu_core_hours, row.memory_gb_hours) == (
        2000,
        2.0,
        2.0,
        20.0,
    )
    # 2000 x 0.001 + 2 h x 0.5 + 2 core-h x 0.03 + 20 GB-h x 0.004
    assert row.usage_cost == pytest.approx(2 + 1 + 0.06 + 0.08)
    assert row.idle_cost == 0
    assert row.total_cost == row.usage_cost


def test_idle_capacity_is_shared_in_proportion_to_usage_cost() -> None:
    frame = usage(("a", 3000, 0, 0.0, 0.0), ("b", 1000, 0, 0.0, 0.0))  # usage costs 3 : 1
    result = compute(frame, RATES, Capacity(cpu_cores=1, memory_gb=0), 100)
    idle = 1 * 100 * 0.03  # nobody used the core: 3.00 idle
    a, b = result.tenants.set_index("tenant_id").loc[["a", "b"], "idle_cost"]
    assert (a, b) == (pytest.approx(idle * 3 / 4), pytest.approx(idle / 4))
    assert result.totals.idle_cost == pytest.approx(idle)


def test_no_idle_cost_when_tenants_use_more_than_the_capacity() -> None:
    frame = usage(("a", 0, 0, 2 * 3600 * 100.0, 50.0 * 100))
    result = compute(frame, RATES, Capacity(cpu_cores=1, memory_gb=10), 100)
    assert result.totals.idle_cost == 0
    assert result.totals.cpu_utilisation == pytest.approx(2.0)


def test_nobody_used_anything_shares_idle_equally() -> None:
    frame = usage(("a", 0, 0, 0.0, 0.0), ("b", 0, 0, 0.0, 0.0), ("c", 0, 0, 0.0, 0.0))
    result = compute(frame, RATES, Capacity(cpu_cores=1, memory_gb=0), 1)  # 0.03 idle
    parts = sorted(result.tenants["idle_cost"])
    assert sum(parts) == pytest.approx(0.03)
    assert parts[-1] - parts[0] <= 1 / UNIT


def test_revenue_and_margin_where_prices_are_known() -> None:
    frame = usage(("a", 100, 0, 0.0, 0.0), ("b", 100, 0, 0.0, 0.0))
    result = compute(
        frame, RATES, Capacity(0, 0), HOURS, {"a": Price(base=20, per_execution=0.002)}
    )
    rows = result.tenants.set_index("tenant_id")
    assert rows.at["a", "revenue"] == pytest.approx(20.2)
    assert rows.at["a", "margin"] == pytest.approx(20.2 - 0.1)
    assert rows["revenue"].isna()["b"]
    assert rows["margin"].isna()["b"]


def test_missing_columns_are_refused() -> None:
    with pytest.raises(ValueError, match="cpu_seconds"):
        compute(pd.DataFrame({"tenant_id": ["a"], "executions": [1]}), RATES, Capacity(1, 1), 1)
    with pytest.raises(ValueError, match="negative"):
        Rates(-1, 0, 0, 0)


@settings(max_examples=300, deadline=None)
@given(total=st.integers(0, 10**12), weights=st.lists(st.floats(0, 1e6), min_size=1, max_size=50))
def test_share_out_is_exact_and_proportional(total: int, weights: list[float]) -> None:
    parts = share_out(total, np.array(weights, dtype="float64"))
    assert int(parts.sum()) == total
    assert (parts >= 0).all()
    weight_sum = sum(weights)
    for part, weight in zip(parts, weights, strict=True):
        expected = total * weight / weight_sum if weight_sum else total / len(weights)
        assert abs(part - expected) <= 1 + 1e-6 * total


tenants = st.lists(
    st.tuples(
        st.sampled_from([f"t{i}" for i in range(12)]),
        st.integers(0, 10**6),
        st.integers(0, 10**9),
        st.floats(0, 10**6),
        st.floats(0, 10**5),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=200, deadline=None)
@given(
    rows=tenants,
    cpu=st.floats(0, 64),
    memory=st.floats(0, 512),
    rates=st.tuples(*[st.floats(0, 10)] * 4),
)
def test_totals_conserve(
    rows: list[tuple[str, int, int, float, float]],
    cpu: float,
    memory: float,
    rates: tuple[float, float, float, float],
) -> None:
    """Σ total_cost = Σ usage_cost + idle cost, to the last 1/10,000; idle is never negative
    and each tenant's share of it is its share of usage cost."""
    result = compute(usage(*rows), Rates(*rates), Capacity(cpu, memory), HOURS)
    frame, totals = result.tenants, result.totals

    def units(column: str) -> int:
        return int(np.rint(frame[column].to_numpy() * UNIT).sum())

    assert units("total_cost") == units("usage_cost") + round(totals.idle_cost * UNIT)
    assert round(totals.total_cost * UNIT) == round(totals.used_cost * UNIT) + round(
        totals.idle_cost * UNIT
    )
    assert (frame["idle_cost"] >= 0).all()
    assert totals.idle_cost >= 0
    assert frame["tenant_id"].is_unique
    assert len(frame) == len({r[0] for r in rows})
    used = frame["usage_cost"].sum()
    if used > 0 and totals.idle_cost > 0:
        expected = frame["usage_cost"] / used * totals.idle_cost
        assert (frame["idle_cost"] - expected).abs().max() <= 1 / UNIT + 1e-9


def test_a_month_without_usage_charges_nobody() -> None:
    empty = pd.DataFrame(
        [], columns=["tenant_id", "executions", "duration_ms_sum", "cpu_seconds", "memory_gb_hours"]
    )
    result = compute(empty, RATES, Capacity(cpu_cores=2, memory_gb=8), HOURS)
    assert result.tenants.empty
    assert (result.totals.used_cost, result.totals.idle_cost, result.totals.total_cost) == (0, 0, 0)
