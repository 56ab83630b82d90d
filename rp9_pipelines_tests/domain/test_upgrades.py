import pytest
from hypothesis import given
from hypothesis import strategies as st

from rp9_pipelines.domain.upgrades import Offer, halted, parse_version, upgrade_refusal, waves

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
