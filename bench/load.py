"""`make bench-load`: a tenant under steady webhook load, on the real stack.

Per plan (a shared tenant at its minimum of workers, a Webhook → Code → Respond workflow):

1. The sustained rate it serves with p99 under 1 s and every answer 2xx, stepping the rate up.
2. At 80 % of that rate, one event at a time, each in its own window (10 s of steady load, the
   event, then load until the window ends): scale up, scale down, an autoscaler's change (the
   run the sensor launches), a worker killed, the main restarted. Per event: the answers that
   were not 2xx (by status, and whether they carried `Retry-After`), p99 and max latency from
   the event on, and the time back to steady state (the end of the last second, after the
   event, with a non-2xx answer or a p99 over 1 s).
3. At 3x the sustainable rate for 20 s, then back to 80 %: the answers by status (429 and 503
   are allowed beyond capacity, with `Retry-After`; a 404 never) and the time to recover.

The load is open-loop, as webhook senders are: request i leaves at t0 + i/rate whatever
happened to the ones before (each with a 40 s timeout, like a patient sender). Starts its own
Dagster (webserver + daemon) and API, like `make dev`; needs the local stack.
"""

import argparse
import concurrent.futures
import os
import signal
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import httpx

from bench.serving import api_for
from rp9_pipelines import launches
from rp9_pipelines.api.dagster_client import DagsterClient
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.autoscaling import load
from rp9_pipelines_tests.n8n_workflows import node, respond, webhook, workflow
from rp9_pipelines_tests.tenants.conftest import TenantN8n
from rp9_pipelines_tests.waiting import wait_until

RATES = (5, 10, 15, 20, 30, 40, 60, 80)
STEP_S = 15.0
WINDOW_S = 45.0
EVENT_AT_S = 10.0
TIMEOUT_S = 40.0
STEADY_P99_S = 1.0


@dataclass(frozen=True)
class Answer:
    sent: float  # monotonic seconds
    latency: float
    status: int  # 0: no answer (timeout or connection error)
    retry_after: bool


def summary(answers: list[Answer]) -> dict[str, Any]:
    latencies = sorted(a.latency for a in answers)
    if not latencies:
        return {"n": 0}

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    bad = Counter(
        f"{a.status or 'timeout'}{'+RA' if a.retry_after else ''}"
        for a in answers
        if not 200 <= a.status < 300
    )
    return {
        "n": len(answers),
        "non_2xx": sum(bad.values()),
        "by_status": dict(bad),
        "p50": round(statistics.median(latencies), 3),
        "p99": round(pct(0.99), 3),
        "max": round(latencies[-1], 3),
    }


class Sender:
    """Open-loop POSTs to the tenant's webhook through Traefik."""

    def __init__(self, traefik_url: str, host: str, path: str) -> None:
        self.url = f"{traefik_url}/webhook/{path}"
        self.host = host
        self.http = httpx.Client(
            timeout=TIMEOUT_S,
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
        )
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=400)

    def one(self, answers: list[Answer], lock: threading.Lock) -> None:
        sent = time.monotonic()
        try:
            response = self.http.post(self.url, json={"at": sent}, headers={"Host": self.host})
            answer = Answer(
                sent,
                time.monotonic() - sent,
                response.status_code,
                "retry-after" in response.headers,
            )
        except httpx.HTTPError:
            answer = Answer(sent, time.monotonic() - sent, 0, False)
        with lock:
            answers.append(answer)

    @contextmanager
    def running(self, schedule: Callable[[float], float]) -> Iterator[list[Answer]]:
        """Send at `schedule(elapsed)` requests per second until the block ends; then wait for
        every answer."""
        answers: list[Answer] = []
        lock, stop = threading.Lock(), threading.Event()
        futures: list[concurrent.futures.Future[None]] = []

        def pace() -> None:
            start = next_at = time.monotonic()
            while not stop.is_set():
                futures.append(self.pool.submit(self.one, answers, lock))
                next_at += 1.0 / max(schedule(time.monotonic() - start), 0.1)
                delay = next_at - time.monotonic()
                if delay > 0:
                    stop.wait(delay)

        thread = threading.Thread(target=pace, daemon=True)
        thread.start()
        try:
            yield answers
        finally:
            stop.set()
            thread.join()
            concurrent.futures.wait(futures)

    def steady(self, rate: float, seconds: float) -> list[Answer]:
        with self.running(lambda _: rate) as answers:
            time.sleep(seconds)
        return answers


