"""make bench-upgrade: a tenant with 200 MB of execution data upgraded from n8n 2.20.12 to
2.22.6 through the API under 20 webhooks a second, then rolled back through the API under the
same load.

Prints: the data, the rehearsal's time and its migrations', the snapshot's, the hold (as the
run measured it, and as the senders saw it: p50/p99/max of the requests sent while it was in
force), the migrations on the tenant's data, requests failed, and the rollback's time. Goals
(issue #15): hold p99 <= 5 s when migrations take <= 3 s, 0 failed, rollback <= 60 s.
Everything runs on the real stack (`make stack-up`, the 2.22.6 image built).
"""

import argparse
import os
import time
from typing import Any

from bench.promote import bench_tenant, phase_times, report_load, under_load
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.promotion.traffic import Load

OLD, NEW = "2.20.12", "2.22.6"


def change(api: Api, slug: str, action: str, body: Any = None) -> dict[str, Any]:
    """POST the upgrade's `action`, wait for its run to succeed; the upgrade as listed."""
    asked = api.post(f"/tenants/{slug}/{action}", body)
    assert asked.status_code == 202, asked.text
    run = api.wait_run(asked.json()["run_id"], timeout_s=1800)
    found: dict[str, Any] = api.get(f"/tenants/{slug}/upgrades").json()["upgrades"][0]
    assert run["status"] == "SUCCESS", (run, found["error"])
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=int(os.environ.get("MEGABYTES", 200)))
    args = parser.parse_args()
    with bench_tenant("bu", f"bench-upgrade {OLD} -> {NEW}", args.megabytes) as (
        api,
        slug,
        n8n,
        path,
    ):
        load = Load(n8n, path)
        upgrade, total = under_load(load, lambda: change(api, slug, "upgrade", {"version": NEW}))
        figures, at = upgrade["figures"], phase_times(upgrade)
        print(
            f"upgrade: {total:.1f} s in all; rehearsal {figures['rehearsal_s']:.1f} s"
            f" ({figures['rehearsal_migrations']} migrations in"
            f" {figures['rehearsal_migration_s'] or 0:.1f} s on the copy); snapshot"
            f" {figures['snapshot_s']:.1f} s; the new main booted beside the old one to the"
            f" data in {figures['preboot_s']:.1f} s; hold {figures['hold_s']:.1f} s (old stack"
            f" stopped and drained {figures['freeze_s']:.1f} s: main"
            f" {figures['main_stop_s']:.2f} s, drain {figures['drain_s']:.2f} s, workers"
            f" {figures['workers_stop_s']:.2f} s; new main ready"
            f" {figures['ready_s']:.1f} s after it, {figures['migrations']} migrations in"
            f" {figures['migration_s'] or 0:.1f} s on the tenant's data); watch:"
            f" {figures['watch_verdict']}",
            flush=True,
        )
        report_load(load, at["holding"] - 0.5, at["switched"], "sent while held", at["switched"])

        load = Load(n8n, path)
        back, elapsed = under_load(load, lambda: change(api, slug, "upgrade/rollback"))
        f = back["figures"]
        print(
            f"rollback: serving n8n {OLD} on the snapshot {f['rollback_s']:.1f} s after the"
            f" run took hold (goal <= 60 s; the restore {f['rollback_restore_s']:.1f} s);"
            f" {elapsed:.1f} s from the request to the run's end;"
            f" {f['executions_left_behind']} execution(s) made since the snapshot left behind",
            flush=True,
        )
        report_load(load, 0, time.time(), "sent during the rollback")


if __name__ == "__main__":
    main()
