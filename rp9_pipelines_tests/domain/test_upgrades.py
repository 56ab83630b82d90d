import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rp9_pipelines.domain.upgrades import (
    PHASES,
    Offer,
    boot_failure,
    halted,
    migrations_in_log,
    parse_version,
    rollback_refusal,
    touched_data,
    upgrade_refusal,
    watch_failure,
    waves,
)

OFFER = Offer(
    versions=frozenset({"2.16.1", "2.20.12", "2.22.6"}),
    paths=frozenset({("2.16.1", "2.20.12"), ("2.20.12", "2.22.6")}),
)


def test_versions_compare_as_numbers() -> None:
    assert parse_version("2.20.12") > parse_version("2.9.30")
    for wrong in ("2.20", "v2.20.12", "2.20.12-beta", ""):
        with pytest.raises(ValueError, match="not an n8n version"):
            parse_version(wrong)


def test_an_offer_goes_forward_between_versions_it_offers() -> None:
    with pytest.raises(ValueError, match="does not go forward"):
        Offer(frozenset({"2.16.1", "2.20.12"}), frozenset({("2.20.12", "2.16.1")}))
    with pytest.raises(ValueError, match="not offered"):
        Offer(frozenset({"2.16.1"}), frozenset({("2.16.1", "2.20.12")}))


@pytest.mark.parametrize(
    ("current", "target", "status", "busy", "code"),
    [
        ("2.20.12", "2.22.6", "active", False, None),
        ("2.16.1", "2.20.12", "active", False, None),
        ("2.20.12", "2.20.12", "active", False, "already_on_version"),
        ("2.20.12", "2.41.3", "active", False, "version_not_offered"),
        ("2.22.6", "2.20.12", "active", False, "downgrade"),
        ("2.16.1", "2.22.6", "active", False, "path_not_tested"),
        ("2.20.12", "latest", "active", False, "invalid_version"),
        ("2.20.12", "2.22.6", "suspended", False, "invalid_state"),
        ("2.20.12", "2.22.6", "deleted", False, "invalid_state"),
        ("2.20.12", "2.22.6", "promoting", False, "tenant_busy"),
        ("2.20.12", "2.22.6", "active", True, "tenant_busy"),
    ],
)
def test_an_upgrade_is_refused_with_a_stable_code(
    current: str, target: str, status: str, busy: bool, code: str | None
) -> None:
    refused = upgrade_refusal(OFFER, current, target, status, busy)
    assert (refused[0] if refused else None) == code


@given(
    tenants=st.sets(st.text("abcdef", min_size=1, max_size=4), max_size=40),
    canaries=st.lists(st.text("abcdef", min_size=1, max_size=4), max_size=5),
    percentages=st.lists(st.integers(1, 100), min_size=1, max_size=4).map(sorted),
)
def test_every_tenant_is_in_exactly_one_wave_canaries_first(
    tenants: set[str], canaries: list[str], percentages: list[int]
) -> None:
    planned = waves(tenants, canaries, [float(p) for p in percentages], "r1")
    placed = [t for wave in planned for t in wave.tenants]
    assert sorted(placed) == sorted(tenants)
    first = [t for t in dict.fromkeys(canaries) if t in tenants]
    assert placed[: len(first)] == first
    assert all(wave.tenants for wave in planned)


def test_waves_follow_their_cumulative_percentages_and_the_rollouts_order() -> None:
    fleet = [f"t{i:02d}" for i in range(20)]
    planned = waves(fleet, ["t07"], [10, 50, 100], "2026-12 rollout")
    assert [w.name for w in planned] == ["canary", "10%", "50%", "100%"]
    assert [len(w.tenants) for w in planned] == [1, 2, 8, 9]
    assert planned == waves(reversed(fleet), ["t07"], [10, 50, 100], "2026-12 rollout")
    assert planned != waves(fleet, ["t07"], [10, 50, 100], "another rollout")
    with pytest.raises(ValueError, match="must rise"):
        waves(fleet, [], [50, 10], "r")


def test_a_failed_or_rolled_back_tenant_halts_the_rollout() -> None:
    assert halted({"a": "succeeded", "b": "succeeded"}) == []
    assert halted({"a": "succeeded", "b": "rolled_back", "c": "failed"}) == ["b", "c"]


