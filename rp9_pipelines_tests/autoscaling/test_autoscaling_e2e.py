"""Autoscaling end to end, all real: a dedicated tenant (pro: 1..4 workers of 2 job slots), a
webhook workflow taking ~2 s, 200 executions enqueued through Traefik, the autoscaler sensor
running in a Dagster daemon, scale runs converging Docker. Nothing may be lost or crash."""

import math
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest
import sqlalchemy as sa

from rp9_pipelines.api.dagster_client import DagsterClient
from rp9_pipelines.catalog import autoscaling as autoscaling_catalog
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.resources.prometheus import PrometheusResource
from rp9_pipelines.resources.redis_queue import QueueSnapshot, RedisResource
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.autoscaling import load
from rp9_pipelines_tests.tenants.conftest import TenantN8n, unique_slug
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack

EXECUTIONS = 200
EXECUTION_S = 2.0
# Short enough for a test; production defaults are 30 s, 300 s and 120 s.
INTERVAL_S = 5
WINDOW_S = 30
SIGNAL_WINDOW_S = 45
# Long enough that the scale-down run (launched in a new process) reaches the worker while its
# executions still run.
HOLD_S = 20
# n8n's execution-duration histogram buckets (prom-client defaults extended to 600 s).
# The local Prometheus's scrape interval (deploy/local/prometheus.yml): increase() extrapolates
# the counter's delta to the window's two edges, by up to about one interval each.
SCRAPE_INTERVAL_S = int(
    re.search(  # type: ignore[union-attr]
        r"scrape_interval: (\d+)s",
        (Path(__file__).parents[2] / "deploy/local/prometheus.yml").read_text(),
    ).group(1)
)
BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]


@pytest.fixture(scope="module")
def tenant(api: Api, settings: Settings) -> Iterator[dict[str, Any]]:
    slug = unique_slug("as")
    yield load.provision(api, settings, slug)
    response = api.request("DELETE", f"/tenants/{slug}?purge=true")
    assert response.status_code == 202, response.text
    assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"


