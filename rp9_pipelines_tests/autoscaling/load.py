"""A tenant under load, watched: shared by the autoscaling end-to-end test and
`bench/autoscale.py`. Everything here drives or reads the real components."""

import concurrent.futures
import datetime as dt
import os
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import httpx
import sqlalchemy as sa

from rp9_pipelines.catalog import tenants as catalog
from rp9_pipelines.defs.autoscaling.sensor import SENSOR_NAME
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.resources.redis_queue import RedisResource
from rp9_pipelines.resources.tenant_runtime import runtime_from_settings
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.conftest import BIN, ROOT, Served, free_port, serve
from rp9_pipelines_tests.n8n_workflows import slow_webhook
from rp9_pipelines_tests.tenants.conftest import TenantN8n
from rp9_pipelines_tests.waiting import wait_until
from testing.dagster_db import dagster_database

# One worker runs two executions at once: with ~2 s executions, one worker drains 1 a second,
# so a 200-execution backlog is worth several workers (pro plan: 1..4).
CONCURRENCY = 2
START_SENSOR = """
mutation Start($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on PythonError { message }
  }
}
"""


def provision(api: Api, settings: Settings, slug: str) -> dict[str, Any]:
    """A dedicated pro tenant (1..4 workers) with one worker of `CONCURRENCY` job slots."""
    created = api.post(
        "/tenants",
        {"slug": slug, "name": "Autoscaled", "plan": "pro", "tier": "dedicated", "workers": 1},
        **{"Idempotency-Key": str(uuid.uuid4())},
    )
    assert created.status_code == 202, created.text
    engine = sa.create_engine(sqlalchemy_url(settings.database_url), poolclass=sa.NullPool)
    with engine.begin() as connection:
        tenant_id = uuid.UUID(created.json()["tenant_id"])
        catalog.set_quota(connection, tenant_id, "manual", {"concurrency": CONCURRENCY})
    engine.dispose()
    run = api.wait_run(created.json()["run_id"])
    assert run["status"] == "SUCCESS", run
    tenant: dict[str, Any] = api.get(f"/tenants/{slug}").json()
    # The quota landed before the provisioning run reached the workers, or a converge applies it.
    if tenant["limits"]["concurrency"] != CONCURRENCY or not _worker_has_concurrency(
        settings, slug
    ):
        rescale = api.post(f"/tenants/{slug}/scale", {"workers": 1})
        assert api.wait_run(rescale.json()["run_id"])["status"] == "SUCCESS"
    assert _worker_has_concurrency(settings, slug)
    return tenant


def _worker_has_concurrency(settings: Settings, slug: str) -> bool:
    """Whether the tenant's running workers have `CONCURRENCY` job slots: their containers'
    command, on whichever engines run them (as enforcement reads it)."""
    filters = {"label": [f"io.rp9.tenant={slug}", "io.rp9.role=worker"]}
    commands = [
        str(container.attrs.get("Command", ""))
        for client in runtime_from_settings(settings).engines()
        for container in client.containers.list(sparse=True, filters=filters)
    ]
    return bool(commands) and all(f"--concurrency={CONCURRENCY}" in c for c in commands)


def install(n8n: TenantN8n, workflow: dict[str, Any]) -> str:
    created = n8n.http.post("/api/v1/workflows", json=workflow)
    assert created.status_code == 200, created.text
    workflow_id = str(created.json()["id"])
    activated = n8n.http.post(f"/api/v1/workflows/{workflow_id}/activate")
    assert activated.status_code == 200, activated.text
    return workflow_id


def install_slow(n8n: TenantN8n, path: str, seconds: float) -> str:
    return install(n8n, slow_webhook(path, seconds))


@dataclass(frozen=True)
class Sent:
    started: float  # epoch seconds of the first call
    statuses: Counter[int]  # every answer by status (0: none), nothing retried


