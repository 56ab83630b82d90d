"""The autoscaler sensor evaluated in-process (`build_sensor_context`) against a real catalog (a
migrated throwaway database on the real server), the real Redis, Postgres and Prometheus."""

import re
import uuid
from collections.abc import Iterator
from typing import Any

import dagster as dg
import pytest
import redis
import sqlalchemy as sa

from rp9_pipelines.catalog import autoscaling as autoscaling_catalog
from rp9_pipelines.catalog import migrate
from rp9_pipelines.defs.autoscaling.sensor import build_autoscaler
from rp9_pipelines.defs.tenants.jobs import scale_tenant
from rp9_pipelines.domain.autoscaling import load_histories
from rp9_pipelines.launches import TENANT_ID_TAG
from rp9_pipelines.resources.catalog import CatalogResource
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.resources.prometheus import PrometheusResource
from rp9_pipelines.resources.redis_queue import RedisResource
from rp9_pipelines.settings import AutoscalingSettings, Settings, sqlalchemy_url
from rp9_pipelines_tests.autoscaling.synthetic import clear_keys, fill_queue, insert_tenants
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack


class Fleet:
    """Synthetic tenants in a fresh catalog, and a way to run the sensor over them."""

    def __init__(self, settings: Settings, catalog_url: str, tag: str) -> None:
        self.tag = tag
        self.engine = sa.create_engine(sqlalchemy_url(catalog_url), poolclass=sa.NullPool)
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.instance = dg.DagsterInstance.ephemeral()
        self.resources = {
            "catalog": CatalogResource(database_url=catalog_url),
            "redis": RedisResource(redis_url=settings.redis_url),
            "n8n_data": N8nDataResource(admin_url=settings.database_url),
            "prometheus": PrometheusResource(base_url=settings.prometheus_url),
        }

    def evaluate(self, cursor: str | None = None, **overrides: Any) -> dg.SensorResult:
        knobs: dict[str, Any] = {"enabled": True, "tenants": f"{self.tag}-*"} | overrides
        sensor = build_autoscaler(AutoscalingSettings(**knobs))
        context = dg.build_sensor_context(
            instance=self.instance, cursor=cursor, resources=self.resources
        )
        result = sensor(context)
        assert isinstance(result, dg.SensorResult)
        return result

    @staticmethod
    def skipped(result: dg.SensorResult) -> str:
        """The tick's skip reason (none when it requested runs)."""
        assert not result.run_requests
        assert result.skip_reason is not None
        return result.skip_reason.skip_message or ""

    def events(self, tenant_id: uuid.UUID) -> list[dict[str, Any]]:
        with self.engine.connect() as connection:
            return autoscaling_catalog.events(connection, tenant_id)


@pytest.fixture
def fleet(settings: Settings, fresh_database_url: str) -> Iterator[Fleet]:
    migrate.upgrade(fresh_database_url)
    fleet = Fleet(settings, fresh_database_url, f"assen-{uuid.uuid4().hex[:8]}")
    yield fleet
    clear_keys(fleet.redis, f"rp9:{fleet.tag}-*")
    fleet.redis.close()
    fleet.engine.dispose()
    fleet.instance.dispose()


def test_a_backlog_requests_a_scale_run_and_records_why(fleet: Fleet) -> None:
    busy, idle = insert_tenants(fleet.engine, [f"{fleet.tag}-busy", f"{fleet.tag}-idle"])
    fill_queue(fleet.redis, busy.names.bull_prefix, waiting=40, active=10, age_s=25)

    result = fleet.evaluate()
    assert result.skip_reason is None
    [request] = result.run_requests or []
    assert request.job_name in {None, "scale_tenant"}
    assert re.fullmatch(rf"autoscale:{busy.id}:1->4:\d+", request.run_key or "")
    assert request.run_config == {
        "ops": {"apply_scale": {"config": {"tenant_id": str(busy.id), "workers": 4}}}
    }
    assert request.tags["rp9/tenant"] == busy.slug
    assert request.tags[TENANT_ID_TAG] == str(busy.id)
    assert request.tags["rp9/requested_by"] == "autoscaler"
    dg.validate_run_config(scale_tenant, request.run_config)

    [event] = fleet.events(busy.id)
    assert str(event["id"]) == request.tags["rp9/autoscaling_event"]
    assert (event["workers_from"], event["workers_to"]) == (1, 4)
    assert event["reason"].startswith("scale up 1→4: backlog 40 waiting + 10 running")
    signals = event["signals"]
    assert (signals["queue_depth"], signals["active"], signals["concurrency"]) == (40, 10, 10)
    # The head of `wait` is job 11 of 50, made 25 s * 39/49 ago.
    assert 19.9 <= signals["oldest_wait_s"] <= 22
    assert signals["sources"]["queue"] == "redis"
    assert signals["votes"]["backlog"] == 7  # ceil(50 / (10 slots * 0.8)), capped at 4
    assert fleet.events(idle.id) == []
    # The busy tenant's recommendation is kept for the stabilisation window; the idle one,
    # at its minimum, needs nothing.
    assert set(load_histories(result.cursor)) == {str(busy.id)}


