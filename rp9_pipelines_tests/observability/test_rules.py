"""The alert and recording rules and Alertmanager's routing (deploy/observability/), checked with
the tools Prometheus and Alertmanager ship: promtool (rule syntax, the rules' own unit tests) and
amtool (the configuration, where each alert is routed). Neither needs a running server."""

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OBSERVABILITY = ROOT / "deploy" / "observability"
RULE_FILES = sorted((OBSERVABILITY / "prometheus" / "rules").glob("*.rules.yml"))
TEST_FILES = sorted((OBSERVABILITY / "prometheus" / "tests").glob("*.test.yml"))
ALERTMANAGER = OBSERVABILITY / "alertmanager" / "alertmanager.yml"
ALERTS_MD = OBSERVABILITY / "ALERTS.md"
README = OBSERVABILITY.parent.parent / "README.md"

# The watchdog always fires (so never has a quiet case) and goes to its own receiver.
WATCHDOG = "RP9Watchdog"
RECEIVER_OF_SEVERITY = {"page": "pager", "ticket": "tickets"}
CATCH_ALL = "unrouted"
TIMEOUT_S = 60


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: the observability checks need it "
            f"(Debian: apt-get install {package}; `make test` installs it with the local stack)"
        )
    return path


@pytest.fixture(scope="module")
def promtool() -> str:
    return tool("promtool", "prometheus")


@pytest.fixture(scope="module")
def amtool() -> str:
    return tool("amtool", "prometheus-alertmanager")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def rules() -> list[tuple[Path, dict[str, Any]]]:
    """Every rule with the file that defines it."""
    return [
        (path, rule)
        for path in RULE_FILES
        for group in load(path)["groups"]
        for rule in group["rules"]
    ]


def alerts() -> dict[str, dict[str, Any]]:
    """Alert name → its rule (the last one, were a name defined twice)."""
    return {rule["alert"]: rule for _, rule in rules() if "alert" in rule}


def documented_alerts() -> dict[str, str]:
    """Alert name → severity, from the README's table rows: | `Name` | severity | … |."""
    rows = re.findall(r"^\| `(RP9\w+)` \| (\w+) \|", README.read_text(), re.MULTILINE)
    return dict(rows)


def test_there_are_rules_and_tests() -> None:
    assert RULE_FILES, f"no *.rules.yml under {OBSERVABILITY / 'prometheus' / 'rules'}"
    assert TEST_FILES, f"no *.test.yml under {OBSERVABILITY / 'prometheus' / 'tests'}"


def test_promtool_accepts_the_rules(promtool: str) -> None:
    result = run(promtool, "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda path: path.name)
def test_promtool_unit_tests_pass(promtool: str, test_file: Path) -> None:
    result = run(promtool, "test", "rules", str(test_file))
    assert result.returncode == 0, output(result)


def test_every_alert_has_a_severity_a_summary_and_a_runbook() -> None:
    assert alerts()
    for name, rule in alerts().items():
        severity = rule.get("labels", {}).get("severity")
        allowed = {"none"} if name == WATCHDOG else set(RECEIVER_OF_SEVERITY)
        assert severity in allowed, f"{name}: severity {severity!r}, not one of {allowed}"
        annotations = rule.get("annotations", {})
        for key in ("summary", "runbook"):
            assert annotations.get(key, "").strip(), f"{name} has no {key} annotation"


def test_alerts_md_lists_every_alert_with_its_severity() -> None:
    documented = documented_alerts()
    defined = {name: rule["labels"]["severity"] for name, rule in alerts().items()}
    assert documented == defined


def test_every_recorded_series_is_documented() -> None:
    """Listed in ALERTS.md and in its rule file's opening comment, for dashboards' authors."""
    documented = ALERTS_MD.read_text()
    recorded = [(path, rule["record"]) for path, rule in rules() if "record" in rule]
    assert recorded
    for path, name in recorded:
        assert f"`{name}`" in documented, f"{name} is not listed in ALERTS.md"
        header = "".join(line for line in path.read_text().splitlines() if line.startswith("#"))
        assert name in header, f"{name} is not listed at the top of {path.name}"


def test_every_alert_is_tested_firing_and_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        for test in load(path)["tests"]:
            for case in test.get("alert_rule_test", []):
                (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    defined = set(alerts())
    # A misspelt name's `exp_alerts: []` would pass vacuously.
    assert (fired | quiet) <= defined, f"tests name unknown alerts: {(fired | quiet) - defined}"
    assert defined - fired == set(), "alerts no test expects firing"
    assert defined - quiet - {WATCHDOG} == set(), "alerts no test expects quiet"


def test_alertmanager_accepts_its_configuration(amtool: str) -> None:
    result = run(amtool, "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, output(result)


def route(amtool: str, **labels: str) -> str:
    result = run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER}",
        *(f"{key}={value}" for key, value in labels.items()),
    )
    assert result.returncode == 0, output(result)
    return result.stdout.strip()


def test_every_alert_reaches_its_severitys_receiver(amtool: str) -> None:
    for name, rule in alerts().items():
        severity = rule["labels"]["severity"]
        receiver = route(amtool, alertname=name, severity=severity, tenant="acme")
        expected = "heartbeat" if name == WATCHDOG else RECEIVER_OF_SEVERITY[severity]
        assert receiver == expected, f"{name} ({severity}) goes to {receiver}"


def test_the_default_receiver_catches_an_alert_without_severity(amtool: str) -> None:
    assert load(ALERTMANAGER)["route"]["receiver"] == CATCH_ALL
    assert route(amtool, alertname="SomethingElse", tenant="acme") == CATCH_ALL
