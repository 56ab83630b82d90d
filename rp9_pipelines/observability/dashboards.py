"""Grafana dashboards as code: the fleet overview and one tenant's page, built as plain Grafana 11
JSON models from the metrics of docs/observability.md, and checked in under
deploy/observability/grafana/dashboards/.

`python -m rp9_pipelines.observability.dashboards [--check]` writes the files, or with `--check`
exits 1 when the checked-in files differ from what this module builds.

The panels read raw metrics, never recording rules, so that they work on a Prometheus that has
no rules loaded.
"""

import argparse
import json
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

JSON = dict[str, Any]

# The provisioned data source (deploy/production/grafana/provisioning/datasources/).
DATASOURCE: JSON = {"type": "prometheus", "uid": "prometheus"}
SCHEMA_VERSION = 39
GRID_WIDTH = 24
OUT_DIR = (
    Path(__file__).resolve().parents[2] / "deploy" / "observability" / "grafana" / "dashboards"
)

# What the fleet panels count as overdue: a verified backup older than a day plus two hours of
# slack for a late run, and a passed restore drill older than a quarter.
BACKUP_MAX_AGE_S = 26 * 3600
DRILL_MAX_AGE_S = 92 * 86400

# A tenant's Traefik service: its docker provider's, or on a Swarm the route files'.
TENANT_SERVICES = 'service=~"t-.+@(docker|file)"'
TENANT_SERVICE = 'service=~"t-$tenant@(docker|file)"'
TENANT = 'tenant="$tenant"'
TENANT_LINK = "/d/rp9-tenant/rp9-tenant?var-tenant=${__data.fields.tenant}&${__url_time_range}"

# A threshold's first step: the color below every value that follows.
BASE_GREEN = (None, "green")


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


def _thresholds(steps: Sequence[tuple[float | None, str]]) -> JSON:
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in steps],
    }


def _target(ref: str, query: Query, kind: str) -> JSON:
    # Stats, gauges and tables show the present value: an instant query, as the live test runs.
    instant = kind != "timeseries"
    target: JSON = {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": query.expr,
        "instant": instant,
        "legendFormat": query.legend or "__auto",
        "range": not instant,
        "refId": ref,
    }
    if kind == "table":
        target["format"] = "table"
    return target


def _options(kind: str) -> JSON:
    reduce = {"calcs": ["lastNotNull"], "fields": "", "values": False}
    if kind == "timeseries":
        return {
            "legend": {
                "calcs": [],
                "displayMode": "list",
                "placement": "bottom",
                "showLegend": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    if kind == "stat":
        return {
            "colorMode": "background",
            "graphMode": "none",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": reduce,
            "textMode": "value_and_name",
        }
    if kind == "gauge":
        return {
            "orientation": "auto",
            "reduceOptions": reduce,
            "showThresholdLabels": False,
            "showThresholdMarkers": True,
        }
    if kind == "table":
        return {"cellHeight": "sm", "showHeader": True}
    raise ValueError(f"no options for panel type {kind!r}")


def panel(
    panel_id: int,
    kind: str,
    title: str,
    description: str,
    queries: Sequence[Query],
    *,
    unit: str = "short",
    width: int = 12,
    height: int = 8,
    thresholds: Sequence[tuple[float | None, str]] = (BASE_GREEN,),
    mappings: Sequence[JSON] = (),
    options: Mapping[str, Any] | None = None,
    minimum: float | None = None,
    maximum: float | None = None,
    links: Sequence[JSON] = (),
    may_be_empty: bool = False,
) -> JSON:
    """One panel; its `gridPos` x and y are placed by `layout`."""
    defaults: JSON = {
        "mappings": list(mappings),
        "thresholds": _thresholds(thresholds),
        "unit": unit,
    }
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    if links:
        defaults["links"] = list(links)
    if kind == "timeseries" and len(thresholds) > 1:
        defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    if kind == "table":
        defaults["custom"] = {"cellOptions": {"type": "color-text"}}
    built: JSON = {
        "datasource": DATASOURCE,
        "description": description,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "gridPos": {"h": height, "w": width, "x": 0, "y": 0},
        "id": panel_id,
        "options": {**_options(kind), **(options or {})},
        "targets": [
            _target(chr(ord("A") + index), query, kind) for index, query in enumerate(queries)
        ],
        "title": title,
        "type": kind,
    }
    if kind == "table":
        # The scrape's own labels say nothing to a reader of these tables.
        hidden = {"Time": True, "__name__": True, "instance": True, "job": True}
        built["transformations"] = [{"id": "organize", "options": {"excludeByName": hidden}}]
    if may_be_empty:
        # Grafana keeps keys it does not know; the live test reads this one.
        built["rp9"] = {"may_be_empty": True}
    return built


def layout(panels: Iterable[JSON]) -> list[JSON]:
    """The panels in reading order, left to right, wrapping at the grid's width."""
    placed: list[JSON] = []
    x = y = row_height = 0
    for item in panels:
        size = item["gridPos"]
        if x + size["w"] > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        placed.append({**item, "gridPos": {**size, "x": x, "y": y}})
        x += size["w"]
        row_height = max(row_height, size["h"])
    return placed


def dashboard(uid: str, title: str, panels: Iterable[JSON], variables: Sequence[JSON] = ()) -> JSON:
    return {
        "annotations": {"list": []},
        "description": "Generated by rp9_pipelines/observability/dashboards.py; edit it there.",
        "editable": False,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "asDropdown": False,
                "icon": "external link",
                "includeVars": False,
                "keepTime": True,
                "tags": ["rp9"],
                "targetBlank": False,
                "title": "rp9 dashboards",
                "type": "dashboards",
            }
        ],
        "panels": layout(panels),
        "refresh": "1m",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["rp9"],
        "templating": {"list": list(variables)},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "utc",
        "title": title,
        "uid": uid,
        "version": 1,
    }