def enqueue(n8n: TenantN8n, path: str, count: int, rate: float = 20.0) -> Sent:
    """POST `count` webhook calls through Traefik, `rate` a second whatever the answers (as a
    sender's events arrive; 20/s is within every plan's edge limit), each answered once
    enqueued. Nothing is retried: every answer is counted."""
    started = time.time()
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    with httpx.Client(
        base_url=n8n.http.base_url, headers={"Host": n8n.host}, timeout=60, limits=limits
    ) as http:

        def call(i: int) -> None:
            delay = started + i / rate - time.time()
            if delay > 0:
                time.sleep(delay)
            try:
                status = http.post(f"/webhook/{path}", json={"i": i}).status_code
            except httpx.HTTPError:
                status = 0
            with lock:
                statuses[status] += 1

        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            list(pool.map(call, range(count)))
    return Sent(started, statuses)


@dataclass(frozen=True)
class Executions:
    by_status: dict[str, int]
    first_created: dt.datetime | None
    last_stopped: dt.datetime | None

    @property
    def total(self) -> int:
        return sum(self.by_status.values())

    @property
    def finished(self) -> int:
        return sum(n for status, n in self.by_status.items() if status not in {"new", "running"})


def executions(settings: Settings, names: TenantNames, workflow_id: str) -> Executions:
    """What the tenant's own `execution_entity` says about one workflow's executions."""
    url = sa.make_url(sqlalchemy_url(settings.database_url)).set(database=names.db_name)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    table = f'"{names.db_schema}".execution_entity'
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    f'SELECT status, count(*), min("createdAt"), max("stoppedAt") FROM {table}'
                    ' WHERE "workflowId" = :w GROUP BY status'
                ),
                {"w": workflow_id},
            ).all()
    finally:
        engine.dispose()
    created = [r[2] for r in rows if r[2] is not None]
    stopped = [r[3] for r in rows if r[3] is not None]
    return Executions(
        by_status={r[0]: int(r[1]) for r in rows},
        first_created=min(created) if created else None,
        last_stopped=max(stopped) if stopped else None,
    )


def first_execution_on(settings: Settings, container: str, since: float) -> float | None:
    """When `container` (a worker: a container, or a Swarm service's running task) started its
    first execution after `since` (epoch s)."""
    raw = runtime_from_settings(settings).logs(container, tail="all", timestamps=True)
    for line in raw.splitlines():
        stamp, _, text = line.partition(" ")
        if "Worker started execution" in text:
            # RFC 3339 with nanoseconds; Python reads microseconds.
            head, _, rest = stamp.partition(".")
            at = dt.datetime.fromisoformat(f"{head}.{rest.rstrip('Z')[:6]}+00:00").timestamp()
            if at >= since:
                return at
    return None


@contextmanager
def following_logs(settings: Settings, container: str) -> Iterator[list[str]]:
    """Collect a container's log lines from now until it stops (or the block ends)."""
    client = docker.DockerClient(base_url=settings.docker_host)
    lines: list[str] = []
    stream = client.containers.get(container).logs(stream=True, follow=True, since=int(time.time()))

    def read() -> None:
        buffer = b""
        for chunk in stream:
            buffer += chunk
            *complete, buffer = buffer.split(b"\n")
            lines.extend(line.decode(errors="replace") for line in complete)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    try:
        yield lines
    finally:
        thread.join(timeout=5)
        stream.close()
        client.close()


@dataclass(frozen=True)
class Sample:
    at: float
    waiting: int
    active: int
    healthy_workers: int


