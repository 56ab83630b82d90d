"""The backup and drill schedules read the real catalog and launch one run per active tenant,
tagged so the run queue bounds them."""

import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog import migrate
from rp9_pipelines.definitions import defs
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.settings import sqlalchemy_url

pytestmark = pytest.mark.stack

TICK = dt.datetime(2030, 1, 6, 3, 0, tzinfo=dt.UTC)


@pytest.fixture
def catalog(fresh_database_url: str) -> CatalogResource:
    migrate.upgrade(fresh_database_url)
    engine = sa.create_engine(sqlalchemy_url(fresh_database_url), poolclass=sa.NullPool)
    with engine.begin() as connection:
        for slug, status in (
            ("acme", "active"),
            ("globex", "active"),
            ("initech", "suspended"),
            ("hooli", "deleted"),
        ):
            connection.execute(
                sa.text(
                    "INSERT INTO tenants (slug, name, plan, n8n_version, status) "
                    "VALUES (:s, :s, 'pro', '2.20.12', :st)"
                ),
                {"s": slug, "st": status},
            )
    engine.dispose()
    return CatalogResource(database_url=fresh_database_url)


def evaluate(name: str, catalog: CatalogResource) -> list[dg.RunRequest]:
    schedule = defs().get_repository_def().get_schedule_def(name)
    context = dg.build_schedule_context(
        resources={"catalog": catalog}, scheduled_execution_time=TICK
    )
    data = schedule.evaluate_tick(context)
    return list(data.run_requests or [])


@pytest.mark.parametrize("kind", ["daily", "weekly"])
def test_backup_schedules_launch_one_run_per_active_tenant(
    kind: str, catalog: CatalogResource
) -> None:
    requests = evaluate(f"{kind}_backups", catalog)
    assert [r.tags["rp9/tenant"] for r in requests] == ["acme", "globex"]
    assert [r.run_key for r in requests] == [
        f"backup-{kind}-acme-20300106T0300",
        f"backup-{kind}-globex-20300106T0300",
    ]
    for request in requests:
        config = request.run_config["ops"]["backup_database"]["config"]
        assert config["kind"] == kind
        assert request.tags["rp9/tenant_id"] == config["tenant_id"]
    # The job's own tag is what dagster.yaml limits (a few backups at a time).
    assert defs().get_job_def("backup_tenant").tags["rp9/kind"] == "backup"


def test_quarterly_drills_do_not_hold_the_tenant_tag(catalog: CatalogResource) -> None:
    requests = evaluate("quarterly_restore_drills", catalog)
    assert [r.tags["rp9/drill_tenant"] for r in requests] == ["acme", "globex"]
    assert all("rp9/tenant" not in r.tags for r in requests)
    assert defs().get_job_def("restore_drill").tags["rp9/kind"] == "restore_drill"