def _rate(selector: str) -> str:
    return f"rate({selector}[$__rate_interval])"


def _age_or_since_created(timestamp_metric: str, match: str = "") -> str:
    """Seconds since a tenant's latest event, or since its creation when it has had none: how
    long it has gone without one either way."""
    matcher = f"{{{match}}}" if match else ""
    return (
        f"(max by (tenant) (time() - {timestamp_metric}{matcher})"
        f" or max by (tenant) (time() - rp9_tenant_created_timestamp_seconds{matcher}))"
    )


def _active_over(age_expr: str, limit_s: int) -> str:
    return (
        f'count(({age_expr} > {limit_s}) and on(tenant) rp9_tenant_info{{status="active"}})'
        " or vector(0)"
    )


UP_DOWN = {
    "options": {
        "0": {"color": "red", "index": 0, "text": "down"},
        "1": {"color": "green", "index": 1, "text": "up"},
    },
    "type": "value",
}
TENANT_LINKS = ({"title": "Tenant dashboard", "url": TENANT_LINK},)


def fleet_panels() -> list[JSON]:
    edge_all = _rate(f"traefik_service_requests_total{{{TENANT_SERVICES}}}")
    edge_5xx = _rate(f'traefik_service_requests_total{{{TENANT_SERVICES},code=~"5.."}}')
    api_all = _rate("rp9_api_requests_total")
    api_5xx = _rate('rp9_api_requests_total{status=~"5.."}')
    return [
        panel(
            1,
            "stat",
            "Tenants by status",
            "Tenants not deleted, per catalog status; any `failed` or a lasting"
            " `provisioning`/`promoting`/`upgrading` is bad.",
            [Query("sum by (status) (rp9_tenants)", "{{status}}")],
            width=8,
            height=5,
            options={"colorMode": "none"},
        ),
        panel(
            2,
            "table",
            "Tenants by tier and plan",
            "Tenants not deleted, per tier and plan: the fleet's mix; nothing here is bad in"
            " itself.",
            [Query("sum by (tier, plan) (rp9_tenants)")],
            width=8,
            height=5,
        ),
        panel(
            3,
            "stat",
            "Tenants down",
            "Active tenants whose n8n main does not answer its scrape (or has no target at all);"
            " anything above 0 is an outage.",
            [
                Query(
                    'count(rp9_tenant_info{status="active"}'
                    ' unless on(tenant) (up{job="n8n",role="main"} == 1)) or vector(0)',
                    "down",
                )
            ],
            width=8,
            height=5,
            thresholds=(BASE_GREEN, (1, "red")),
        ),
        panel(
            4,
            "table",
            "Main answering, by active tenant",
            "Whether each active tenant's n8n main answers its scrape (down first); a tenant"
            " without a main target shows down.",
            [
                Query(
                    '(max by (tenant) (up{job="n8n",role="main"})'
                    ' and on(tenant) rp9_tenant_info{status="active"})'
                    ' or (0 * max by (tenant) (rp9_tenant_info{status="active"}))'
                )
            ],
            width=8,
            mappings=(UP_DOWN,),
            options={"sortBy": [{"desc": False, "displayName": "Value"}]},
            links=TENANT_LINKS,
        ),
        panel(
            5,
            "timeseries",
            "Fleet executions per minute",
            "Executions every tenant's n8n finished per minute, by outcome; a drop to 0 or a"
            " rising `error` line is bad.",
            [
                Query(
                    "sum by (status)"
                    f" ({_rate('n8n_workflow_execution_duration_seconds_count')}) * 60",
                    "{{status}}",
                )
            ],
            unit="opm",
            width=16,
        ),
        panel(
            6,
            "timeseries",
            "Edge requests per second, top 10 tenants",
            "Requests Traefik served to each tenant's n8n (busiest 10); a sudden spike or drop"
            " is worth a look.",
            [Query(f"topk(10, sum by (service) ({edge_all}))", "{{service}}")],
            unit="reqps",
        ),
        panel(
            7,
            "timeseries",
            "Edge 5xx ratio, top 10 tenants",
            "Share of each tenant's edge requests answered 5xx (worst 10); above 1 % is bad.",
            [
                Query(
                    f"topk(10, (sum by (service) ({edge_5xx})"
                    f" or (0 * sum by (service) ({edge_all})))"
                    f" / sum by (service) ({edge_all}))",
                    "{{service}}",
                )
            ],
            unit="percentunit",
            thresholds=(BASE_GREEN, (0.01, "red")),
            minimum=0,
        ),
        panel(
            8,
            "timeseries",
            "Edge latency p95, top 10 tenants",
            "95th percentile of the time Traefik took to answer each tenant (slowest 10; buckets"
            " 0.1/0.3/1.2/5 s); above 1.2 s is bad.",
            [
                Query(
                    "topk(10, histogram_quantile(0.95, sum by (service, le) ("
                    + _rate(f"traefik_service_request_duration_seconds_bucket{{{TENANT_SERVICES}}}")
                    + ")))",
                    "{{service}}",
                )
            ],
            unit="s",
            thresholds=(BASE_GREEN, (1.2, "red")),
        ),
        panel(
            9,
            "timeseries",
            "Execution latency p95, top 10 tenants",
            "95th percentile of workflow execution duration per tenant (slowest 10); a tenant"
            " far above its usual level is bad.",
            [
                Query(
                    "topk(10, histogram_quantile(0.95, sum by (tenant, le) ("
                    + _rate("n8n_workflow_execution_duration_seconds_bucket")
                    + ")))",
                    "{{tenant}}",
                )
            ],
            unit="s",
        ),
        panel(
            10,
            "timeseries",
            "Queue waiting, top 10 tenants",
            "Jobs waiting in each tenant's queue as its main reports them (longest 10); a queue"
            " that keeps growing means too few workers.",
            [
                # max, not sum: during a cutover both colors' mains report the same queue.
                Query(
                    "topk(10, max by (tenant) (n8n_scaling_mode_queue_jobs_waiting))",
                    "{{tenant}}",
                )
            ],
        ),
        panel(
            11,
            "timeseries",
            "Oldest queued job wait, top 10 tenants",
            "Age of the oldest job waiting in each tenant's queue (oldest 10); minutes mean"
            " executions start late.",
            [
                Query(
                    "topk(10, max by (tenant) (rp9_tenant_queue_oldest_wait_seconds))",
                    "{{tenant}}",
                )
            ],
            unit="s",
            thresholds=(BASE_GREEN, (300, "red")),
        ),
        panel(
            12,
            "timeseries",
            "Workers vs max",
            "Workers the catalog runs across the fleet against the sum of the tenants' maxima;"
            " running close to the maximum leaves autoscaling no room.",
            [
                Query("sum(rp9_tenant_workers)", "workers"),
                Query("sum(rp9_tenant_workers_max)", "max"),
            ],
        ),
        panel(
            14,
            "gauge",
            "Quota use, top 10 tenants",
            "This month's executions over the monthly quota (top 10); above 80 % warns,"
            " above 100 % is over quota.",
            [
                Query(
                    "topk(10, max by (tenant) (rp9_tenant_quota_used_ratio))",
                    "{{tenant}}",
                )
            ],
            unit="percentunit",
            width=12,
            thresholds=(BASE_GREEN, (0.8, "orange"), (1, "red")),
            minimum=0,
            maximum=1.2,
        ),
        panel(
            13,
            "stat",
            "Tenants at their worker maximum",
            "Tenants running as many workers as they may (maximum above 0); these cannot scale"
            " out further, a persistent count is bad.",
            [
                Query(
                    "count(rp9_tenant_workers >= on(tenant) (rp9_tenant_workers_max > 0))"
                    " or vector(0)",
                    "at max",
                )
            ],
            width=6,
            height=5,
            thresholds=(BASE_GREEN, (1, "orange")),
        ),
        panel(
            15,
            "stat",
            "Active tenants without a verified backup in 26 h",
            "Active tenants whose newest verified backup (or, without one, their creation) is"
            " older than 26 h; anything above 0 is bad.",
            [
                Query(
                    _active_over(
                        _age_or_since_created("rp9_tenant_last_verified_backup_timestamp_seconds"),
                        BACKUP_MAX_AGE_S,
                    ),
                    "overdue",
                )
            ],
            width=6,
            height=5,
            thresholds=(BASE_GREEN, (1, "red")),
        ),
        panel(
            16,
            "stat",
            "Active tenants without a passed drill in 92 d",
            "Active tenants whose newest passed restore drill (or, without one, their creation)"
            " is older than 92 days; anything above 0 is bad.",
            [
                Query(
                    _active_over(
                        _age_or_since_created("rp9_tenant_last_passed_drill_timestamp_seconds"),
                        DRILL_MAX_AGE_S,
                    ),
                    "overdue",
                )
            ],
            width=6,
            height=5,
            thresholds=(BASE_GREEN, (1, "red")),
        ),
        panel(
            17,
            "stat",
            "Failed promotions and upgrades (7 d)",
            "Tenants whose latest promotion or upgrade failed within 7 days; anything above 0"
            " needs an operator.",
            [
                Query('sum(rp9_tenant_change_failed{kind="promotion"}) or vector(0)', "promotions"),
                Query('sum(rp9_tenant_change_failed{kind="upgrade"}) or vector(0)', "upgrades"),
            ],
            width=6,
            height=5,
            thresholds=(BASE_GREEN, (1, "red")),
        ),
        # Empty is this list's healthy state, and no fallback row would be honest; the stat
        # above gives the count (0) that always answers.
        panel(
            18,
            "table",
            "Tenants whose latest promotion or upgrade failed",
            "Which tenants' latest promotion or upgrade failed within 7 days; empty is healthy.",
            [Query("rp9_tenant_change_failed == 1")],
            width=24,
            height=6,
            links=TENANT_LINKS,
            may_be_empty=True,
        ),
        panel(
            19,
            "timeseries",
            "API requests per second, by status",
            "Requests the control plane's API answered, by status code; a rise of 5xx or 429 is"
            " bad.",
            [Query(f"sum by (status) ({api_all})", "{{status}}")],
            unit="reqps",
            width=8,
        ),
        panel(
            20,
            "timeseries",
            "API 5xx ratio",
            "Share of the API's answers that were 5xx; above 1 % is bad.",
            [Query(f"(sum({api_5xx}) or vector(0)) / sum({api_all})", "5xx ratio")],
            unit="percentunit",
            width=8,
            thresholds=(BASE_GREEN, (0.01, "red")),
            minimum=0,
        ),
        panel(
            21,
            "timeseries",
            "API latency p95, by route",
            "95th percentile of the API's answer time per route template; above 1 s is bad.",
            [
                Query(
                    "histogram_quantile(0.95, sum by (route, le) ("
                    + _rate("rp9_api_request_duration_seconds_bucket")
                    + "))",
                    "{{route}}",
                )
            ],
            unit="s",
            width=8,
            thresholds=(BASE_GREEN, (1, "red")),
        ),
        panel(
            22,
            "timeseries",
            "Run launches per minute",
            "Dagster runs the API launched and failed to launch, per minute; any failure is bad.",
            [
                Query(
                    "(sum("
                    + _rate('rp9_api_run_launches_total{outcome="launched"}')
                    + ") * 60) or vector(0)",
                    "launched",
                ),
                Query(
                    "(sum("
                    + _rate('rp9_api_run_launches_total{outcome="failed"}')
                    + ") * 60) or vector(0)",
                    "failed",
                ),
            ],
            unit="opm",
            width=8,
        ),
        panel(
            23,
            "timeseries",
            "Dagster daemon heartbeat age",
            "Seconds since each Dagster daemon last reported alive; above a minute means"
            " schedules and sensors stopped.",
            [
                Query(
                    "max by (daemon) (time() - rp9_dagster_daemon_heartbeat_timestamp_seconds)",
                    "{{daemon}}",
                )
            ],
            unit="s",
            width=8,
            thresholds=(BASE_GREEN, (60, "red")),
        ),
        panel(
            24,
            "timeseries",
            "Disk available",
            "Free space on the host's filesystems (tmpfs left out), per mount point; below 15 %"
            " is bad.",
            [
                Query(
                    "min by (mountpoint) (100 * node_filesystem_avail_bytes"
                    '{fstype!~"tmpfs|ramfs"} / node_filesystem_size_bytes{fstype!~"tmpfs|ramfs"})',
                    "{{mountpoint}}",
                )
            ],
            unit="percent",
            width=8,
            thresholds=((None, "red"), (15, "green")),
            minimum=0,
            maximum=100,
        ),
    ]