def back_to_steady(answers: list[Answer], since: float) -> float:
    """Seconds from `since` to the end of the last one-second bucket that was not steady."""
    buckets: dict[int, list[Answer]] = {}
    for answer in answers:
        if answer.sent >= since:
            buckets.setdefault(int(answer.sent - since), []).append(answer)
    unsteady = [
        second
        for second, group in buckets.items()
        if any(not 200 <= a.status < 300 for a in group)
        or sorted(a.latency for a in group)[int(0.99 * (len(group) - 1))] > STEADY_P99_S
    ]
    return float(max(unsteady) + 1) if unsteady else 0.0


def code_workflow(path: str) -> dict[str, Any]:
    code = node(
        "Code",
        "code",
        2,
        240,
        parameters={"jsCode": "return [{ json: { ok: true, at: $input.first().json.body.at } }];"},
    )
    return workflow(f"load {path}", [webhook(path), code, respond("={{ $json }}", 480)])


@dataclass
class Tenant:
    api: Api
    dagster_url: str
    slug: str
    tenant_id: str
    sender: Sender

    def scale(self, workers: int) -> None:
        response = self.api.post(f"/tenants/{self.slug}/scale", {"workers": workers})
        assert response.status_code == 202, response.text
        run = self.api.wait_run(response.json()["run_id"], timeout_s=600)
        assert run["status"] == "SUCCESS", run

    def autoscale(self, workers: int) -> None:
        """The run the autoscaler's sensor launches for this change."""
        run_id = DagsterClient(f"{self.dagster_url}/graphql").launch(
            launches.autoscale(self.tenant_id, self.slug, workers, uuid.uuid4().hex)
        )
        run = self.api.wait_run(run_id, timeout_s=600)
        assert run["status"] == "SUCCESS", run

    def container(self, role: str, index: int = 0) -> str:
        return f"rp9-{self.slug}-blue-{role}" + (f"-{index}" if role == "worker" else "")


def capacity(tenant: Tenant) -> float:
    sustainable = 0.0
    for rate in RATES:
        result = summary(tenant.sender.steady(rate, STEP_S))
        print(f"    {rate:>3}/s for {STEP_S:.0f} s: {result}", flush=True)
        if result["non_2xx"] or result["p99"] >= STEADY_P99_S:
            break
        sustainable = rate
        time.sleep(3)
    return sustainable


def event_window(tenant: Tenant, rate: float, name: str, action: Callable[[], None]) -> None:
    with tenant.sender.running(lambda _: rate) as answers:
        time.sleep(EVENT_AT_S)
        began = time.monotonic()
        action()
        acted = time.monotonic() - began
        remaining = WINDOW_S - EVENT_AT_S - acted
        if remaining > 0:
            time.sleep(remaining)
    during = [a for a in answers if a.sent >= began]
    result = summary(during)
    steady = back_to_steady(answers, began)
    print(
        f"    {name:<16} ({acted:4.1f} s): non-2xx {result['non_2xx']} {result['by_status']}, "
        f"p99 {result['p99']} s, max {result['max']} s, back to steady {steady:.0f} s after it "
        f"began",
        flush=True,
    )


