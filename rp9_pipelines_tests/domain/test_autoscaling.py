import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rp9_pipelines.domain.autoscaling import (
    Decision,
    Policy,
    Recommendation,
    Signals,
    decide,
    dump_histories,
    event_id,
    load_histories,
    run_key,
    scale_down_refusal,
    votes,
    worker_concurrency,
)

POLICY = Policy(stabilisation_window_s=300)


def signals(workers: int = 1, **changes: object) -> Signals:
    fields: dict[str, object] = {
        "workers": workers,
        "concurrency": 2,
        "queue_depth": 0,
        "oldest_wait_s": None,
        "active": 0,
    }
    return Signals(**(fields | changes))  # type: ignore[arg-type]


def decide_now(
    s: Signals,
    history: tuple[Recommendation, ...] | None = (),
    now: float = 1000.0,
    low: int = 1,
    high: int = 4,
    policy: Policy = POLICY,
) -> Decision:
    return decide(s, min_workers=low, max_workers=high, policy=policy, history=history, now=now)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        # KEDA's backlog formula in job slots: ceil((waiting + running) / (2 slots * 0.8)).
        (signals(queue_depth=0, active=0), 0),
        (signals(queue_depth=1, active=0), 1),
        (signals(queue_depth=3, active=2), 4),
        (signals(workers=3, queue_depth=10, active=6), 10),
        # Inside the 10 % band (ratio 5 / (3 * 1.6) = 1.04): the current count stands.
        (signals(workers=3, queue_depth=3, active=2), 3),
    ],
)
def test_backlog_vote(case: Signals, expected: int) -> None:
    assert votes(case, POLICY)["backlog"] == expected


def test_hpa_votes_scale_the_current_count_by_metric_over_target() -> None:
    s = signals(
        workers=2,
        oldest_wait_s=25.0,
        queue_wait_p95_s=4.0,
        latency_p95_s=2.0,
        executions_per_minute=120.0,
    )
    got = votes(s, Policy(target_latency_p95_s=1.0))
    assert got["oldest_wait"] == 5  # ceil(2 * 25 / 10)
    assert got["queue_wait_p95"] == 1  # ceil(2 * 4 / 10)
    # One worker finishes 2 slots * 60 s / 2 s = 60 a minute, 48 at 80 %: ceil(120 / 48).
    assert got["throughput"] == 3
    assert got["latency_p95"] == 4  # ceil(2 * 2 / 1)
    assert "latency_p95" not in votes(s, Policy())  # off unless a target is set


def test_signals_without_data_do_not_vote() -> None:
    assert set(votes(signals(), POLICY)) == {"backlog"}
    assert "throughput" not in votes(signals(executions_per_minute=30.0), POLICY)


def test_scale_up_is_immediate_and_names_its_reason() -> None:
    d = decide_now(signals(queue_depth=180, active=2, oldest_wait_s=40.0))
    assert (d.workers_from, d.workers_to, d.direction) == (1, 4, "up")
    assert d.reason.startswith("scale up 1→4: backlog 180 waiting + 2 running")
    assert "114 wanted, the plan allows 4" in d.reason


def test_scale_up_is_bounded_by_the_step() -> None:
    d = decide_now(signals(workers=2, queue_depth=500), high=20, policy=Policy(max_step_up=3))
    assert d.workers_to == 5  # +3
    assert "step bounded to +3" in d.reason
    d = decide_now(signals(workers=8, queue_depth=500), high=40, policy=Policy(max_step_up=3))
    assert d.workers_to == 16  # +100 % beats +3


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    busy = decide_now(signals(workers=1, queue_depth=50), now=1000)
    assert busy.workers_to == 4
    idle = signals(workers=4)
    held = decide_now(idle, busy.history, now=1000 + 299)
    assert (held.workers_to, held.direction, held.held) == (4, "hold", True)
    assert "but 4 was recommended within the last 300 s (stabilisation)" in held.reason
    down = decide_now(idle, held.history, now=1000 + 301)
    assert (down.workers_to, down.direction, down.held) == (1, "down", False)
    assert down.reason.startswith("scale down 4→1")