def tenant_panels() -> list[JSON]:
    executions = f"n8n_workflow_execution_duration_seconds_count{{{TENANT}}}"
    edge_all = _rate(f"traefik_service_requests_total{{{TENANT_SERVICE}}}")
    edge_5xx = _rate(f'traefik_service_requests_total{{{TENANT_SERVICE},code=~"5.."}}')
    return [
        panel(
            1,
            "stat",
            "Main up",
            "Whether the tenant's n8n main answers its scrape (or has no target at all: down);"
            " down is an outage.",
            [Query(f'max(up{{job="n8n",role="main",{TENANT}}}) or vector(0)', "main")],
            width=4,
            height=5,
            thresholds=((None, "red"), (1, "green")),
            mappings=(UP_DOWN,),
            options={"textMode": "value"},
        ),
        panel(
            2,
            "stat",
            "Status",
            "The tenant's catalog status; it should be `active`, and `failed` is bad.",
            [Query(f"rp9_tenant_info{{{TENANT}}}", "{{status}}")],
            width=4,
            height=5,
            options={"colorMode": "none", "textMode": "name"},
        ),
        panel(
            3,
            "stat",
            "Plan and version",
            "The tenant's plan, tier and n8n version, from the catalog; informational.",
            [
                Query(
                    f"rp9_tenant_info{{{TENANT}}}",
                    "{{plan}} / {{tier}} / n8n {{n8n_version}}",
                )
            ],
            width=8,
            height=5,
            options={"colorMode": "none", "textMode": "name"},
        ),
        panel(
            4,
            "stat",
            "Containers answering, by role",
            "n8n containers of the tenant that answer their scrape, per role; fewer workers than"
            " the catalog runs is bad.",
            [Query(f'sum by (role) (up{{job="n8n",{TENANT}}})', "{{role}}")],
            width=8,
            height=5,
            options={"colorMode": "none"},
        ),
        panel(
            5,
            "timeseries",
            "Executions per minute",
            "Executions the tenant's n8n finished per minute, by outcome; a drop to 0 with"
            " traffic at the edge is bad.",
            [Query(f"sum by (status) ({_rate(executions)}) * 60", "{{status}}")],
            unit="opm",
        ),
        panel(
            6,
            "timeseries",
            "Execution latency p95",
            "95th percentile of the tenant's workflow execution duration; far above its usual"
            " level is bad.",
            [
                Query(
                    "histogram_quantile(0.95, sum by (le) ("
                    + _rate(f"n8n_workflow_execution_duration_seconds_bucket{{{TENANT}}}")
                    + "))",
                    "p95",
                )
            ],
            unit="s",
        ),
        panel(
            7,
            "timeseries",
            "Queue waiting and active",
            "Jobs waiting in and taken from the tenant's queue, as its main reports them; a"
            " waiting count that keeps growing means too few workers.",
            [
                # max, not sum: during a cutover both colors' mains report the same queue.
                Query(f"max(n8n_scaling_mode_queue_jobs_waiting{{{TENANT}}})", "waiting"),
                Query(f"max(n8n_scaling_mode_queue_jobs_active{{{TENANT}}})", "active"),
            ],
        ),
        panel(
            8,
            "timeseries",
            "Oldest queued job wait",
            "Age of the oldest job waiting in the tenant's queue (the queue-wait proxy);"
            " minutes mean executions start late.",
            [Query(f"max(rp9_tenant_queue_oldest_wait_seconds{{{TENANT}}})", "oldest wait")],
            unit="s",
            thresholds=(BASE_GREEN, (300, "red")),
        ),
        panel(
            9,
            "timeseries",
            "Edge requests per second, by code",
            "Requests Traefik served to the tenant's n8n, by status code; a rise of 5xx or 429"
            " is bad.",
            [Query(f"sum by (code) ({edge_all})", "{{code}}")],
            unit="reqps",
            width=8,
        ),
        panel(
            10,
            "timeseries",
            "Edge 5xx ratio",
            "Share of the tenant's edge requests answered 5xx; above 1 % is bad.",
            [Query(f"(sum({edge_5xx}) or vector(0)) / sum({edge_all})", "5xx ratio")],
            unit="percentunit",
            width=8,
            thresholds=(BASE_GREEN, (0.01, "red")),
            minimum=0,
        ),
        panel(
            11,
            "timeseries",
            "Edge latency p95",
            "95th percentile of the time Traefik took to answer the tenant (buckets"
            " 0.1/0.3/1.2/5 s); above 1.2 s is bad.",
            [
                Query(
                    "histogram_quantile(0.95, sum by (le) ("
                    + _rate(f"traefik_service_request_duration_seconds_bucket{{{TENANT_SERVICE}}}")
                    + "))",
                    "p95",
                )
            ],
            unit="s",
            width=8,
            thresholds=(BASE_GREEN, (1.2, "red")),
        ),
        panel(
            12,
            "timeseries",
            "Errors",
            "Executions that ended in error and queue jobs that failed, per minute; any"
            " sustained rate is bad.",
            [
                # n8n creates the error series at the first failed execution; before it, 0 is
                # the truth.
                Query(
                    "(sum("
                    + _rate(
                        f'n8n_workflow_execution_duration_seconds_count{{{TENANT},status="error"}}'
                    )
                    + ") or vector(0)) * 60",
                    "failed executions",
                ),
                Query(
                    f"max({_rate(f'n8n_scaling_mode_queue_jobs_failed{{{TENANT}}}')}) * 60",
                    "failed queue jobs",
                ),
            ],
            unit="opm",
            width=24,
        ),
        panel(
            13,
            "timeseries",
            "Workers vs min and max",
            "Workers the catalog runs for the tenant against its effective limits; pinned at"
            " the maximum with a growing queue is bad.",
            [
                Query(f"max(rp9_tenant_workers{{{TENANT}}})", "workers"),
                Query(f"max(rp9_tenant_workers_min{{{TENANT}}})", "min"),
                Query(f"max(rp9_tenant_workers_max{{{TENANT}}})", "max"),
            ],
        ),
        panel(
            14,
            "timeseries",
            "Autoscaling decisions",
            "How often the worker count changed over the past hour, with the count itself;"
            " many changes an hour means the autoscaler flaps.",
            [
                Query(f"changes(rp9_tenant_workers{{{TENANT}}}[1h])", "changes in the last hour"),
                Query(f"max(rp9_tenant_workers{{{TENANT}}})", "workers"),
            ],
        ),
        panel(
            15,
            "timeseries",
            "CPU",
            "CPU cores each of the tenant's n8n containers uses, against each container's"
            " limit; a container at its limit is throttled.",
            [
                Query(
                    "sum by (role, container) ("
                    + _rate(f'n8n_process_cpu_seconds_total{{job="n8n",{TENANT}}}')
                    + ")",
                    "{{role}} {{container}}",
                ),
                Query(f"max(rp9_tenant_cpu_limit_cores{{{TENANT}}})", "limit per container"),
            ],
        ),
        panel(
            16,
            "timeseries",
            "Memory",
            "Resident memory of each of the tenant's n8n containers, against each container's"
            " limit; near the limit, the OOM killer restarts it.",
            [
                Query(
                    "sum by (role, container)"
                    f' (n8n_process_resident_memory_bytes{{job="n8n",{TENANT}}})',
                    "{{role}} {{container}}",
                ),
                Query(f"max(rp9_tenant_memory_limit_bytes{{{TENANT}}})", "limit per container"),
            ],
            unit="bytes",
        ),
        panel(
            17,
            "gauge",
            "Quota use",
            "This month's executions over the monthly quota; above 80 % warns, above 100 % is"
            " over quota.",
            [Query(f"max(rp9_tenant_quota_used_ratio{{{TENANT}}})", "quota used")],
            unit="percentunit",
            width=6,
            thresholds=(BASE_GREEN, (0.8, "orange"), (1, "red")),
            minimum=0,
            maximum=1.2,
        ),
        panel(
            18,
            "timeseries",
            "Executions this month vs quota",
            "Executions counted this calendar month (UTC) against the monthly quota; crossing"
            " it triggers enforcement.",
            [
                Query(f"max(rp9_tenant_executions_month{{{TENANT}}})", "executions"),
                Query(f"max(rp9_tenant_executions_quota{{{TENANT}}})", "quota"),
            ],
            width=18,
        ),
        panel(
            19,
            "stat",
            "Time without a verified backup",
            "Time since the tenant's newest verified backup, or since its creation when it has"
            " none; above 26 h is bad.",
            [
                Query(
                    _age_or_since_created(
                        "rp9_tenant_last_verified_backup_timestamp_seconds", TENANT
                    ),
                    "since verified backup",
                )
            ],
            unit="s",
            height=5,
            thresholds=(BASE_GREEN, (BACKUP_MAX_AGE_S, "red")),
        ),
        panel(
            20,
            "stat",
            "Time without a passed restore drill",
            "Time since the tenant's newest passed restore drill, or since its creation when it"
            " has none; above 92 days is bad.",
            [
                Query(
                    _age_or_since_created("rp9_tenant_last_passed_drill_timestamp_seconds", TENANT),
                    "since passed drill",
                )
            ],
            unit="s",
            height=5,
            thresholds=(BASE_GREEN, (DRILL_MAX_AGE_S, "red")),
        ),
    ]


