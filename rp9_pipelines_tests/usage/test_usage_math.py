import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rp9_pipelines.domain.usage import (
    BYTES_PER_GB,
    NS_PER_S,
    ExecutionDay,
    ResourceUse,
    Sample,
    business_metrics_row,
    day_bounds,
    day_usage,
    percentile_cont,
    resource_use,
    supabase_identifier,
)

DAY = dt.date(2026, 11, 28)
START, END = day_bounds(DAY)
MINUTE = dt.timedelta(minutes=1)


def every_minute(
    container: str,
    start: dt.datetime,
    minutes: int,
    cpu_per_min_ns: int,
    memory: int,
    cpu0: int = 0,
) -> list[Sample]:
    return [
        Sample(container, start + i * MINUTE, cpu0 + i * cpu_per_min_ns, memory)
        for i in range(minutes + 1)
    ]


def test_day_bounds_are_utc_midnights() -> None:
    start, end = day_bounds(dt.date(2026, 3, 29))  # a DST change elsewhere: not in UTC
    assert start == dt.datetime(2026, 3, 29, tzinfo=dt.UTC)
    assert end - start == dt.timedelta(hours=24)


def test_a_steady_container_over_a_whole_day() -> None:
    # Half a core (30 s of CPU a minute) and 2 GB, sampled every minute from midnight to midnight.
    samples = every_minute("m", START, 24 * 60, 30 * NS_PER_S, 2 * BYTES_PER_GB)
    use = resource_use(samples, START, END)
    assert use.cpu_seconds == pytest.approx(24 * 60 * 30)
    assert use.memory_gb_hours == pytest.approx(2 * 24)


def test_counter_reset_counts_the_new_value_as_used_since_the_restart() -> None:
    samples = [
        Sample("m", START, 100 * NS_PER_S, 0),
        Sample("m", START + MINUTE, 160 * NS_PER_S, 0),  # +60 s
        Sample("m", START + 2 * MINUTE, 5 * NS_PER_S, 0),  # restarted: 5 s since
        Sample("m", START + 3 * MINUTE, 25 * NS_PER_S, 0),  # +20 s
    ]
    assert resource_use(samples, START, END).cpu_seconds == pytest.approx(85)


def test_containers_are_separate_counters() -> None:
    a = every_minute("a", START, 10, 6 * NS_PER_S, BYTES_PER_GB, cpu0=10**12)
    b = every_minute("b", START, 10, 12 * NS_PER_S, BYTES_PER_GB)
    use = resource_use(a + b, START, END)
    assert use.cpu_seconds == pytest.approx(10 * 18)
    assert use.memory_gb_hours == pytest.approx(2 * 10 / 60)


def test_an_interval_across_midnight_is_shared_by_time() -> None:
    samples = [
        Sample("m", START - dt.timedelta(seconds=30), 0, BYTES_PER_GB),
        Sample("m", START + dt.timedelta(seconds=90), 120 * NS_PER_S, BYTES_PER_GB),
    ]
    assert resource_use(samples, START, END).cpu_seconds == pytest.approx(90)
    before = day_bounds(DAY - dt.timedelta(days=1))
    assert resource_use(samples, *before).cpu_seconds == pytest.approx(30)


def test_a_long_silence_charges_cpu_but_no_memory() -> None:
    # Stopped for an hour (suspended): the counter says what was used, nothing was held.
    samples = [
        Sample("m", START, 0, 4 * BYTES_PER_GB),
        Sample("m", START + dt.timedelta(hours=1), 10 * NS_PER_S, 4 * BYTES_PER_GB),
    ]
    use = resource_use(samples, START, END, max_gap=dt.timedelta(minutes=5))
    assert use.cpu_seconds == pytest.approx(10)
    assert use.memory_gb_hours == 0


def test_samples_outside_the_window_count_nothing() -> None:
    samples = every_minute("m", END + MINUTE, 10, NS_PER_S, BYTES_PER_GB)
    assert resource_use(samples, START, END) == ResourceUse(0.0, 0.0)


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(1, 400),
            st.integers(0, 10**11),
            st.integers(0, 8 * BYTES_PER_GB),
            st.booleans(),
        ),
        min_size=2,
        max_size=60,
    ),
    cut=st.integers(0, 20_000),
)
def test_splitting_a_window_splits_the_use(
    steps: list[tuple[int, int, int, bool]], cut: int
) -> None:
    """Whatever the samples (gaps, restarts), the two halves of a window add up to it."""
    at, cpu, samples = START, 0, []
    for seconds, used, memory, restart in steps:
        at += dt.timedelta(seconds=seconds)
        cpu = used if restart else cpu + used
        samples.append(Sample("m", at, cpu, memory))
    middle = START + dt.timedelta(seconds=cut)
    whole = resource_use(samples, START, at)
    first, second = resource_use(samples, START, middle), resource_use(samples, middle, at)
    assert first.cpu_seconds + second.cpu_seconds == pytest.approx(whole.cpu_seconds, abs=1e-6)
    assert first.memory_gb_hours + second.memory_gb_hours == pytest.approx(
        whole.memory_gb_hours, abs=1e-9
    )
    assert whole.cpu_seconds >= 0
    assert whole.memory_gb_hours >= 0


@pytest.mark.parametrize(
    ("values", "expected"),
    [([], None), ([7.0], 7.0), ([1.0, 2.0], 1.95), (list(map(float, range(1, 101))), 95.05)],
)
def test_percentile_cont_interpolates_like_postgres(
    values: list[float], expected: float | None
) -> None:
    assert percentile_cont(values, 0.95) == (pytest.approx(expected) if expected else None)


def test_day_usage_rounds_to_stable_figures() -> None:
    usage = day_usage(
        ExecutionDay(10, 2, 12_345, 1234.5678, None), ResourceUse(1.23456789, 0.1234567891)
    )
    assert usage.as_row() == {
        "executions": 10,
        "failures": 2,
        "duration_ms_sum": 12_345,
        "latency_p95_ms": 1234.6,
        "queue_wait_p95_ms": None,
        "cpu_seconds": 1.235,
        "memory_gb_hours": 0.123457,
    }


def test_business_metrics_row_and_its_ledger_identifier() -> None:
    row = business_metrics_row(
        "t-1",
        "acme",
        "pro",
        DAY,
        {
            "executions": 8,
            "failures": 2,
            "duration_ms_sum": 100,
            "latency_p95_ms": 12.5,
            "queue_wait_p95_ms": None,
            "cpu_seconds": 3.5,
            "memory_gb_hours": 0.25,
        },
    )
    assert row["day"] == "2026-11-28"
    assert row["error_rate"] == 0.25
    assert (
        business_metrics_row("t", "s", "p", DAY, {**row, "executions": 0, "failures": 0})[
            "error_rate"
        ]
        == 0.0
    )
    assert supabase_identifier("t-1", DAY) == "business_metrics:t-1:2026-11-28"
