"""The `promotion_candidates` sensor evaluated in-process against a real catalog (a migrated
throwaway database on the real server) holding synthetic shared tenants and their usage."""

import datetime as dt
import uuid
from collections.abc import Iterator

import dagster as dg
import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog import migrate
from rp9_pipelines.catalog import promotions as catalog
from rp9_pipelines.catalog.tables import tenants, usage
from rp9_pipelines.defs.promotion.sensor import build_promotion_candidates, promotion_windows
from rp9_pipelines.domain.promotion import PromotionPolicy
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.settings import sqlalchemy_url
from rp9_pipelines_tests.autoscaling.synthetic import insert_tenants

pytestmark = pytest.mark.stack

TODAY = dt.date(2026, 12, 2)


@pytest.fixture
def catalog_url(fresh_database_url: str) -> str:
    migrate.upgrade(fresh_database_url)
    return fresh_database_url


@pytest.fixture
def engine(catalog_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(sqlalchemy_url(catalog_url), poolclass=sa.NullPool)
    yield engine
    engine.dispose()


def add_usage(engine: sa.Engine, tenant_id: uuid.UUID, **day: object) -> None:
    """A week of identical days before TODAY."""
    with engine.begin() as connection:
        connection.execute(
            sa.insert(usage),
            [
                {"tenant_id": tenant_id, "day": TODAY - dt.timedelta(days=i), **day}
                for i in range(1, 8)
            ],
        )


def evaluate(catalog_url: str) -> str:
    sensor = build_promotion_candidates(PromotionPolicy(), today=TODAY)
    context = dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(),
        resources={"catalog": CatalogResource(database_url=catalog_url)},
    )
    result = sensor(context)
    assert isinstance(result, dg.SkipReason)
    return result.skip_message or ""


def test_busy_and_compliance_bound_tenants_are_proposed_with_their_reasons(
    catalog_url: str, engine: sa.Engine
) -> None:
    quiet, busy, slow, bound = insert_tenants(engine, ["quiet", "busy", "slow", "bound"])
    (dedicated,) = insert_tenants(engine, ["own-db"], tier="dedicated")
    # pro: 100,000 executions a month. Quiet: 100 a day, 8 % of the shared CPU; busy: 3,000 a
    # day (90 %), 83 % of the CPU; slow: p95 latency of 8 s every day; bound: idle but flagged.
    add_usage(engine, quiet.id, executions=100, latency_p95_ms=300.0, cpu_seconds=20.0)
    add_usage(engine, busy.id, executions=3_000, latency_p95_ms=300.0, cpu_seconds=200.0)
    add_usage(engine, slow.id, executions=100, latency_p95_ms=8_000.0, cpu_seconds=20.0)
    add_usage(engine, dedicated.id, executions=5_000, latency_p95_ms=9_000.0, cpu_seconds=60.0)
    with engine.begin() as connection:
        connection.execute(
            sa.update(tenants)
            .where(tenants.c.id == bound.id)
            .values(compliance={"requires_dedicated": True})
        )

    told = evaluate(catalog_url)
    assert told == (
        "4 shared tenant(s) judged; promotion proposed for an operator to approve: "
        "bound (compliance), busy (usage), slow (latency)"
    )
    with engine.connect() as connection:
        decided = {t.slug: catalog.decisions(connection, t.id) for t in (quiet, busy, slow, bound)}
        assert catalog.decisions(connection, dedicated.id) == []  # not shared: not judged
    assert all(len(rows) == 1 and rows[0]["day"] == TODAY for rows in decided.values())
    verdicts = {slug: (rows[0]["propose"], rows[0]["trigger"]) for slug, rows in decided.items()}
    assert verdicts == {
        "quiet": (False, None),
        "busy": (True, "usage"),
        "slow": (True, "latency"),
        "bound": (True, "compliance"),
    }
    assert any("90% of the plan's 100000" in r for r in decided["busy"][0]["reasons"])
    assert any(
        "latency p95 over 5000 ms on 7 of 7 days" in r for r in decided["slow"][0]["reasons"]
    )
    assert decided["bound"][0]["reasons"][0] == "its compliance flag requires a dedicated database"
    assert any("8% of the shared tier's CPU" in r for r in decided["quiet"][0]["reasons"])

    # Judged again the same day: still one decision per tenant, the latest.
    with engine.begin() as connection:
        connection.execute(
            sa.update(usage).where(usage.c.tenant_id == slow.id).values(latency_p95_ms=300.0)
        )
    assert "slow" not in evaluate(catalog_url)
    with engine.connect() as connection:
        again = catalog.decisions(connection, slow.id)
    assert [(r["propose"], r["trigger"]) for r in again] == [(False, None)]


def test_in_auto_mode_a_proposal_starts_one_promotion_and_no_second(
    catalog_url: str, engine: sa.Engine
) -> None:
    made = insert_tenants(engine, ["calm", "flagged", "other", "more", "last", "sixth"])
    bound = made[1]
    # Six quiet tenants, a sixth of the shared tier's CPU each (a fifth once one is promoting):
    # only a flag proposes.
    for tenant in made:
        add_usage(engine, tenant.id, executions=100, latency_p95_ms=300.0, cpu_seconds=20.0)
    with engine.begin() as connection:
        connection.execute(
            sa.update(tenants)
            .where(tenants.c.id == bound.id)
            .values(compliance={"requires_dedicated": True})
        )
    sensor = build_promotion_candidates(PromotionPolicy(), today=TODAY, mode="auto")
    context = dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(),
        resources={"catalog": CatalogResource(database_url=catalog_url)},
    )
    result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    (request,) = result.run_requests or []
    assert request.job_name == "promote_tenant"
    assert request.tags["rp9/tenant"] == "flagged"
    with engine.connect() as connection:
        (promotion,) = catalog.of_tenant(connection, bound.id)
        status = connection.execute(
            sa.select(tenants.c.status).where(tenants.c.id == bound.id)
        ).scalar_one()
    assert promotion["trigger"] == "compliance"
    assert request.run_config["ops"]["prepare_dedicated"]["config"] == {
        "promotion_id": str(promotion["id"])
    }
    assert status == "promoting"
    # The next tick: the tenant is promoting, no longer an active shared tenant to judge.
    again = sensor(context)
    assert isinstance(again, dg.SkipReason)
    with engine.connect() as connection:
        assert len(catalog.of_tenant(connection, bound.id)) == 1


def test_a_rollback_window_that_is_over_removes_the_shared_schema_once(
    catalog_url: str, engine: sa.Engine
) -> None:
    (tenant,) = insert_tenants(engine, ["moved"], tier="dedicated")
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as connection:
        promotion_id = catalog.start(connection, tenant.id, "manual")
        catalog.advance(
            connection,
            promotion_id,
            "done",
            status="succeeded",
            switched_at=now - dt.timedelta(days=2),
            rollback_until=now - dt.timedelta(days=1),
        )
    context = dg.build_sensor_context(
        instance=dg.DagsterInstance.ephemeral(),
        resources={"catalog": CatalogResource(database_url=catalog_url)},
    )
    result = promotion_windows(context)
    assert isinstance(result, dg.SensorResult)
    (request,) = result.run_requests or []
    assert request.job_name == "remove_shared_schema"
    assert request.run_key == f"remove-shared-{promotion_id}"
    with engine.begin() as connection:
        catalog.advance(connection, promotion_id, "done", shared_removed_at=now)
    assert isinstance(promotion_windows(context), dg.SkipReason)