def test_scale_down_goes_to_the_highest_recommendation_of_the_window() -> None:
    history = (Recommendation(900, 3), Recommendation(1100, 2))
    assert decide_now(signals(workers=4), history, now=1150).workers_to == 3
    assert decide_now(signals(workers=4), history, now=1250).workers_to == 2


def test_a_tenant_seen_for_the_first_time_keeps_its_size_for_a_window() -> None:
    first = decide_now(signals(workers=3), history=None, now=0)
    assert first.workers_to == 3
    assert decide_now(signals(workers=3), first.history, now=301).workers_to == 1


def test_out_of_range_counts_are_brought_into_the_plan() -> None:
    assert decide_now(signals(workers=0), low=2).workers_to == 2
    clamped = decide_now(signals(workers=6), history=None)
    assert clamped.workers_to == 4
    assert "above the plan's maximum 4" in clamped.reason


def test_history_keeps_only_what_can_still_matter() -> None:
    d = decide_now(signals(workers=4, queue_depth=4), (Recommendation(990, 4),), now=1000)
    # 3 (now) is below 4 (earlier) but outlives it; a recommendation at the minimum never counts.
    assert d.history == (Recommendation(990, 4), Recommendation(1000, 3))
    assert decide_now(signals(), history=(), now=1000).history == ()


def test_cursor_round_trip_and_bad_cursors() -> None:
    histories = {"a": (Recommendation(1.0, 3),), "b": ()}
    assert load_histories(dump_histories(histories)) == {"a": (Recommendation(1.0, 3),)}
    for bad in (None, "", "not json", '{"v": 99, "history": {}}', '{"v": 1}', "[]"):
        assert load_histories(bad) == {}


def test_run_keys_and_event_ids_are_deterministic() -> None:
    d = decide_now(signals(queue_depth=50))
    assert run_key("t1", d, 7) == "autoscale:t1:1->4:7"
    assert event_id(run_key("t1", d, 7)) == event_id(run_key("t1", d, 7))
    assert event_id(run_key("t1", d, 7)) != event_id(run_key("t1", d, 8))


def test_worker_concurrency_and_policy_validation() -> None:
    assert [worker_concurrency(n) for n in (0, 2, 10, 50)] == [1, 2, 10, 10]
    for bad in (
        {"target_utilisation": 0},
        {"tolerance": 1},
        {"max_step_up": 0},
        {"target_oldest_wait_s": 0},
        {"target_latency_p95_s": -1},
    ):
        with pytest.raises(ValueError, match="must be"):
            Policy(**bad)
    with pytest.raises(ValueError, match="min_workers"):
        decide_now(signals(), low=3, high=2)


# Properties -----------------------------------------------------------------------------------

# Idle, light and heavy loads alike, so that random walks go up and down.
seconds = st.one_of(st.just(0.0), st.floats(0, 20), st.floats(0, 3600))
optional_seconds = st.one_of(st.none(), seconds)
signal_values = st.fixed_dictionaries(
    {
        "queue_depth": st.one_of(st.just(0), st.integers(0, 20), st.integers(0, 5000)),
        "oldest_wait_s": optional_seconds,
        "active": st.one_of(st.just(0), st.integers(0, 200)),
        "executions_per_minute": st.one_of(st.none(), st.floats(0, 100), st.floats(0, 10_000)),
        "latency_p95_s": optional_seconds,
        "queue_wait_p95_s": optional_seconds,
    }
)
policies = st.builds(
    Policy,
    target_utilisation=st.floats(0.1, 1.0),
    target_oldest_wait_s=st.floats(0.5, 120),
    target_queue_wait_p95_s=st.floats(0.5, 120),
    target_latency_p95_s=st.one_of(st.none(), st.floats(0.5, 600)),
    tolerance=st.floats(0, 0.5),
    max_step_up=st.integers(1, 10),
    stabilisation_window_s=st.floats(0, 900),
)
ranges = st.tuples(st.integers(0, 10), st.integers(0, 20)).map(lambda r: (r[0], r[0] + r[1]))
histories = st.one_of(
    st.none(),
    st.lists(
        st.builds(Recommendation, st.floats(0, 2000, allow_nan=False), st.integers(0, 40)),
        max_size=6,
    ).map(tuple),
)