# An n8n 2.22.6 boot's log (`docker logs --timestamps`), abridged.
BOOT_LOG = """\
2026-12-03T04:10:01.100000000Z Initializing n8n process
2026-12-03T04:10:03.250000000Z Migrations in progress, please do NOT stop the process.
2026-12-03T04:10:03.251000000Z Starting migration CreateEvaluationConfig1778100000000
2026-12-03T04:10:03.400000000Z Finished migration CreateEvaluationConfig1778100000000
2026-12-03T04:10:03.401000000Z Starting migration CreateAgentTables1783000000000
2026-12-03T04:10:04.751000000Z Finished migration CreateAgentTables1783000000000
2026-12-03T04:10:06.000000000Z Editor is now accessible via:
"""


def test_the_migrations_of_a_boot_are_counted_and_timed_from_its_log() -> None:
    found = migrations_in_log(BOOT_LOG.splitlines())
    assert found.count == 2
    assert found.seconds == pytest.approx(1.5)
    assert found.names == ("CreateEvaluationConfig1778100000000", "CreateAgentTables1783000000000")
    nothing = migrations_in_log(["2026-12-03T04:10:01.1Z Initializing n8n process"])
    assert (nothing.count, nothing.seconds) == (0, None)


def test_only_the_phases_from_the_new_versions_start_have_touched_the_data() -> None:
    assert [p for p in PHASES if touched_data(p)] == [
        "started",
        "switched",
        "watching",
        "done",
        "rolled_back",
    ]
    assert not touched_data("stopped")


def test_the_watch_rolls_back_on_a_failed_probe_readiness_lost_or_an_error_rate() -> None:
    healthy = [True] * 10
    assert watch_failure(healthy, None, (100, 2), (50, 1)) is None
    assert "probe" in (watch_failure(healthy, "wrong nonce", (0, 0), (0, 0)) or "")
    # One blink is not a failure; three looks in a row are.
    assert watch_failure([True, False, True, False, True], None, (0, 0), (0, 0)) is None
    assert "not ready" in (watch_failure([True, False, False, False], None, (0, 0), (0, 0)) or "")
    # Failures above the rate before the switch (5 points over, and at least 5 of them).
    assert "failed since the switch" in (watch_failure(healthy, None, (100, 2), (50, 10)) or "")
    assert watch_failure(healthy, None, (100, 20), (50, 10)) is None
    assert watch_failure(healthy, None, (0, 0), (4, 4)) is None


def test_an_upgrade_is_rolled_back_only_when_completed_and_within_its_window() -> None:
    now = dt.datetime(2026, 12, 3, tzinfo=dt.UTC)
    done = {"status": "succeeded", "rollback_until": now + dt.timedelta(hours=1)}
    assert rollback_refusal("active", done, now) is None
    assert rollback_refusal("upgrading", done, now) == (
        "invalid_state",
        "only an active tenant can be rolled back; it is upgrading",
    )
    assert rollback_refusal("active", None, now)[0] == "no_upgrade"  # type: ignore[index]
    rolled = {**done, "status": "rolled_back"}
    assert rollback_refusal("active", rolled, now)[0] == "no_upgrade"  # type: ignore[index]
    late = {**done, "rollback_until": now - dt.timedelta(seconds=1)}
    assert rollback_refusal("active", late, now)[0] == "rollback_window_over"  # type: ignore[index]


def test_a_failed_boot_is_told_by_its_failing_migration_and_first_error() -> None:
    log = """\
2026-12-03T03:55:01.1Z Starting migration CreateEvaluationConfig1778100000000
2026-12-03T03:55:01.2Z Finished migration CreateEvaluationConfig1778100000000
2026-12-03T03:55:01.3Z Starting migration AddEvaluationConfigColumnsToTestRun1778100002000
2026-12-03T03:55:01.4Z QueryFailedError: there is no unique constraint matching given keys
2026-12-03T03:55:01.4Z     at PostgresQueryRunner.query (PostgresQueryRunner.ts:331:19)
2026-12-03T03:55:01.5Z Last session crashed
""".splitlines()
    assert boot_failure(log) == (
        "migration AddEvaluationConfigColumnsToTestRun1778100002000 failed;"
        " QueryFailedError: there is no unique constraint matching given keys"
    )
    assert boot_failure(["2026-12-03T03:55:01.5Z Last session crashed"]) == (
        "n8n exited (no error in its log)"
    )
