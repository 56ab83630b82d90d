import re

import pytest

from rp9_pipelines.domain.autoscaling import Policy
from rp9_pipelines.settings import AutoscalingSettings
from rp9_pipelines_tests.conftest import ROOT


def test_every_autoscaling_setting_is_in_env_example() -> None:
    names = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    fields = {f"AUTOSCALE_{name.upper()}" for name in AutoscalingSettings.model_fields}
    assert fields <= names, f"missing from .env.example: {sorted(fields - names)}"


def test_defaults_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in AutoscalingSettings.model_fields:
        monkeypatch.delenv(f"AUTOSCALE_{name.upper()}", raising=False)
    defaults = AutoscalingSettings()
    assert (defaults.enabled, defaults.interval_s, defaults.tenants) == (False, 30, "*")
    assert defaults.policy() == Policy()
    assert Policy().stabilisation_window_s == 300
    assert Policy().tolerance == 0.1
    monkeypatch.setenv("AUTOSCALE_ENABLED", "true")
    monkeypatch.setenv("AUTOSCALE_STABILISATION_WINDOW_S", "30")
    monkeypatch.setenv("AUTOSCALE_TARGET_LATENCY_P95_S", "")
    changed = AutoscalingSettings()
    assert changed.enabled
    assert changed.policy().stabilisation_window_s == 30
    assert changed.policy().target_latency_p95_s is None
    monkeypatch.setenv("AUTOSCALE_TOLERANCE", "1.5")
    with pytest.raises(ValueError, match="tolerance"):
        AutoscalingSettings().policy()