@given(
    values=signal_values,
    workers=st.integers(0, 40),
    concurrency=st.integers(1, 10),
    limits=ranges,
    policy=policies,
    history=histories,
    now=st.floats(0, 2000),
)
def test_never_outside_the_plan(
    values: dict[str, object],
    workers: int,
    concurrency: int,
    limits: tuple[int, int],
    policy: Policy,
    history: tuple[Recommendation, ...] | None,
    now: float,
) -> None:
    s = Signals(workers=workers, concurrency=concurrency, **values)  # type: ignore[arg-type]
    d = decide(
        s, min_workers=limits[0], max_workers=limits[1], policy=policy, history=history, now=now
    )
    assert limits[0] <= d.workers_to <= limits[1]
    assert d.reason


@given(
    values=signal_values,
    more_depth=st.integers(0, 5000),
    more_age=st.floats(0, 3600),
    workers=st.integers(0, 40),
    concurrency=st.integers(1, 10),
    limits=ranges,
    policy=policies,
    history=histories,
    now=st.floats(0, 2000),
)
def test_a_larger_backlog_never_gets_fewer_workers(
    values: dict[str, object],
    more_depth: int,
    more_age: float,
    workers: int,
    concurrency: int,
    limits: tuple[int, int],
    policy: Policy,
    history: tuple[Recommendation, ...] | None,
    now: float,
) -> None:
    small = Signals(workers=workers, concurrency=concurrency, **values)  # type: ignore[arg-type]
    large = dataclasses.replace(
        small,
        queue_depth=small.queue_depth + more_depth,
        oldest_wait_s=(small.oldest_wait_s or 0) + more_age,
    )
    kwargs = {
        "min_workers": limits[0],
        "max_workers": limits[1],
        "policy": policy,
        "history": history,
        "now": now,
    }
    assert decide(large, **kwargs).workers_to >= decide(small, **kwargs).workers_to  # type: ignore[arg-type]


@settings(max_examples=200)
@given(
    steps=st.lists(st.tuples(st.floats(1, 120), signal_values), min_size=2, max_size=40),
    start=st.integers(0, 12),
    concurrency=st.integers(1, 10),
    limits=ranges,
    policy=policies,
)
def test_no_scale_down_within_the_window_after_a_scale_up(
    steps: list[tuple[float, dict[str, object]]],
    start: int,
    concurrency: int,
    limits: tuple[int, int],
    policy: Policy,
) -> None:
    """Drive one tenant through a random load, its workers following every decision."""
    now, workers = 0.0, start
    history: tuple[Recommendation, ...] | None = None
    last_up: float | None = None
    for dt, values in steps:
        now += dt
        s = Signals(workers=workers, concurrency=concurrency, **values)  # type: ignore[arg-type]
        d = decide(
            s, min_workers=limits[0], max_workers=limits[1], policy=policy, history=history, now=now
        )
        in_range = limits[0] <= workers <= limits[1]
        if d.direction == "down" and in_range and last_up is not None:
            # Within float rounding: the window's start is computed as now - window.
            waited = now - last_up
            assert waited >= policy.stabilisation_window_s - 1e-9, (d.reason, now, last_up)
        if d.direction == "up":
            last_up = now
        workers, history = d.workers_to, d.history


@pytest.mark.parametrize(
    ("workers_to", "running", "waiting", "refused"),
    [(2, 10, 0, False), (2, 8, 2, False), (2, 10, 1, True), (1, 0, 6, True), (3, 0, 0, False)],
)
def test_a_scale_down_is_refused_while_what_is_in_flight_overflows_the_remaining_slots(
    workers_to: int, running: int, waiting: int, refused: bool
) -> None:
    why = scale_down_refusal(workers_to, 5, running, waiting)
    assert (why is not None) == refused
    if why:
        assert f"{workers_to} worker(s) run {workers_to * 5} at once" in why
