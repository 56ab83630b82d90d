"""The control plane's metrics and the alert rules on the real stack: the local Prometheus
scrapes the API and the catalog exporter and evaluates deploy/observability's rules; a tenant
whose main stops is alerted within the rule's stated time, and the alert clears when it is back."""

import time
from typing import Any

import docker
import pytest

from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.observability.conftest import Prometheus, serve_traffic
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack

# RP9TenantDown: `for: 1m`, on a 15 s scrape and a 15 s evaluation: firing within 2 minutes.
TENANT_DOWN_WITHIN_S = 120


def value(prometheus: Prometheus, promql: str) -> float:
    result = prometheus.query(promql)
    assert len(result) == 1, f"{promql}: {result}"
    return float(result[0]["value"][1])


def test_the_control_plane_exports_its_requests_launches_and_the_fleet(
    observed: dict[str, Any], prometheus: Prometheus
) -> None:
    slug = observed["slug"]
    # The API: the tenant's creation, its backup and their polling, by route template.
    assert value(prometheus, 'sum(rp9_api_requests_total{route="/tenants/{ref}",status="200"})') > 0
    assert value(prometheus, 'sum(rp9_api_run_launches_total{outcome="launched"})') >= 2
    assert prometheus.has("rp9_api_request_duration_seconds_bucket")
    # The catalog exporter: the tenant as the catalog knows it, and the fleet.
    assert value(prometheus, f'rp9_tenant_workers{{tenant="{slug}"}}') >= 1
    assert value(prometheus, f'rp9_tenant_workers_max{{tenant="{slug}"}}') >= 1
    assert value(prometheus, f'rp9_tenant_executions_quota{{tenant="{slug}"}}') > 0
    backup_age = value(
        prometheus, f'time() - rp9_tenant_last_verified_backup_timestamp_seconds{{tenant="{slug}"}}'
    )
    assert 0 <= backup_age < 600
    assert value(prometheus, f'rp9_tenant_queue_oldest_wait_seconds{{tenant="{slug}"}}') >= 0
    assert value(prometheus, 'sum(rp9_tenants{status="active"})') >= 1
    assert value(prometheus, "rp9_exporter_last_scrape_error") == 0
    # The session's Dagster daemon beats, as the exporter reads it from Dagster's Postgres.
    daemon_age = value(
        prometheus, 'time() - rp9_dagster_daemon_heartbeat_timestamp_seconds{daemon="SENSOR"}'
    )
    assert daemon_age < 120
    # The host's filesystems (the disk alerts) and the rules themselves are loaded.
    assert prometheus.has('node_filesystem_avail_bytes{mountpoint="/"}')
    rules = prometheus.query('ALERTS{alertname="RP9Watchdog"}')
    assert rules, "the rules of deploy/observability are not evaluated (no RP9Watchdog)"


def test_a_stopped_main_fires_tenant_down_within_its_time_and_clears_once_back(
    observed: dict[str, Any],
    prometheus: Prometheus,
    docker_client: docker.DockerClient,
    settings: Settings,
    vault: Any,
) -> None:
    slug = observed["slug"]
    assert not prometheus.alerts("RP9TenantDown", tenant=slug), "down before anything stopped"
    (main,) = docker_client.containers.list(
        filters={"label": [f"io.rp9.tenant={slug}", "io.rp9.role=main"]}
    )
    main.stop(timeout=5)
    stopped = time.monotonic()
    try:

        def firing() -> bool:
            return any(
                a["state"] == "firing" for a in prometheus.alerts("RP9TenantDown", tenant=slug)
            )

        wait_until(firing, timeout_s=TENANT_DOWN_WITHIN_S + 30, what=f"RP9TenantDown for {slug}")
        fired_s = time.monotonic() - stopped
        assert fired_s <= TENANT_DOWN_WITHIN_S, f"fired {fired_s:.0f} s after the stop"
        (alert,) = prometheus.alerts("RP9TenantDown", tenant=slug)
        assert alert["labels"]["severity"] == "page"
        assert alert["annotations"]["runbook"]
    finally:
        main.start()
    wait_until(
        lambda: not prometheus.alerts("RP9TenantDown", tenant=slug),
        timeout_s=120,
        what=f"RP9TenantDown for {slug} to clear",
    )
    assert prometheus.has(f'up{{job="n8n",tenant="{slug}",role="main"}} == 1')
    # The restarted main counts executions from zero: traffic again for the tests after this one.
    serve_traffic(settings, vault, observed, prometheus, install=False)
