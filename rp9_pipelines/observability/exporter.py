"""The catalog exporter (job `rp9-catalog`, docs/observability.md): the fleet as the platform
catalog knows it, per tenant, read at each scrape, plus the Dagster daemons' heartbeats.

A process of its own, so that the fleet's alerts keep their data when the API is down:
`python -m rp9_pipelines.observability.exporter [--host H] [--port P]`.
"""

import argparse
import datetime as dt
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rp9_pipelines.catalog.fleet import TenantState, fleet
from rp9_pipelines.resources.redis_queue import QueueSnapshot, RedisResource
from rp9_pipelines.settings import get_settings, sqlalchemy_url

log = logging.getLogger("rp9.exporter")

Heartbeats = Callable[[], dict[str, float]]
Queues = Callable[[list[str]], dict[str, QueueSnapshot]]


def _gauge(name: str, doc: str, labels: Iterable[str] = ("tenant",)) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _seconds(at: dt.datetime) -> float:
    return at.timestamp()


def tenant_families(
    states: list[TenantState], now: dt.datetime, queues: dict[str, QueueSnapshot]
) -> list[GaugeMetricFamily]:
    """The per-tenant and fleet families of `states` (pure: what a scrape shows)."""
    info = _gauge(
        "rp9_tenant_info",
        "A tenant not deleted, with its catalog facts as labels (always 1).",
        ["tenant", "tenant_id", "plan", "tier", "region", "status", "n8n_version"],
    )
    created = _gauge("rp9_tenant_created_timestamp_seconds", "When the tenant was created.")
    workers = _gauge("rp9_tenant_workers", "Workers the catalog runs for the tenant.")
    workers_min = _gauge("rp9_tenant_workers_min", "The tenant's effective minimum of workers.")
    workers_max = _gauge("rp9_tenant_workers_max", "The tenant's effective maximum of workers.")
    cpu_limit = _gauge(
        "rp9_tenant_cpu_limit_cores", "CPU cores each of the tenant's n8n containers may use."
    )
    memory_limit = _gauge(
        "rp9_tenant_memory_limit_bytes", "Memory each of the tenant's n8n containers may use."
    )
    executions = _gauge(
        "rp9_tenant_executions_month", "Executions collected into usage this month (UTC)."
    )
    quota = _gauge("rp9_tenant_executions_quota", "The tenant's monthly execution quota.")
    used = _gauge("rp9_tenant_quota_used_ratio", "This month's executions over the quota.")
    backup = _gauge(
        "rp9_tenant_last_verified_backup_timestamp_seconds",
        "When the tenant's newest verified (stored and read back) backup finished.",
    )
    drill = _gauge(
        "rp9_tenant_last_passed_drill_timestamp_seconds",
        "When the tenant's newest passed restore drill finished.",
    )
    enforcement = _gauge(
        "rp9_tenant_enforcement_action",
        "The latest enforcement action of this month (always 1).",
        ["tenant", "action"],
    )
    change_failed = _gauge(
        "rp9_tenant_change_failed",
        "1 when the tenant's latest change of this kind failed within 7 days, else 0.",
        ["tenant", "kind"],
    )
    oldest = _gauge(
        "rp9_tenant_queue_oldest_wait_seconds",
        "Age of the oldest job waiting in the tenant's queue (0 when none waits).",
    )
    counts: dict[tuple[str, str, str], int] = {}
    for t in states:
        info.add_metric([t.slug, str(t.id), t.plan, t.tier, t.region, t.status, t.n8n_version], 1)
        created.add_metric([t.slug], _seconds(t.created_at))
        workers.add_metric([t.slug], t.workers)
        executions.add_metric([t.slug], t.executions_month)
        if t.limits is not None:
            workers_min.add_metric([t.slug], t.limits.min_workers)
            workers_max.add_metric([t.slug], t.limits.max_workers)
            cpu_limit.add_metric([t.slug], t.limits.cpu)
            memory_limit.add_metric([t.slug], t.limits.memory_mb * 1024 * 1024)
            quota.add_metric([t.slug], t.limits.executions_per_month)
            if t.limits.executions_per_month > 0:
                used.add_metric([t.slug], t.executions_month / t.limits.executions_per_month)
        if t.last_verified_backup is not None:
            backup.add_metric([t.slug], _seconds(t.last_verified_backup))
        if t.last_passed_drill is not None:
            drill.add_metric([t.slug], _seconds(t.last_passed_drill))
        if t.enforcement_action is not None:
            enforcement.add_metric([t.slug, t.enforcement_action], 1)
        for kind, change in t.changes.items():
            change_failed.add_metric([t.slug, kind], 1 if change.failed_recently(now) else 0)
        queue = queues.get(t.names.bull_prefix)
        if queue is not None and queue.readable:
            oldest.add_metric([t.slug], queue.oldest_wait_s or 0.0)
        key = (t.status, t.tier, t.plan)
        counts[key] = counts.get(key, 0) + 1
    fleet_counts = _gauge("rp9_tenants", "Tenants not deleted.", ["status", "tier", "plan"])
    for (status, tier, plan), count in sorted(counts.items()):
        fleet_counts.add_metric([status, tier, plan], count)
    return [
        info,
        created,
        workers,
        workers_min,
        workers_max,
        cpu_limit,
        memory_limit,
        executions,
        quota,
        used,
        backup,
        drill,
        enforcement,
        change_failed,
        oldest,
        fleet_counts,
    ]


