"""Traffic for a tenant whose n8n changes places (a promotion, its rollback), and what its own
database says afterwards: shared by the promotion end-to-end test and `bench/promote.py`."""

import concurrent.futures
import datetime as dt
import re
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import httpx
import sqlalchemy as sa

from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.n8n_workflows import node, workflow
from rp9_pipelines_tests.tenants.conftest import TenantN8n

RATE = 20.0


@dataclass
class Load:
    """Webhook POSTs at `rate` a second, each with a unique id, until stopped; every answer
    kept. Nothing is retried, unless `retry`: then a 503 that says when to come back
    (`Retry-After`: the edge shedding what it cannot take, the fallback, the holder) is sent
    again once after that wait, as webhook senders do; `calls` keeps the first answer, `answers`
    the last, `retried` the first answer's reason for each request sent again."""

    n8n: TenantN8n
    path: str
    rate: float = RATE
    retry: bool = False
    retried: dict[str, str] = field(default_factory=dict)
    token: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    answers: dict[str, int] = field(default_factory=dict)
    # (sent at, epoch seconds; seconds to the answer; status), one per request.
    calls: list[tuple[float, float, int]] = field(default_factory=list)
    # Each failure's status and who answered it (the error code of a JSON answer, else the
    # start of its body): the holder's, the fallback's and Traefik's 503s differ.
    reasons: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        lock = threading.Lock()
        # Enough connections and threads for every request a long hold keeps waiting: the
        # sender never queues its own requests.
        limits = httpx.Limits(max_connections=1000, max_keepalive_connections=64)
        started = time.time()
        with (
            httpx.Client(
                base_url=self.n8n.http.base_url,
                headers={"Host": self.n8n.host},
                timeout=60,
                limits=limits,
            ) as http,
            concurrent.futures.ThreadPoolExecutor(1000) as pool,
        ):

            def send(ident: str) -> tuple[int, str, float | None]:
                """The status, the failure's reason, and when to come back (503s only)."""
                try:
                    answer = http.post(f"/webhook/{self.path}", json={"id": ident})
                except httpx.HTTPError as error:
                    return 0, type(error).__name__, None
                if 200 <= answer.status_code < 300:
                    return answer.status_code, "", None
                later = answer.headers.get("retry-after", "")
                wait = float(later) if answer.status_code == 503 and later.isdigit() else None
                return answer.status_code, _reason(answer), wait

            def call(ident: str) -> None:
                sent, began = time.time(), time.monotonic()
                status, reason, wait = send(ident)
                with lock:
                    self.calls.append((sent, time.monotonic() - began, status))
                if self.retry and wait is not None:
                    with lock:
                        self.retried[ident] = f"{status} {reason}"
                    time.sleep(wait)
                    status, reason, _ = send(ident)
                with lock:
                    if reason:
                        self.reasons[f"{status} {reason}"] += 1
                    self.answers[ident] = status

            i = 0
            while not self.stop.is_set():
                delay = started + i / self.rate - time.time()
                if delay > 0:
                    time.sleep(delay)
                pool.submit(call, f"id-{self.token}-{i}")
                i += 1

    def held(self, steps: list[dict[str, Any]]) -> list[int]:
        """The first answers of the requests sent while the tenant was held: from a second
        before the `holding` step of a cutover's `steps` until its `switched` step."""
        at = {step["phase"]: dt.datetime.fromisoformat(step["at"]).timestamp() for step in steps}
        return [
            status for sent, _, status in self.calls if at["holding"] - 1 <= sent <= at["switched"]
        ]

    def failures(self) -> Counter[int]:
        return Counter(s for s in self.answers.values() if not 200 <= s < 300)

    def report(self) -> str:
        """The failures, who answered them, and the timeline: a failed assertion's message."""
        retried = f"sent again once: {len(self.retried)} {Counter(self.retried.values())}"
        return "\n".join([str(self.failures()), str(self.reasons), retried, *self.timeline()])

    def timeline(self) -> list[str]:
        """Each second of sending with a failure or an answer slower than 2 s: requests sent,
        the slowest answer, the failures (for a failure's message)."""
        if not self.calls:
            return []
        first = min(sent for sent, _, _ in self.calls)
        seconds: dict[int, list[tuple[float, int]]] = {}
        for sent, latency, status in self.calls:
            seconds.setdefault(int(sent - first), []).append((latency, status))
        return [
            f"{dt.datetime.fromtimestamp(first + s, dt.UTC):%H:%M:%S} sent {len(calls)}"
            f" slowest {max(c[0] for c in calls):.1f}s"
            f" failed {Counter(c[1] for c in calls if not 200 <= c[1] < 300)}"
            for s, calls in sorted(seconds.items())
            if any(c[0] > 2 or not 200 <= c[1] < 300 for c in calls)
        ]


def _reason(answer: httpx.Response) -> str:
    try:
        error = answer.json().get("error")
    except ValueError:
        return answer.text[:40].strip()
    if not isinstance(error, dict):
        return answer.text[:40].strip()
    # The fallback's message tells the edge's causes apart: no route, upstream 502/504, 429.
    return f"{error.get('code')}: {error.get('message')}"


def install(n8n: TenantN8n, body: dict[str, Any]) -> str:
    created = n8n.http.post("/api/v1/workflows", json=body)
    assert created.status_code == 200, created.text
    workflow_id = str(created.json()["id"])
    activated = n8n.http.post(f"/api/v1/workflows/{workflow_id}/activate")
    assert activated.status_code == 200, activated.text
    return workflow_id


def every_minute() -> dict[str, Any]:
    rule = {"interval": [{"field": "minutes", "minutesInterval": 1}]}
    trigger = node("Every minute", "scheduleTrigger", 1.2, 0, parameters={"rule": rule})
    return workflow("every minute", [trigger, node("Done", "noOp", 1, 240, parameters={})])


def executions_by_id(settings: Settings, names: TenantNames, token: str) -> Counter[str]:
    """How many executions on `names`' side carry each request id in their data."""
    url = sa.make_url(sqlalchemy_url(settings.database_url)).set(database=names.db_name)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    pattern = re.compile(rf"id-{token}-\d+")
    found: Counter[str] = Counter()
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(f'SELECT data FROM "{names.db_schema}".execution_data WHERE data LIKE :t'),
            {"t": f"%id-{token}-%"},
        )
        for (data,) in rows:
            found.update(set(pattern.findall(data)))
    engine.dispose()
    return found


def schedule_minutes(settings: Settings, names: TenantNames, workflow_id: str) -> Counter[str]:
    url = sa.make_url(sqlalchemy_url(settings.database_url)).set(database=names.db_name)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text(
                "SELECT date_trunc('minute', \"createdAt\") FROM"
                f' "{names.db_schema}".execution_entity WHERE "workflowId" = :w'
            ),
            {"w": workflow_id},
        )
        minutes = Counter(row[0].isoformat() for row in rows)
    engine.dispose()
    return minutes


def run_under_load(load: Load, action: Any) -> Any:
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    try:
        time.sleep(3)  # the load runs before the change starts
        return action()
    finally:
        time.sleep(3)  # and after it ends
        load.stop.set()
        thread.join(timeout=90)