def overload(tenant: Tenant, sustainable: float) -> None:
    high, low = 3 * sustainable, 0.8 * sustainable
    with tenant.sender.running(lambda t: high if t < 20 else low) as answers:
        time.sleep(50)
    start = min(a.sent for a in answers)
    during = [a for a in answers if a.sent < start + 20]
    after = [a for a in answers if a.sent >= start + 20]
    result = summary(during)
    recovered = back_to_steady(after, start + 20)
    print(
        f"    3x ({high:.0f}/s) for 20 s: {result['by_status']} of {result['n']}, "
        f"p99 {result['p99']} s, max {result['max']} s; 404s: "
        f"{sum(1 for a in during if a.status == 404)}; back to steady {recovered:.0f} s after the "
        f"overload ended (then {low:.0f}/s: {summary(after)['by_status']})",
        flush=True,
    )


def plan_run(api: Api, settings: Settings, dagster_url: str, plan: str) -> None:
    slug = f"load-{plan[:3]}-{uuid.uuid4().hex[:6]}"
    created = api.create_tenant(slug=slug, name=f"Load {plan}", plan=plan, workers=1)
    try:
        vault_n8n = TenantN8n(settings, _vault(settings), created)
        path = f"load-{uuid.uuid4().hex[:8]}"
        load.install(vault_n8n, code_workflow(path))
        sender = Sender(settings.traefik_url, vault_n8n.host, path)
        wait_until(lambda: sender.steady(1, 1)[0].status == 200, timeout_s=30, what="the webhook")
        tenant = Tenant(api, dagster_url, slug, created["id"], sender)
        print(f"  {plan} ({slug}, shared, 1 worker):", flush=True)
        sender.steady(5, 5)  # warm-up
        sustainable = capacity(tenant)
        print(f"  sustainable: {sustainable:.0f}/s with p99 < 1 s", flush=True)
        if not sustainable:
            return
        rate = max(1.0, 0.8 * sustainable)
        print(f"  events at {rate:.0f}/s (80 %):", flush=True)
        engine = docker.from_env()
        if api.get(f"/tenants/{slug}").json()["limits"]["max_workers"] >= 2:
            event_window(tenant, rate, "scale up 1→2", lambda: tenant.scale(2))
            event_window(tenant, rate, "scale down 2→1", lambda: tenant.scale(1))
            event_window(tenant, rate, "autoscaled 1→2", lambda: tenant.autoscale(2))
            tenant.scale(1)
        else:
            print(f"    (no scale events: {plan} allows one worker)", flush=True)
        worker = tenant.container("worker", 1)
        event_window(tenant, rate, "worker killed", lambda: crash(engine, worker))
        wait_until(
            lambda: health(engine, worker) == "healthy", timeout_s=120, what="the worker back"
        )
        event_window(
            tenant,
            rate,
            "main restarted",
            lambda: engine.containers.get(tenant.container("main")).restart(timeout=30),
        )
        time.sleep(5)
        overload(tenant, sustainable)
    finally:
        response = api.request("DELETE", f"/tenants/{slug}?purge=true")
        api.wait_run(response.json()["run_id"], timeout_s=600)


def crash(engine: docker.DockerClient, name: str) -> None:
    """SIGKILL the container's n8n process from the host, as an out-of-memory kill or a crash
    would (`docker kill` would count as an operator's stop: no restart)."""
    init = int(engine.containers.get(name).attrs["State"]["Pid"])
    children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
    for pid in children or [str(init)]:
        os.kill(int(pid), signal.SIGKILL)


def health(engine: docker.DockerClient, name: str) -> str | None:
    state = engine.containers.get(name).attrs["State"]
    status: str | None = state.get("Health", {}).get("Status")
    return status


def _vault(settings: Settings) -> VaultResource:
    return VaultResource(
        vault_addr=settings.vault_addr, vault_token=settings.vault_token.get_secret_value()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--plans", default="starter,pro")
    args = parser.parse_args()
    settings = Settings()
    with ExitStack() as stack:
        dagster = stack.enter_context(load.dagster_with_autoscaler("none"))
        api_server = stack.enter_context(api_for(dagster.url, dagster.log.parent))
        api = Api(api_server.url, settings)
        print(f"bench-load on {os.cpu_count()} cores", flush=True)
        for plan in args.plans.split(","):
            plan_run(api, settings, dagster.url, plan)


if __name__ == "__main__":
    main()