class CatalogCollector(Collector):
    """Reads the catalog (and the tenants' queues, and Dagster's heartbeats) at each scrape.
    A part that cannot be read is left out and `rp9_exporter_last_scrape_error` says so: the
    alerts on absent series then speak."""

    def __init__(self, engine: sa.Engine, queues: Queues, heartbeats: Heartbeats | None) -> None:
        self.engine = engine
        self.queues = queues
        self.heartbeats = heartbeats

    def collect(self) -> Iterator[Metric]:
        started = time.perf_counter()
        failed = 0
        now = dt.datetime.now(dt.UTC)
        try:
            with self.engine.connect() as connection:
                states = fleet(connection, now)
        except Exception:
            log.exception("the catalog could not be read")
            states, failed = [], 1
        snapshots: dict[str, QueueSnapshot] = {}
        if states:
            try:
                snapshots = self.queues([t.names.bull_prefix for t in states])
            except Exception:
                log.exception("the tenants' queues could not be read")
                failed = 1
        if states or not failed:
            yield from tenant_families(states, now, snapshots)
        if self.heartbeats is not None:
            beats = _gauge(
                "rp9_dagster_daemon_heartbeat_timestamp_seconds",
                "When each Dagster daemon last reported alive.",
                ["daemon"],
            )
            try:
                for daemon, at in sorted(self.heartbeats().items()):
                    beats.add_metric([daemon], at)
                yield beats
            except Exception:
                log.exception("Dagster's daemon heartbeats could not be read")
                failed = 1
        error = GaugeMetricFamily(
            "rp9_exporter_last_scrape_error", "1 when part of the last scrape could not be read."
        )
        error.add_metric([], failed)
        yield error
        duration = GaugeMetricFamily(
            "rp9_exporter_scrape_duration_seconds", "How long the last scrape took."
        )
        duration.add_metric([], time.perf_counter() - started)
        yield duration


def dagster_heartbeats() -> Heartbeats | None:
    """The Dagster instance's daemon heartbeats (DAGSTER_HOME's storage), None without one."""
    if not os.environ.get("DAGSTER_HOME"):
        return None
    from dagster import DagsterInstance

    instance: Any = DagsterInstance.get()

    def beats() -> dict[str, float]:
        return {
            daemon: float(beat.timestamp)
            for daemon, beat in instance.get_daemon_heartbeats().items()
        }

    return beats


def registry() -> CollectorRegistry:
    settings = get_settings()
    engine = sa.create_engine(
        sqlalchemy_url(settings.database_url),
        pool_pre_ping=True,
        connect_args={"connect_timeout": 5},
    )
    redis = RedisResource(redis_url=settings.redis_url)
    collector = CatalogCollector(engine, redis.queue_snapshots, dagster_heartbeats())
    found = CollectorRegistry(auto_describe=False)
    found.register(collector)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9464)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    start_http_server(args.port, addr=args.host, registry=registry())
    log.info("serving the catalog's metrics at http://%s:%d/metrics", args.host, args.port)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
