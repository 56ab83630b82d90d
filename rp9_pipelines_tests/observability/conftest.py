"""The observability tests' stack: the session's API and a catalog exporter scraped by the
local Prometheus (their target files), and one tenant with traffic and a verified backup whose
series Prometheus has. All of it for this package only: the exporter, the scrapes and the
tenant stop before the load tests of other packages run on the same two cores."""

import json
import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest

from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.conftest import BIN, Served, free_port, serve
from rp9_pipelines_tests.tenants.conftest import TenantN8n, api, unique_slug, vault
from rp9_pipelines_tests.waiting import wait_until

__all__ = ["api", "vault"]


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body: dict[str, Any] = answer.json()
        assert body["status"] == "success", f"{promql}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def has(self, promql: str) -> bool:
        return bool(self.query(promql))

    def alerts(self, name: str, **labels: str) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.url}/api/v1/alerts", timeout=10).json()
        return [
            alert
            for alert in body["data"]["alerts"]
            if alert["labels"].get("alertname") == name
            and all(alert["labels"].get(k) == v for k, v in labels.items())
        ]


def serve_traffic(
    settings: Settings, vault: Any, tenant: dict[str, Any], prometheus: Prometheus, *, install: bool
) -> None:
    """Webhooks through Traefik to `tenant`'s n8n until Prometheus has its n8n's executions and
    Traefik's requests for it."""
    slug = tenant["slug"]
    n8n = TenantN8n(settings, vault, tenant)
    if install:
        n8n.install_echo("observed")
    for i in range(10):
        assert n8n.call("observed", {"i": i}).status_code == 200
    for promql in (
        f'up{{job="n8n",tenant="{slug}",role="main"}} == 1',
        # Two samples of the executions counter: what a rate (a panel, a rule) needs.
        f'count_over_time(n8n_workflow_execution_duration_seconds_count{{tenant="{slug}"}}[1m])'
        " >= 2",
        f'traefik_service_requests_total{{service="t-{slug}@docker"}}',
    ):
        wait_until(partial(prometheus.has, promql), timeout_s=120, what=f"Prometheus: {promql}")


@pytest.fixture(scope="session")
def prometheus_url(settings: Settings) -> str:
    assert settings.prometheus_url, "PROMETHEUS_URL is not set: run with the stack's env"
    return settings.prometheus_url.rstrip("/")


@pytest.fixture(scope="session")
def prometheus(prometheus_url: str) -> Prometheus:
    return Prometheus(prometheus_url)


@pytest.fixture(scope="package")
def catalog_exporter(
    dagster_webserver: Served, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """`python -m rp9_pipelines.observability.exporter`, reading the session's Dagster too."""
    port = free_port()
    with serve(
        [str(BIN / "python"), "-m", "rp9_pipelines.observability.exporter", "--port", str(port)],
        url=f"http://127.0.0.1:{port}",
        ready_path="/metrics",
        log=tmp_path_factory.mktemp("exporter") / "exporter.log",
        env={**os.environ, **dagster_webserver.env},
        timeout_s=30,
    ) as served:
        yield served


@pytest.fixture(scope="package")
def scraped(api_server: Served, catalog_exporter: Served, prometheus: Prometheus) -> Iterator[None]:
    """The session's API and exporter are Prometheus's `rp9-api` and `rp9-catalog` targets."""
    targets = Path(os.environ["PROMETHEUS_TARGETS_DIR"])
    for name, served in (("api", api_server), ("catalog", catalog_exporter)):
        address = served.url.removeprefix("http://")
        (targets / f"{name}.json").write_text(json.dumps([{"targets": [address]}]))
    wait_until(
        lambda: (
            prometheus.has('up{job="rp9-api"} == 1')
            and prometheus.has('up{job="rp9-catalog"} == 1')
        ),
        timeout_s=90,
        what="Prometheus to scrape the API and the catalog exporter",
    )
    yield
    for name in ("api", "catalog"):
        (targets / f"{name}.json").write_text("[]")


@pytest.fixture(scope="package")
def observed(
    api: Api, settings: Settings, vault: Any, scraped: None, prometheus: Prometheus
) -> Iterator[dict[str, Any]]:
    """A starter tenant that served webhooks through Traefik and has a verified backup, once
    Prometheus has its n8n's, Traefik's and the exporter's series."""
    tenant = api.create_tenant(slug=unique_slug("obs"), name="Observed Co", plan="starter")
    slug = tenant["slug"]
    backup = api.post(f"/tenants/{tenant['id']}/backup")
    assert backup.status_code == 202, backup.text
    assert api.wait_run(backup.json()["run_id"])["status"] == "SUCCESS"
    serve_traffic(settings, vault, tenant, prometheus, install=True)
    for promql in (
        f'rp9_tenant_info{{tenant="{slug}",status="active"}}',
        f'rp9_tenant_last_verified_backup_timestamp_seconds{{tenant="{slug}"}}',
    ):
        wait_until(partial(prometheus.has, promql), timeout_s=120, what=f"Prometheus: {promql}")
    yield tenant
    deleted = api.request("DELETE", f"/tenants/{tenant['id']}?purge=true")
    assert deleted.status_code == 202, deleted.text
    assert api.wait_run(deleted.json()["run_id"])["status"] == "SUCCESS"


@pytest.fixture(scope="package")
def observed_tenant(observed: dict[str, Any]) -> str:
    return str(observed["slug"])
