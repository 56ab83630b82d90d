"""make bench-promote: a shared tenant with 200 MB of execution data promoted to a dedicated
database under 20 webhooks a second, then rolled back under the same load.

Prints: the data promoted, the promotion's total time and each phase's (copy, freeze, catch-up,
hold), the hold as the senders saw it (p50/p99/max of the requests sent while it was in force),
requests failed, and the rollback's time. Goals (issue #14): hold p99 <= 5 s, max <= 8 s,
0 failed, rollback <= 60 s. Everything runs on the real stack (`make stack-up`).
"""

import argparse
import datetime as dt
import os
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import sqlalchemy as sa

from bench.serving import api_for
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.autoscaling.load import dagster_with_autoscaler
from rp9_pipelines_tests.n8n_workflows import webhook, workflow
from rp9_pipelines_tests.promotion.traffic import Load, every_minute, install
from rp9_pipelines_tests.tenants.conftest import TenantN8n

ROW_KB = 100


def fill(settings: Settings, names: TenantNames, workflow_id: str, megabytes: int) -> int:
    """Finished executions of `workflow_id` whose payloads add up to `megabytes` (random hex,
    which Postgres cannot compress away), written as the tenant's role; the bytes on disk."""
    url = sa.make_url(sqlalchemy_url(settings.tenant_admin_url)).set(database=names.db_name)
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    rows = megabytes * 1024 // ROW_KB
    schema = f'"{names.db_schema}"'
    with engine.begin() as connection:
        connection.execute(sa.text(f'SET LOCAL ROLE "{names.db_role}"'))
        connection.execute(sa.text("SET LOCAL statement_timeout = 0"))
        for start in range(0, rows, 200):
            batch = min(200, rows - start)
            connection.execute(
                sa.text(
                    f"WITH made AS (INSERT INTO {schema}.execution_entity"
                    ' (finished, mode, status, "createdAt", "startedAt", "stoppedAt", "workflowId")'
                    " SELECT true, 'webhook', 'success', now(), now(), now(), :w"
                    " FROM generate_series(1, :n) RETURNING id)"
                    f' INSERT INTO {schema}.execution_data ("executionId", "workflowData", data)'
                    " SELECT made.id, '{}'::json, (SELECT string_agg(md5(random()::text || g), '')"
                    " FROM generate_series(1, :chunks) g WHERE made.id IS NOT NULL) FROM made"
                ),
                {"w": workflow_id, "n": batch, "chunks": ROW_KB * 1024 // 32},
            )
        size = connection.execute(
            sa.text("SELECT pg_total_relation_size(:t)"), {"t": f"{schema}.execution_data"}
        ).scalar_one()
    engine.dispose()
    return int(size)


HOLD_STEPS = (
    "hold_route_s",
    "main_stop_s",
    "drain_s",
    "workers_stop_s",
    "catch_up_s",
    "foreign_keys_s",
    "compare_s",
    "commit_s",
    "ready_s",
    "release_s",
)


def pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def phase_times(promotion: dict[str, Any]) -> dict[str, float]:
    return {
        step["phase"]: dt.datetime.fromisoformat(step["at"]).timestamp()
        for step in promotion["steps"]
    }


def under_load(load: Load, action: Any) -> tuple[Any, float]:
    thread = threading.Thread(target=load.run, daemon=True)
    thread.start()
    time.sleep(3)
    started = time.monotonic()
    try:
        result = action()
    finally:
        elapsed = time.monotonic() - started
        time.sleep(3)
        load.stop.set()
        thread.join(timeout=120)
    return result, elapsed


def change(api: Api, slug: str, action: str) -> dict[str, Any]:
    """POST the promotion's `action`, wait for its run to succeed; the promotion as listed."""
    asked = api.post(f"/tenants/{slug}/{action}")
    assert asked.status_code == 202, asked.text
    run = api.wait_run(asked.json()["run_id"], timeout_s=1800)
    found: dict[str, Any] = api.get(f"/tenants/{slug}/promotions").json()["promotions"][0]
    assert run["status"] == "SUCCESS", (run, found["error"])
    return found


def report_load(
    load: Load, held_from: float, held_until: float, what: str, released: float | None = None
) -> None:
    sent_held = [(at, t) for at, t, _ in load.calls if held_from <= at <= held_until]
    if sent_held and released is not None:
        answered = [at + t - released for at, t in sent_held]
        print(
            f"  held requests answered {min(answered):+.2f} to {max(answered):+.2f} s"
            " from the release",
            flush=True,
        )
    held = [latency for _, latency in sent_held]
    every = [latency for _, latency, _ in load.calls]
    failed = load.failures()
    print(
        f"  requests: {len(load.calls)} sent at 20/s, failed {sum(failed.values())}"
        f" {dict(failed) if failed else ''}",
        flush=True,
    )
    if failed:
        print(f"  failed: {dict(load.reasons)}", flush=True)
    for line in load.timeline():  # each second with a failure or an answer slower than 2 s
        print(f"    {line}", flush=True)
    print(
        f"  {what}: {len(held)} requests, p50 {pct(held, 0.5):.2f} s,"
        f" p99 {pct(held, 0.99):.2f} s, max {max(held, default=0):.2f} s"
        f" (goal p99 <= 5 s, max <= 8 s)",
        flush=True,
    )
    print(
        f"  every request: p50 {statistics.median(every) if every else 0:.2f} s,"
        f" p99 {pct(every, 0.99):.2f} s, max {max(every, default=0):.2f} s",
        flush=True,
    )


@contextmanager
def bench_tenant(
    prefix: str, bench: str, megabytes: int
) -> Iterator[tuple[Api, str, TenantN8n, str]]:
    """Dagster and the API on the real stack, and a shared starter tenant with a webhook
    workflow, an every-minute schedule and `megabytes` of finished executions (purged after):
    the API, the tenant's slug, its n8n and its webhook's path."""
    settings = Settings()
    vault = VaultResource(
        vault_addr=settings.vault_addr, vault_token=settings.vault_token.get_secret_value()
    )
    with ExitStack() as stack:
        dagster = stack.enter_context(dagster_with_autoscaler("none"))
        api_server = stack.enter_context(api_for(dagster.url, dagster.log.parent))
        api = Api(api_server.url, settings)
        slug = f"{prefix}-{uuid.uuid4().hex[:8]}"
        print(f"{bench} on {os.cpu_count()} cores: tenant {slug}", flush=True)
        tenant = api.create_tenant(slug=slug, name=f"Bench {prefix}", plan="starter")
        try:
            n8n = TenantN8n(settings, vault, tenant)
            path = f"bench-{uuid.uuid4().hex[:6]}"
            workflow_id = install(n8n, workflow(f"receive {path}", [webhook(path, "onReceived")]))
            install(n8n, every_minute())
            started = time.monotonic()
            size = fill(settings, TenantNames(slug, "shared"), workflow_id, megabytes)
            print(
                f"  execution data: {size / 1e6:.0f} MB on disk"
                f" (written in {time.monotonic() - started:.0f} s)",
                flush=True,
            )
            yield api, slug, n8n, path
        finally:
            gone = api.request("DELETE", f"/tenants/{slug}?purge=true")
            if gone.status_code == 202:
                api.wait_run(gone.json()["run_id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=int(os.environ.get("MEGABYTES", 200)))
    args = parser.parse_args()
    with bench_tenant("bp", "bench-promote", args.megabytes) as (api, slug, n8n, path):
        load = Load(n8n, path)
        promotion, total = under_load(load, lambda: change(api, slug, "promote"))
        figures, at = promotion["figures"], phase_times(promotion)
        print(
            f"promotion: {total:.1f} s in all; copy {figures['copy_s']:.1f} s and the"
            f" dedicated main's boot to the copy {figures['boot_s']:.1f} s while serving;"
            f" hold {figures['hold_s']:.1f} s (freeze {figures['freeze_s']:.1f} s, catch-up"
            f" {figures['catch_up_s']:.1f} s, the main ready {figures['ready_s']:.1f} s after"
            f" the commit, release {figures['release_s']:.1f} s)",
            flush=True,
        )
        print(
            "  the hold's steps: "
            + ", ".join(
                f"{k.removesuffix('_s')} {figures[k]:.2f}" for k in HOLD_STEPS if k in figures
            ),
            flush=True,
        )
        report_load(load, at["holding"] - 0.5, at["switched"], "sent while held", at["switched"])

        load = Load(n8n, path)
        back, elapsed = under_load(load, lambda: change(api, slug, "promotion/rollback"))
        print(
            f"rollback: serving from the shared schema {back['figures']['rollback_s']:.1f} s"
            f" after the run took hold (goal <= 60 s); the run"
            f" {back['figures']['rollback_total_s']:.1f} s with the backlog and workers;"
            f" {elapsed:.1f} s from the request to the run's end;"
            f" {back['figures']['executions_left_behind']} execution(s) left behind",
            flush=True,
        )
        report_load(load, 0, time.time(), "sent during the rollback")


if __name__ == "__main__":
    main()