def catalog_workers(settings: Settings, slug: str) -> int:
    engine = sa.create_engine(sqlalchemy_url(settings.database_url), poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            query = sa.text("SELECT workers FROM tenants WHERE slug = :s")
            return int(connection.execute(query, {"s": slug}).scalar_one())
    finally:
        engine.dispose()


def test_a_removed_worker_finishes_its_executions_before_it_goes(
    settings: Settings, api: Api, vault: VaultResource, tenant: dict[str, Any]
) -> None:
    slug = tenant["slug"]
    n8n = TenantN8n(settings, vault, tenant)
    names = n8n.names
    workflow = load.install_slow(n8n, "hold", HOLD_S)
    scaled = api.post(f"/tenants/{slug}/scale", {"workers": 2})
    assert api.wait_run(scaled.json()["run_id"])["status"] == "SUCCESS"

    # Four long executions fill both workers' two slots each.
    sent = load.enqueue(n8n, "hold", 4)
    assert sent.statuses == {200: 4}
    started = sent.started
    redis = RedisResource(redis_url=settings.redis_url)
    wait_until(
        lambda: redis.queue_snapshots([names.bull_prefix])[names.bull_prefix].active == 4,
        timeout_s=30,
        what="four running executions",
    )
    second = f"rp9-{slug}-blue-worker-2"
    # Bull marks a job active a moment before the worker logs that it started it.
    wait_until(
        lambda: load.first_execution_on(settings, second, started - 1) is not None,
        timeout_s=15,
        what="worker-2 to log one of the executions",
    )

    # Four running executions need both workers' slots: a plain scale-down is refused...
    refused = api.post(f"/tenants/{slug}/scale", {"workers": 1})
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "capacity_in_use"
    assert "4 executions are running and 0 waiting" in refused.json()["error"]["message"]
    # ...and a forced one drains the worker it removes.
    with load.following_logs(settings, second) as lines:
        response = api.post(f"/tenants/{slug}/scale", {"workers": 1, "force": True})
        run = api.wait_run(response.json()["run_id"])
    assert run["status"] == "SUCCESS"
    # The worker was told to stop while it still ran its two executions, and waited for them.
    assert "Waiting for 2 active executions to finish..." in "\n".join(lines), lines
    done = load.executions(settings, names, workflow)
    assert done.by_status == {"success": 4}
    assert done.last_stopped is not None
    assert done.last_stopped.timestamp() >= started + HOLD_S
    assert run["end_time"] >= done.last_stopped.timestamp() - 1
    assert redis.queue_snapshots([names.bull_prefix])[names.bull_prefix] == QueueSnapshot(
        0, 0, None
    )
    assert api.get(f"/tenants/{slug}").json()["workers"] == 1


def test_the_autoscaler_scales_a_backlog_up_and_back_down_losing_nothing(
    settings: Settings, api: Api, vault: VaultResource, tenant: dict[str, Any]
) -> None:
    scale_a_backlog_up_and_back_down(settings, api, vault, tenant)


def scale_a_backlog_up_and_back_down(
    settings: Settings, api: Api, vault: VaultResource, tenant: dict[str, Any]
) -> None:
    """The autoscaler's whole story on `tenant` (`load.provision`), on whichever runtime the
    settings name (`runtime/test_swarm_tenant.py` runs it on the Swarm)."""
    slug = tenant["slug"]
    n8n = TenantN8n(settings, vault, tenant)
    names = n8n.names
    assert catalog_workers(settings, slug) == 1
    workflow = load.install_slow(n8n, "slow", EXECUTION_S)
    prometheus = PrometheusResource(base_url=settings.prometheus_url)
    # One execution before the load, so that Prometheus holds the tenant's duration series
    # before it grows (a counter's first sample is not counted by increase()).
    assert load.enqueue(n8n, "slow", 1).statuses == {200: 1}
    knobs = {
        "interval_s": str(INTERVAL_S),
        "stabilisation_window_s": str(WINDOW_S),
        "signal_window_s": str(SIGNAL_WINDOW_S),
    }
    with load.dagster_with_autoscaler(slug, **knobs) as dagster:
        load.start_autoscaler(dagster)
        wait_until(
            lambda: slug in prometheus.execution_rates(300),
            timeout_s=60,
            what="Prometheus to scrape the warm-up execution",
        )
        warm_up = load.executions(settings, names, workflow)
        assert warm_up.by_status == {"success": 1}

        watch = load.Watch(settings, names)
        with watch.running():
            # Sent over 20 s, across the first scale-up (ticks every 5 s).
            sent = load.enqueue(n8n, "slow", EXECUTIONS, rate=EXECUTIONS / 20)
            began = sent.started
            wait_until(
                lambda: catalog_workers(settings, slug) > 1,
                timeout_s=60,
                what="the autoscaler to scale up",
            )
            # An operator's scale-down to one worker now would leave a backlog: refused, with
            # the figures read from the tenant's queue.
            refused = api.post(f"/tenants/{slug}/scale", {"workers": 1})
            assert refused.status_code == 409, refused.text
            assert refused.json()["error"]["code"] == "capacity_in_use"
            assert "waiting" in refused.json()["error"]["message"]
            second = wait_until(
                lambda: load.first_execution_on(settings, f"rp9-{slug}-blue-worker-2", began),
                timeout_s=120,
                what="the second worker to serve",
            )

            def finished() -> load.Executions | None:
                seen = load.executions(settings, names, workflow)
                return seen if seen.finished == EXECUTIONS + 1 else None

            drained = wait_until(finished, timeout_s=240, what="the backlog to drain")
            wait_until(
                lambda: (
                    catalog_workers(settings, slug) == 1
                    and (s := watch.latest()) is not None
                    and s.healthy_workers == 1
                ),
                # The windows, then a tick, the drain of a worker and its run: on two busy
                # cores (the whole suite in CI) that tail has taken more than two minutes.
                timeout_s=WINDOW_S + SIGNAL_WINDOW_S + 240,
                what="the return to one worker",
            )
        client = DagsterClient(f"{dagster.url}/graphql")
        engine = sa.create_engine(sqlalchemy_url(settings.database_url), poolclass=sa.NullPool)
        with engine.connect() as connection:
            story = autoscaling_catalog.events(connection, uuid.UUID(tenant["id"]))
        engine.dispose()

        # The last scale run may still be finishing its own bookkeeping after the worker left.
        def finished_runs() -> list[Any] | None:
            runs = [client.run(e["run_id"]) if e["run_id"] else None for e in story]
            done = all(r is None or r.status in ("SUCCESS", "FAILURE", "CANCELED") for r in runs)
            return runs if done else None

        runs = wait_until(finished_runs, timeout_s=120, what="the scale runs to finish")

    assert drained.last_stopped is not None
    print(
        f"\nsecond worker serving {second - began:.1f} s after the backlog began; "
        f"{EXECUTIONS} executions drained in {drained.last_stopped.timestamp() - began:.1f} s; "
        f"peak {max(s.healthy_workers for s in watch.samples)} workers"
    )
    # Every call answered 2xx while workers came and went: the webhooks, and the tenant's
    # address asked twice a second from the backlog's start to the return to one worker.
    assert sent.statuses == {200: EXECUTIONS}
    assert set(watch.edge) == {200}, watch.edge
    # Nothing lost, nothing crashed: every execution the webhook accepted ran to success.
    assert drained.by_status == {"success": EXECUTIONS + 1}
    queue = RedisResource(redis_url=settings.redis_url).queue_snapshots([names.bull_prefix])
    assert queue[names.bull_prefix] == QueueSnapshot(0, 0, None)
    # It went to the plan's maximum while the backlog lasted, and back to the minimum after.
    assert max(s.healthy_workers for s in watch.samples) == 4
    assert watch.samples[-1].healthy_workers == 1

    # The story, as autoscaling_events tells it: up from 1 while the queue was deep, down to 1
    # only after the stabilisation window, each step carried out by a successful scale run.
    assert len(story) >= 2, story
    first, last = story[0], story[-1]
    assert first["workers_from"] == 1
    assert first["workers_to"] > 1
    assert first["reason"].startswith(f"scale up 1→{first['workers_to']}")
    # A tick in the load's first second sees the worker's slots full before anything waits
    # (utilisation scales it up); the deep queue shows in the scale-ups that follow.
    assert first["signals"]["queue_depth"] + first["signals"]["active"] > 0
    assert any(
        e["signals"]["queue_depth"] > 0 for e in story if e["workers_to"] > e["workers_from"]
    )
    assert first["signals"]["sources"]["queue"] == "redis"
    assert last["workers_to"] == 1
    assert last["workers_from"] > 1
    assert last["reason"].startswith(f"scale down {last['workers_from']}→1")
    assert f"highest recommendation over the last {WINDOW_S} s: 1" in last["reason"]
    ups = [e["at"].timestamp() for e in story if e["workers_to"] > e["workers_from"]]
    downs = [e["at"].timestamp() for e in story if e["workers_to"] < e["workers_from"]]
    assert all(down - up >= WINDOW_S for down in downs for up in ups if up < down)
    assert [run.status if run else None for run in runs] == ["SUCCESS"] * len(runs), [
        (event["reason"], event["run_id"]) for event in story
    ]
    assert all(run.tags.get("rp9/requested_by") == "autoscaler" for run in runs if run)

    assert_sources_agree(settings, prometheus, names, began, watch)


def test_a_restarting_main_answers_503_with_retry_after_and_never_looks_missing(
    settings: Settings,
    vault: VaultResource,
    tenant: dict[str, Any],
    docker_client: docker.DockerClient,
) -> None:
    """While its main stops and boots again, a tenant's address answers 503 with `Retry-After`
    (Traefik's 502 turned into the fallback's page; then the fallback router while Docker does
    not call the new process healthy), never a 502 or Traefik's 404."""
    n8n = TenantN8n(settings, vault, tenant)
    main = docker_client.containers.get(f"rp9-{tenant['slug']}-blue-main")
    answers: Counter[tuple[int, bool, str]] = Counter()
    stop = threading.Event()
    edge = httpx.Client(base_url=settings.traefik_url, headers={"Host": n8n.host}, timeout=30)

    def probe() -> None:
        while not stop.is_set():
            try:
                answer = edge.get("/healthz")
                error = answer.json().get("error", {}) if answer.is_error else {}
                code = f"{error.get('code', '')}: {error.get('message', '')}"
                answers[(answer.status_code, "retry-after" in answer.headers, code)] += 1
            except (httpx.HTTPError, ValueError) as error:
                answers[(0, False, type(error).__name__)] += 1
            stop.wait(0.05)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    try:
        wait_until(lambda: sum(answers.values()) >= 5, timeout_s=10, what="the probe")
        main.restart(timeout=30)
        wait_until(
            lambda: sum(n for (status, *_), n in answers.items() if status == 503) > 0,
            timeout_s=60,
            what="the restarting main to be answered for",
        )
        wait_until(
            lambda: edge.get("/healthz").status_code == 200,
            timeout_s=120,
            what="the main back",
        )
    finally:
        stop.set()
        thread.join(timeout=35)
        edge.close()
    print(f"\nanswers while the main restarted: {dict(answers)}")
    assert {status for status, *_ in answers} <= {200, 503}, answers
    assert all(
        retry_after and code.startswith("tenant_unavailable:")
        for (status, retry_after, code) in answers
        if status == 503
    ), answers


def assert_sources_agree(
    settings: Settings,
    prometheus: PrometheusResource,
    names: TenantNames,
    began: float,
    watch: load.Watch,
) -> None:
    """The same load through both sources: the tenant's `execution_entity` and Redis on one
    side, n8n's metrics scraped by Prometheus on the other."""
    window = math.ceil(time.time() - began) + 5
    db = N8nDataResource(admin_url=settings.database_url)
    ours = db.execution_windows([names], window).windows[names.slug]
    theirs = prometheus.execution_rates(window)[names.slug]
    assert ours.total == EXECUTIONS
    # increase() extrapolates to the window's edges: at most about one scrape interval at each.
    tolerance = 2 * SCRAPE_INTERVAL_S / window
    assert theirs.per_minute == pytest.approx(ours.per_minute, rel=tolerance)
    assert theirs.per_minute >= ours.per_minute * 0.9  # extrapolation adds; it never loses much
    # The histogram knows the p95 only to its bucket, and increase() extrapolates each bucket's
    # counter on its own, so near a bucket's edge the quantile can land in the next one (seen:
    # 2.13 s in the database, 2.95 s from the histogram): the database's bucket or a neighbour.
    assert ours.latency_p95_ms is not None
    assert theirs.latency_p95_s is not None
    p95 = ours.latency_p95_ms / 1000
    bucket = next(i for i, b in enumerate(BUCKETS) if b >= p95)
    lower = BUCKETS[bucket - 2] if bucket >= 2 else 0
    upper = BUCKETS[min(bucket + 1, len(BUCKETS) - 1)]
    assert lower < theirs.latency_p95_s <= upper, (p95, theirs.latency_p95_s)

    # n8n's queue gauge (main, refreshed every 20 s, scraped every 15 s) against what Redis
    # showed in the 40 s before each Prometheus sample. The gauge was read at one moment of
    # those 40 s, possibly between two of the watch's samples, so the samples just outside the
    # span bracket it too (the queue moves one way between two samples).
    end = watch.samples[-1].at
    series = httpx.get(
        f"{settings.prometheus_url}/api/v1/query_range",
        params={
            "query": f'sum(n8n_scaling_mode_queue_jobs_waiting{{tenant="{names.slug}"}})',
            "start": began,
            "end": end,
            "step": 5,
        },
        timeout=10,
    ).json()["data"]["result"]
    assert series, "Prometheus holds no queue gauge for the tenant"
    values = [(float(t), float(v)) for t, v in series[0]["values"]]
    assert max(v for _, v in values) > 0  # it saw the backlog
    for at, value in values:
        seen = [s.waiting for s in watch.samples if at - 40 <= s.at <= at]
        seen += [s.waiting for s in watch.samples if s.at < at - 40][-1:]
        seen += [s.waiting for s in watch.samples if s.at > at][:1]
        if at - 40 < watch.samples[0].at:
            seen.append(0)  # the queue was empty before the load
        assert min(seen) <= value <= max(seen), (at, value, min(seen), max(seen))
