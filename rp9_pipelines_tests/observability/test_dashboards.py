"""The Grafana dashboards (rp9_pipelines/observability/dashboards.py): the checked-in JSON is
what the generator builds, every panel is complete and reads only the metrics of
docs/observability.md, the tenant page reads only the chosen tenant; and, on the live stack,
every panel's query answers with series for a tenant with traffic."""

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from rp9_pipelines.observability.dashboards import (
    DATASOURCE,
    GRID_WIDTH,
    OUT_DIR,
    dashboards,
    main,
    panel_queries,
    render,
    render_query,
)

ROOT = Path(__file__).resolve().parents[2]
CONTRACT = ROOT / "docs" / "observability.md"
PROVISIONING = ROOT / "deploy" / "observability" / "grafana" / "provisioning"
PRODUCTION_DATASOURCES = (
    ROOT / "deploy" / "production" / "grafana" / "provisioning" / "datasources" / "datasources.yml"
)

# How metric names are read from an expression: string literals are masked first (label values
# such as "n8n" or "t-$tenant@docker" are not names), then what can only hold label names or
# durations is dropped: `{...}` matchers, `[...]` ranges, and the label lists of `by`, `without`,
# `on`, `ignoring`, `group_left` and `group_right`. What remains is functions (an identifier
# followed by `(`), keywords, numbers and metric names; the identifiers that are neither called
# nor keywords are the metric names.
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
MASKED = re.compile(r"\x00(\d+)\x00")
MATCHERS = re.compile(r"\{[^{}]*\}")
RANGE = re.compile(r"\[[^\]]*\]")
LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
# An identifier not inside a number (`0.95`, `1e3`) or a variable (`$tenant`), with the matcher
# that follows it and whether it is called.
NAME = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^{}]*\})?\s*(\()?")
KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}
# PromQL's functions and aggregations that the panels may call; a typo is caught here, before
# Prometheus answers it with a parse error on the live stack.
FUNCTIONS = {
    "abs",
    "avg",
    "ceil",
    "changes",
    "clamp_max",
    "clamp_min",
    "count",
    "delta",
    "deriv",
    "floor",
    "histogram_quantile",
    "increase",
    "irate",
    "label_replace",
    "max",
    "max_over_time",
    "min",
    "min_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sort",
    "sort_desc",
    "sum",
    "time",
    "timestamp",
    "topk",
    "bottomk",
    "vector",
}


def selectors(expr: str) -> tuple[list[tuple[str, str]], set[str]]:
    """The metric selectors of `expr` as (metric name, its matcher text or ""), and the
    functions it calls."""
    strings: list[str] = []

    def mask(match: re.Match[str]) -> str:
        strings.append(match.group(0))
        return f"\x00{len(strings) - 1}\x00"

    text = STRING.sub(mask, expr)
    text = RANGE.sub(" ", text)
    text = LABEL_LIST.sub(" ", text)
    found: list[tuple[str, str]] = []
    calls: set[str] = set()
    for match in NAME.finditer(text):
        name, matcher, called = match.groups()
        if name.lower() in KEYWORDS:
            continue
        if called and not matcher:
            calls.add(name)
        else:
            restored = MASKED.sub(lambda m: strings[int(m.group(1))], matcher or "")
            found.append((name, restored))
    return found, calls


def metric_names(expr: str) -> set[str]:
    return {name for name, _ in selectors(expr)[0]}


# The contract names its metrics in code spans, as selectors (`name{labels}`), histograms
# (`name_{bucket,count,sum}{labels}`) or bare names (`rp9_exporter_last_scrape_error`). Other
# spans are jobs, label names and values; a bare span counts as a metric only when it is a
# lowercase snake_case name that is not a label name of any selector in the document.
CODE_SPAN = re.compile(r"`([^`]+)`")
SELECTOR_SPAN = re.compile(r"([a-z_:][a-z0-9_:]*[a-z0-9:])(?:_\{([a-z_,]+)\})?\{([^}]*)\}")
BARE_METRIC = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+")