def test_the_same_tick_asks_with_the_same_key_and_records_one_event(fleet: Fleet) -> None:
    [busy] = insert_tenants(fleet.engine, [f"{fleet.tag}-busy"])
    fill_queue(fleet.redis, busy.names.bull_prefix, waiting=40)
    # A tick a day long: both evaluations fall in it (as a daemon retrying the same tick).
    keys = [(fleet.evaluate(interval_s=86_400).run_requests or [])[0].run_key for _ in range(2)]
    assert keys[0] == keys[1]
    assert len(fleet.events(busy.id)) == 1


def test_idle_tenants_skip_with_reasons_then_scale_down_after_the_window(fleet: Fleet) -> None:
    [big] = insert_tenants(fleet.engine, [f"{fleet.tag}-big"], workers=3)
    [calm] = insert_tenants(fleet.engine, [f"{fleet.tag}-calm"])
    window = 3.0

    first = fleet.evaluate(stabilisation_window_s=window)
    reason = fleet.skipped(first)
    assert reason.startswith("no worker count to change: 2 judged")
    assert f"{big.slug} (hold 3: backlog 0 waiting" in reason
    assert "but 3 was recommended within the last 3 s (stabilisation)" in reason
    cursor: str | None = first.cursor

    def scaled_down() -> dg.RunRequest | None:
        nonlocal cursor
        result = fleet.evaluate(cursor, stabilisation_window_s=window)
        cursor = result.cursor
        return result.run_requests[0] if result.run_requests else None

    request = wait_until(scaled_down, timeout_s=15, what="the scale-down after the window")
    assert request.run_config["ops"]["apply_scale"]["config"]["workers"] == 1
    [event] = fleet.events(big.id)
    assert (event["workers_from"], event["workers_to"]) == (3, 1)
    assert event["reason"].startswith("scale down 3→1")
    assert "highest recommendation over the last 3 s: 1" in event["reason"]
    assert fleet.events(calm.id) == []


def test_a_tenant_with_a_run_in_flight_is_left_alone(fleet: Fleet) -> None:
    [busy] = insert_tenants(fleet.engine, [f"{fleet.tag}-busy"])
    fill_queue(fleet.redis, busy.names.bull_prefix, waiting=40)
    seen = fleet.evaluate()
    fleet.instance.create_run_for_job(
        job_def=scale_tenant,
        run_config=seen.run_requests[0].run_config if seen.run_requests else None,
        tags={TENANT_ID_TAG: str(busy.id)},
        status=dg.DagsterRunStatus.STARTED,
    )
    result = fleet.evaluate(seen.cursor)
    assert f"a run already in flight for {busy.slug}" in fleet.skipped(result)
    # Its history is kept for when the run is done.
    assert load_histories(result.cursor) == load_histories(seen.cursor)


def test_no_matching_tenant_and_a_prometheus_outage_are_explained(fleet: Fleet) -> None:
    nobody = fleet.skipped(fleet.evaluate(tenants="nobody-*"))
    assert nobody == "no active tenant matches AUTOSCALE_TENANTS='nobody-*'"

    [busy] = insert_tenants(fleet.engine, [f"{fleet.tag}-busy"], quota={"concurrency": 2})
    fleet.resources["prometheus"] = PrometheusResource(base_url="http://127.0.0.1:1", timeout_s=1)
    idle = fleet.evaluate()
    assert "Prometheus unavailable, executions from the databases" in fleet.skipped(idle)
    # Two running jobs fill the one worker's two slots (100 % > 80 %): a second worker, from
    # Redis alone.
    fill_queue(fleet.redis, busy.names.bull_prefix, waiting=0, active=2)
    assert fleet.evaluate(idle.cursor).run_requests
    [event] = fleet.events(busy.id)
    assert (event["signals"]["concurrency"], event["workers_to"]) == (2, 2)