TENANT_VARIABLE: JSON = {
    "current": {},
    "datasource": DATASOURCE,
    "definition": "label_values(rp9_tenant_info, tenant)",
    "hide": 0,
    "includeAll": False,
    "label": "Tenant",
    "multi": False,
    "name": "tenant",
    "options": [],
    "query": {
        "qryType": 1,
        "query": "label_values(rp9_tenant_info, tenant)",
        "refId": "PrometheusVariableQueryEditor-VariableQuery",
    },
    "refresh": 2,
    "regex": "",
    "skipUrlSync": False,
    "sort": 1,
    "type": "query",
}


def fleet_dashboard() -> JSON:
    return dashboard("rp9-fleet", "rp9 fleet overview", fleet_panels())


def tenant_dashboard() -> JSON:
    return dashboard("rp9-tenant", "rp9 tenant", tenant_panels(), [TENANT_VARIABLE])


def dashboards() -> dict[str, JSON]:
    """Every dashboard by the file name it is checked in under."""
    return {"fleet.json": fleet_dashboard(), "tenant.json": tenant_dashboard()}


def render(model: Mapping[str, Any]) -> str:
    return json.dumps(model, indent=2, sort_keys=True) + "\n"


def panel_queries(model: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every target of every panel, in the dashboard's order."""
    return [
        (item["title"], target["expr"])
        for item in model["panels"]
        for target in item.get("targets", [])
    ]


_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def render_query(expr: str, tenant: str, rate_interval: str = "1m", time_range: str = "1h") -> str:
    """`expr` as Grafana would send it for `tenant`, ready for an instant query. A variable it
    does not know raises, rather than reaching Prometheus as a parse error."""
    values = {
        "tenant": tenant,
        "__rate_interval": rate_interval,
        "__interval": rate_interval,
        "__range": time_range,
    }

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise ValueError(f"render_query does not know ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(value, expr)


def stale_files(out_dir: Path = OUT_DIR) -> list[Path]:
    """The dashboard files under `out_dir` that differ from what this module builds."""
    return [
        out_dir / name
        for name, model in dashboards().items()
        if not (out_dir / name).is_file() or (out_dir / name).read_text() != render(model)
    ]


def write(out_dir: Path = OUT_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in dashboards().items():
        path = out_dir / name
        path.write_text(render(model))
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when the checked-in files are stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_files()
        for path in stale:
            print(f"{path} differs from the generator's output", file=sys.stderr)
        return 1 if stale else 0
    for path in write():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