def contract_metrics(text: str) -> set[str]:
    metrics: set[str] = set()
    label_names: set[str] = set()
    bare: set[str] = set()
    for span in CODE_SPAN.findall(text):
        selector = SELECTOR_SPAN.match(span)
        if selector:
            name, suffixes, labels = selector.groups()
            if suffixes:
                metrics.update(f"{name}_{suffix}" for suffix in suffixes.split(","))
            else:
                metrics.add(name)
            for part in labels.split(","):
                label = re.match(r"\s*([a-zA-Z_]\w*)", part)
                if label:
                    label_names.add(label.group(1))
        elif BARE_METRIC.fullmatch(span):
            bare.add(span)
    return metrics | (bare - label_names)


@pytest.fixture(scope="module")
def models() -> dict[str, dict[str, Any]]:
    return dashboards()


@pytest.fixture(scope="module")
def contract() -> set[str]:
    return contract_metrics(CONTRACT.read_text())


def test_the_checked_in_dashboards_are_what_the_generator_builds(
    models: dict[str, dict[str, Any]],
) -> None:
    for name, model in models.items():
        path = OUT_DIR / name
        assert path.read_text() == render(model), (
            f"{path} is stale: run `python -m rp9_pipelines.observability.dashboards`"
        )
    assert main(["--check"]) == 0


def test_the_dashboards_are_grafana_11_models_with_their_uids(
    models: dict[str, dict[str, Any]],
) -> None:
    assert {m["uid"]: m["title"] for m in models.values()} == {
        "rp9-fleet": "rp9 fleet overview",
        "rp9-tenant": "rp9 tenant",
    }
    for model in models.values():
        assert model["schemaVersion"] == 39
        assert model["id"] is None, "a provisioned dashboard carries no database id"
        json.loads(render(model))


def test_every_panel_is_complete_with_a_unique_id_and_title(
    models: dict[str, dict[str, Any]],
) -> None:
    for name, model in models.items():
        panels = model["panels"]
        ids = [p["id"] for p in panels]
        titles = [p["title"] for p in panels]
        assert len(set(ids)) == len(ids), f"{name}: duplicate panel ids"
        assert len(set(titles)) == len(titles), f"{name}: duplicate panel titles"
        for p in panels:
            where = f"{name} / {p['title']}"
            assert p["type"] in {"timeseries", "stat", "table", "gauge"}, where
            assert p["datasource"] == DATASOURCE, where
            assert p["description"].strip(), where
            assert "\n" not in p["description"], where
            assert p["targets"], where
            refs = [t["refId"] for t in p["targets"]]
            assert len(set(refs)) == len(refs), where
            for target in p["targets"]:
                assert target["datasource"] == DATASOURCE, where
                assert target["expr"].strip(), where
            grid = p["gridPos"]
            assert grid["x"] >= 0, where
            assert grid["x"] + grid["w"] <= GRID_WIDTH, where


def test_panels_do_not_overlap(models: dict[str, dict[str, Any]]) -> None:
    for name, model in models.items():
        cells: dict[tuple[int, int], str] = {}
        for p in model["panels"]:
            g = p["gridPos"]
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{name}: {p['title']} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = p["title"]


def test_the_metric_parser_reads_names_and_skips_labels_functions_and_values() -> None:
    expr = (
        'topk(10, (sum by (service) (rate(a_total{service=~"t-.+@docker",code=~"5.."}'
        "[$__rate_interval])) or (0 * b_total)) / on(service) group_left c_info)"
        ' and count(up{job="n8n"} == 1) or vector(0) > 0.95'
    )
    assert metric_names(expr) == {"a_total", "b_total", "c_info", "up"}
    assert selectors(expr)[1] == {"topk", "sum", "rate", "count", "vector"}


def test_the_contract_parser_finds_selectors_histograms_and_bare_names(
    contract: set[str],
) -> None:
    assert {
        "up",
        "rp9_tenant_info",
        "n8n_workflow_execution_duration_seconds_bucket",
        "traefik_service_request_duration_seconds_count",
        "rp9_api_request_duration_seconds_sum",
        "rp9_exporter_last_scrape_error",
        "node_filesystem_size_bytes",
    } <= contract
    # Label names and values are not metrics.
    assert not {"tenant", "tenant_id", "n8n_version", "status", "n8n", "main"} & contract


def test_every_query_reads_only_metrics_of_the_contract(
    models: dict[str, dict[str, Any]], contract: set[str]
) -> None:
    for name, model in models.items():
        for title, expr in panel_queries(model):
            found, calls = selectors(expr)
            names = {metric for metric, _ in found}
            assert names, f"{name} / {title} reads no metric: {expr}"
            assert names <= contract, (
                f"{name} / {title} reads {sorted(names - contract)}, not in {CONTRACT.name}"
            )
            assert calls <= FUNCTIONS, f"{name} / {title} calls {sorted(calls - FUNCTIONS)}"


