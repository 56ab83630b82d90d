"""What a tenant job may do to a tenant in each state (domain.lifecycle)."""

import pytest

from rp9_pipelines.domain.lifecycle import autoscale_verdict, verdict

STATES = ["provisioning", "active", "suspended", "failed", "deleting", "deleted", "promoting"]


@pytest.mark.parametrize(
    ("job", "expected"),
    [
        ("provision", ["act", "act", "refuse", "act", "refuse", "refuse", "refuse"]),
        ("scale", ["refuse", "act", "record", "act", "refuse", "refuse", "refuse"]),
        ("suspend", ["refuse", "act", "act", "act", "refuse", "refuse", "refuse"]),
        ("resume", ["refuse", "skip", "act", "act", "refuse", "refuse", "refuse"]),
        ("delete", ["act", "act", "act", "act", "act", "act", "refuse"]),
    ],
)
def test_each_job_acts_only_where_the_state_allows(job: str, expected: list[str]) -> None:
    assert [verdict(job, state) for state in STATES] == expected  # type: ignore[arg-type]


def test_a_suspended_tenant_stays_stopped_through_a_scale_and_the_autoscaler() -> None:
    # A scale of a suspended tenant is recorded (applied when it resumes), never run.
    assert verdict("scale", "suspended") == "record"
    assert [autoscale_verdict(state) for state in STATES] == [
        "skip", "act", "skip", "skip", "skip", "skip", "skip"
    ]  # fmt: skip


def test_a_provision_queued_behind_a_delete_does_not_bring_the_tenant_back() -> None:
    assert verdict("provision", "deleting") == "refuse"
    assert verdict("provision", "deleted") == "refuse"
