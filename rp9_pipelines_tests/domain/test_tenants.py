import pytest
from hypothesis import given
from hypothesis import strategies as st

from rp9_pipelines.domain.template import TEMPLATE_DATABASE
from rp9_pipelines.domain.tenants import (
    PLATFORM_DATABASES,
    RESERVED_SLUGS,
    InvalidRequest,
    Limits,
    PoolSizes,
    RoleLimits,
    TenantNames,
    check_custom_domain,
    check_resources,
    check_slug,
    check_tenant_database,
    check_workers,
    effective_limits,
    pool_sizes,
    role_limits,
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
    "slug",
    [
        "acme\n",  # `re.match` with `$` accepted a trailing newline
        "acme\r\n",
        "\nacme",
        "ac\nme",
        "acme ",
        " acme",
        "acme\x00",
        "acm\u00e9",
        "\uff41\uff43\uff4d\uff45",  # full-width letters
    ],
)
def test_slugs_are_matched_whole_and_ascii_only(slug: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        check_slug(slug)
    assert error.value.code == "invalid_slug"


@pytest.mark.parametrize(
    "slug",
    ["shared", "www", "api", "mail", "vault", "s3", "supabase", "postgres", "template", "rp9"],
)
def test_the_platforms_names_are_reserved(slug: str) -> None:
    with pytest.raises(InvalidRequest) as error:  # `s3` is short as well
        check_slug(slug)
    assert error.value.code == "invalid_slug"


def test_no_valid_slug_names_a_platform_database_in_either_tier() -> None:
    assert TEMPLATE_DATABASE in PLATFORM_DATABASES
    # `shared` dedicated would be exactly the shared database: reserved.
    assert TenantNames("shared", "dedicated").db_name == "n8n_shared"
    for database in PLATFORM_DATABASES:
        if database.startswith("n8n_"):
            assert database.removeprefix("n8n_").replace("_", "-") in RESERVED_SLUGS


@pytest.mark.parametrize("slug", ["shared", "a", "UPPER", "x" * 41])
def test_a_dedicated_database_is_never_a_platform_database(slug: str) -> None:
    with pytest.raises(InvalidRequest):
        check_tenant_database(TenantNames(slug, "dedicated"))


@pytest.mark.parametrize(
    ("concurrency", "main", "worker"), [(1, 4, 2), (5, 4, 3), (20, 10, 6), (200, 12, 6)]
)
def test_pools_grow_with_the_plans_concurrency_within_bounds(
    concurrency: int, main: int, worker: int
) -> None:
    assert pool_sizes(concurrency) == PoolSizes(main, worker)


def test_tenant_databases_pass_the_database_check() -> None:
    check_tenant_database(TenantNames("acme-co", "dedicated"))
    check_tenant_database(TenantNames("acme-co", "shared"))  # its schema in the shared one


# Concurrency 20: a main pool of 10, 6 per worker (10 job slots each).
@pytest.mark.parametrize(("max_workers", "connections"), [(1, 34), (4, 70), (16, 214)])
def test_role_limits_cover_every_process_twice_plus_spares(
    max_workers: int, connections: int
) -> None:
    limits = effective_limits({"plan": {**PLAN, "max_workers": max_workers}})
    assert role_limits(limits) == RoleLimits(connections, 300_000)


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