def test_the_tenant_dashboard_reads_only_the_chosen_tenant(
    models: dict[str, dict[str, Any]], contract: set[str]
) -> None:
    model = models["tenant.json"]
    variables = {v["name"]: v for v in model["templating"]["list"]}
    tenant = variables["tenant"]
    assert tenant["type"] == "query"
    assert tenant["datasource"] == DATASOURCE
    assert tenant["query"]["query"] == "label_values(rp9_tenant_info, tenant)"
    assert tenant["multi"] is False
    assert tenant["includeAll"] is False
    assert "rp9_tenant_info" in contract
    for title, expr in panel_queries(model):
        for metric, matcher in selectors(expr)[0]:
            # Every selector, not just one per query: `a / b` with an unfiltered `b` would mix
            # the fleet into the tenant's figure.
            assert "$tenant" in matcher or "${tenant}" in matcher, (
                f"{title}: {metric} is not filtered on $tenant in {expr}"
            )


def test_render_query_leaves_no_variable_behind(models: dict[str, dict[str, Any]]) -> None:
    for model in models.values():
        for title, expr in panel_queries(model):
            rendered = render_query(expr, "acme-7")
            assert "$" not in rendered, f"{title}: {rendered}"
    assert (
        render_query('rate(x{t="${tenant}",s="t-$tenant@docker"}[$__rate_interval])', "acme", "2m")
        == 'rate(x{t="acme",s="t-acme@docker"}[2m])'
    )
    assert render_query("increase(x[$__range])", "acme") == "increase(x[1h])"
    with pytest.raises(ValueError, match="tenat"):
        render_query('x{tenant="$tenat"}', "acme")


def test_the_provisioning_serves_the_dashboards_from_the_data_source_they_name() -> None:
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "rp9.yml").read_text())
    (rp9,) = provider["providers"]
    assert rp9["folder"] == "rp9"
    assert rp9["type"] == "file"
    production = yaml.safe_load(PRODUCTION_DATASOURCES.read_text())
    uids = {(d["type"], d["uid"]) for d in production["datasources"]}
    assert (DATASOURCE["type"], DATASOURCE["uid"]) in uids


def may_be_empty(model: dict[str, Any]) -> set[str]:
    """Titles of the panels whose query is empty in the healthy case (a list of failures)."""
    return {p["title"] for p in model["panels"] if p.get("rp9", {}).get("may_be_empty")}


def panel_failures(prometheus_url: str, tenant: str) -> list[str]:
    """Every panel query of both dashboards for `tenant` that does not parse, or (unless the
    panel may be empty when healthy) returns no series."""
    failures: list[str] = []
    with httpx.Client(timeout=30) as client:
        for model in dashboards().values():
            allowed_empty = may_be_empty(model)
            for title, expr in panel_queries(model):
                where = f"{model['title']} / {title}"
                query = render_query(expr, tenant)
                answer = client.get(
                    f"{prometheus_url.rstrip('/')}/api/v1/query", params={"query": query}
                )
                # Prometheus answers a parse error with 400 and a JSON body that says why.
                body = answer.json()
                if body.get("status") != "success":
                    failures.append(
                        f"{where}: {body.get('errorType')}: {body.get('error')} in {query}"
                    )
                elif not body["data"]["result"] and title not in allowed_empty:
                    failures.append(f"{where}: no series for {query}")
    return failures


@pytest.mark.stack
def test_every_panel_query_returns_series_for_a_live_tenant(
    observed_tenant: str, prometheus_url: str
) -> None:
    # A parse error fails at once; a rate may need another scrape or two of the tenant's
    # traffic (15 s apart) before it has the two samples it needs.
    failures = panel_failures(prometheus_url, observed_tenant)
    parse_errors = [f for f in failures if "no series" not in f]
    assert not parse_errors, "\n".join(parse_errors)
    deadline = time.monotonic() + 90
    while failures and time.monotonic() < deadline:
        time.sleep(5)
        failures = panel_failures(prometheus_url, observed_tenant)
    assert not failures, "\n".join(failures)
