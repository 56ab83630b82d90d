"""Usage automation on a real (fresh) catalog: every tenant gets its partition key, and the
daily schedule launches yesterday's partition of every active or suspended tenant."""

import datetime as dt

import dagster as dg
import pytest
import sqlalchemy as sa

from rp9_pipelines.catalog import migrate
from rp9_pipelines.definitions import defs
from rp9_pipelines.defs.partitions import TENANTS_PARTITION, tenant_day_key
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.settings import sqlalchemy_url

pytestmark = pytest.mark.stack

TICK = dt.datetime(2026, 11, 29, 0, 15, tzinfo=dt.UTC)


@pytest.fixture
def catalog(fresh_database_url: str) -> CatalogResource:
    migrate.upgrade(fresh_database_url)
    engine = sa.create_engine(sqlalchemy_url(fresh_database_url), poolclass=sa.NullPool)
    with engine.begin() as connection:
        for slug, status in (
            ("acme", "active"),
            ("globex", "suspended"),
            ("initech", "provisioning"),
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


def test_every_tenant_gets_its_partition_key_once(catalog: CatalogResource) -> None:
    sensor = defs().get_repository_def().get_sensor_def("register_tenant_partitions")
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(TENANTS_PARTITION, ["acme"])
        context = dg.build_sensor_context(instance=instance, resources={"catalog": catalog})
        result = sensor(context)
        assert isinstance(result, dg.SensorResult)
        requests = result.dynamic_partitions_requests or []
        assert [(r.partitions_def_name, sorted(r.partition_keys)) for r in requests] == [
            (TENANTS_PARTITION, ["globex", "initech"])  # a deleted tenant gets no new key
        ]
        instance.add_dynamic_partitions(TENANTS_PARTITION, ["globex", "initech"])
        again = sensor(dg.build_sensor_context(instance=instance, resources={"catalog": catalog}))
        assert isinstance(again, dg.SkipReason)


def test_daily_schedule_launches_yesterday_for_measured_tenants(catalog: CatalogResource) -> None:
    repository = defs().get_repository_def()
    schedule = repository.get_schedule_def("usage_daily_schedule")
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance,
            resources={"catalog": catalog},
            scheduled_execution_time=TICK,
            repository_def=repository,
        )
        requests = list(schedule.evaluate_tick(context).run_requests or [])
        assert [r.partition_key for r in requests] == [
            tenant_day_key("2026-11-28", "acme"),
            tenant_day_key("2026-11-28", "globex"),
        ]
        assert [r.run_key for r in requests] == ["usage:2026-11-28:acme", "usage:2026-11-28:globex"]
        # The keys the runs need exist even before the sensor's next tick.
        assert {"acme", "globex"} <= set(instance.get_dynamic_partitions(TENANTS_PARTITION))
    assert schedule.cron_schedule == "15 0 * * *"
    assert schedule.job_name == "usage_daily"


def test_sampling_ships_stopped() -> None:
    repository = defs().get_repository_def()
    sampling = repository.get_schedule_def("resource_sampling")
    assert sampling.cron_schedule == "* * * * *"
    assert sampling.default_status == dg.DefaultScheduleStatus.STOPPED
