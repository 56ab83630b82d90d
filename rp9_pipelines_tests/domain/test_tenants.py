import pytest
from hypothesis import given
from hypothesis import strategies as st

from rp9_pipelines.domain.tenants import (
    InvalidRequest,
    Limits,
    TenantNames,
    check_custom_domain,
    check_resources,
    check_slug,
    check_workers,
    effective_limits,
)

PLAN: dict[str, object] = {
    "executions_per_month": 100_000,
    "concurrency": 20,
    "cpu": 2.0,
    "memory_mb": 2048,
    "min_workers": 1,
    "max_workers": 4,
    "overage_allowed": False,
}


@pytest.mark.parametrize("slug", ["abc", "acme-co", "a1-b2-c3", "x" * 40, "123"])
def test_valid_slugs(slug: str) -> None:
    check_slug(slug)


@pytest.mark.parametrize(
    "slug", ["ab", "x" * 41, "-acme", "acme-", "Acme", "ac_me", "ac--me", "ac.me", "", "api"]
)
def test_invalid_slugs(slug: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        check_slug(slug)
    assert error.value.code == "invalid_slug"


@pytest.mark.parametrize(
    ("domain", "ok"),
    [
        (None, True),
        ("n8n.acme.com", True),
        ("acme.rp9.io", False),
        ("rp9.io", False),
        ("acme", False),
        ("http://acme.com", False),
    ],
)
def test_custom_domains(domain: str | None, ok: bool) -> None:
    if ok:
        check_custom_domain(domain, "rp9.io")
    else:
        with pytest.raises(InvalidRequest) as error:
            check_custom_domain(domain, "rp9.io")
        assert error.value.code == "invalid_custom_domain"


def test_manual_beats_stripe_beats_plan_and_none_means_unset() -> None:
    limits = effective_limits(
        {
            "plan": PLAN,
            "stripe": {"executions_per_month": 500_000, "cpu": None},
            "manual": {"cpu": 1.5, "executions_per_month": None},
        }
    )
    assert limits == Limits(
        executions_per_month=500_000,
        concurrency=20,
        cpu=1.5,
        memory_mb=2048,
        min_workers=1,
        max_workers=4,
        overage_allowed=False,
    )


@given(st.integers(min_value=-5, max_value=20))
def test_workers_are_accepted_exactly_within_the_plan_range(workers: int) -> None:
    limits = effective_limits({"plan": PLAN})
    if 1 <= workers <= 4:
        check_workers(workers, limits, "pro")
    else:
        with pytest.raises(InvalidRequest) as error:
            check_workers(workers, limits, "pro")
        assert error.value.code == "workers_out_of_range"


@pytest.mark.parametrize(("cpu", "memory"), [(0, None), (65, None), (None, 256), (None, 10**7)])
def test_resources_out_of_bounds(cpu: float | None, memory: int | None) -> None:
    with pytest.raises(InvalidRequest, match="must be within"):
        check_resources(cpu, memory)


def test_names_per_tier() -> None:
    shared, dedicated = TenantNames("acme-co", "shared"), TenantNames("acme-co", "dedicated")
    assert (shared.db_name, shared.db_schema, shared.db_role) == (
        "n8n_shared",
        "t_acme_co",
        "t_acme_co",
    )
    assert (dedicated.db_name, dedicated.db_schema, dedicated.db_role) == (
        "n8n_acme_co",
        "public",
        "d_acme_co",
    )
    assert shared.bull_prefix != TenantNames("other", "shared").bull_prefix
    assert shared.redis_key_prefix.startswith("rp9:acme-co:")
    assert shared.container("worker", "green", 3) == "rp9-acme-co-green-worker-3"
    assert shared.hosts("rp9.io", "n8n.acme.com") == ["acme-co.rp9.io", "n8n.acme.com"]


@given(st.from_regex(r"[a-z0-9]([a-z0-9]|-(?=[a-z0-9])){1,38}[a-z0-9]", fullmatch=True))
def test_every_valid_slug_gives_valid_postgres_identifiers(slug: str) -> None:
    for names in (TenantNames(slug, "shared"), TenantNames(slug, "dedicated")):
        for identifier in (names.db_name, names.db_schema, names.db_role):
            assert len(identifier) <= 63
            assert identifier.replace("_", "").isalnum()