@dataclass
class Watch:
    """Samples a tenant's queue (Redis) and healthy workers (its runtime's) every half second,
    and asks its address through Traefik (`/healthz`) each time: `edge` counts the answers by
    status."""

    settings: Settings
    names: TenantNames
    samples: list[Sample] = field(default_factory=list)
    edge: Counter[int] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        redis = RedisResource(redis_url=self.settings.redis_url)
        runtime = runtime_from_settings(self.settings)
        host = self.names.host(self.settings.base_domain)
        http = httpx.Client(base_url=self.settings.traefik_url, headers={"Host": host}, timeout=10)
        try:
            while not self._stop.is_set():
                queue = redis.queue_snapshots([self.names.bull_prefix])[self.names.bull_prefix]
                states = runtime.states(self.names.slug)
                healthy = sum(1 for c in states if c.role == "worker" and c.health == "healthy")
                self.samples.append(Sample(time.time(), queue.waiting, queue.active, healthy))
                try:
                    self.edge[http.get("/healthz").status_code] += 1
                except httpx.HTTPError:
                    self.edge[0] += 1
                self._stop.wait(0.5)
        finally:
            http.close()

    @contextmanager
    def running(self) -> Iterator["Watch"]:
        thread = threading.Thread(target=self.run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=10)

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None


@contextmanager
def dagster_with_autoscaler(slug: str, **knobs: str) -> Iterator[Served]:
    """A Dagster (webserver + daemon, as `make dev`) whose autoscaler manages only `slug`, with
    `AUTOSCALE_*` knobs; the sensor starts stopped (AUTOSCALE_ENABLED unset)."""
    home = Path(tempfile.mkdtemp(prefix="rp9-autoscale-dagster-"))
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    with dagster_database() as storage:
        yield from _dagster_dev(home, slug, storage, knobs)


def _dagster_dev(
    home: Path, slug: str, storage: dict[str, str], knobs: dict[str, str]
) -> Iterator[Served]:
    env = {
        **os.environ,
        **storage,
        "DAGSTER_HOME": str(home),
        "AUTOSCALE_TENANTS": slug,
        **{f"AUTOSCALE_{k.upper()}": v for k, v in knobs.items()},
    }
    env.pop("AUTOSCALE_ENABLED", None)
    port = free_port()
    command = [
        str(BIN / "dagster"),
        "dev",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        str(ROOT / "workspace.yaml"),
    ]
    with serve(
        command,
        url=f"http://127.0.0.1:{port}",
        ready_path="/server_info",
        log=home / "dagster.log",
        env=env,
        timeout_s=180,
    ) as served:
        yield served


SELECTOR = {
    "repositoryLocationName": "rp9_pipelines",
    "repositoryName": "__repository__",
    "sensorName": SENSOR_NAME,
}
TICKS = """
query Ticks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { ticks(limit: 1) { timestamp status } } }
  }
}
"""


def last_tick(dagster: Served) -> float | None:
    """When the autoscaler's latest tick was evaluated (epoch seconds)."""
    answer = httpx.post(
        f"{dagster.url}/graphql",
        json={"query": TICKS, "variables": {"selector": SELECTOR}},
        timeout=30,
    ).json()
    ticks = answer["data"]["sensorOrError"]["sensorState"]["ticks"]
    return float(ticks[0]["timestamp"]) if ticks else None


RESET_SENSOR = """
mutation Reset($selector: SensorSelector!) {
  resetSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on PythonError { message }
  }
}
"""


def stop_autoscaler(dagster: Served) -> None:
    """Back to its status in code: stopped, as AUTOSCALE_ENABLED is unset."""
    answer = httpx.post(
        f"{dagster.url}/graphql",
        json={"query": RESET_SENSOR, "variables": {"selector": SELECTOR}},
        timeout=30,
    ).json()
    assert answer["data"]["resetSensor"]["sensorState"]["status"] == "STOPPED", answer


def start_autoscaler(dagster: Served) -> None:
    selector = SELECTOR

    def started() -> bool:
        answer = httpx.post(
            f"{dagster.url}/graphql",
            json={"query": START_SENSOR, "variables": {"selector": selector}},
            timeout=30,
        ).json()
        result = answer["data"]["startSensor"]
        assert result["__typename"] == "Sensor", answer
        return bool(result["sensorState"]["status"] == "RUNNING")

    # The code location may still be loading right after the server answers.
    wait_until(started, timeout_s=60, what="the autoscaler sensor to start", interval_s=1)
