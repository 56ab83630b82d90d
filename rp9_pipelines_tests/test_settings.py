import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from rp9_pipelines.settings import (
    PlatformSettings,
    Settings,
    TenantStackSettings,
    is_placeholder,
    sqlalchemy_url,
)

ROOT = Path(__file__).parent.parent
STRONG = "a" * 16 + "b" * 16 + "c" * 8
BASE = {
    "DATABASE_URL": "postgresql://rp9:pw@db:5432/rp9_platform",
    "REDIS_URL": "redis://redis:6379/0",
    "VAULT_ADDR": "http://vault:8200",
    "VAULT_TOKEN": "s.real-token-value",
}


def make(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for key in Settings.variables():
        monkeypatch.delenv(key, raising=False)
    for key, value in {**BASE, **env}.items():
        monkeypatch.setenv(key, value)
    return Settings()


@pytest.mark.parametrize(
    "token",
    [
        "super_long_token",
        "short",
        "x" * 31,
        "changeme-changeme-changeme-changeme",
        "sk_test_xxx" * 4,
    ],
)
def test_production_refuses_placeholder_or_short_token(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    with pytest.raises(ValidationError, match="ORCH_TOKEN"):
        make(monkeypatch, RP9_ENV="production", ORCH_TOKEN=token)


def test_production_accepts_a_real_token(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make(monkeypatch, RP9_ENV="production", ORCH_TOKEN=STRONG)
    assert settings.orch_token.get_secret_value() == STRONG


def test_development_tolerates_the_example_token(monkeypatch: pytest.MonkeyPatch) -> None:
    assert make(monkeypatch, RP9_ENV="development", ORCH_TOKEN="super_long_token").orch_port == 8080


def test_production_refuses_the_database_password_placeholder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValidationError, match="__PASS__"):
        make(
            monkeypatch,
            RP9_ENV="production",
            ORCH_TOKEN=STRONG,
            DATABASE_URL="postgres://rp9:__PASS__@postgres:5432/rp9_platform",
        )


def test_production_refuses_the_example_stripe_key_but_not_an_empty_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValidationError, match="STRIPE_SECRET_KEY"):
        make(monkeypatch, RP9_ENV="production", ORCH_TOKEN=STRONG, STRIPE_SECRET_KEY="sk_test_xxx")
    settings = make(monkeypatch, RP9_ENV="production", ORCH_TOKEN=STRONG)
    assert settings.stripe_secret_key.get_secret_value() == ""


def test_the_groups_need_no_secret_and_come_with_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in Settings.variables():
        monkeypatch.delenv(key, raising=False)
    assert PlatformSettings().usage.daily_cron == "15 0 * * *"
    settings = make(
        monkeypatch,
        ORCH_TOKEN=STRONG,
        ENFORCEMENT_WEBHOOK_URL="http://receiver/hook",
        STRIPE_TIMEOUT_S="7",
    )
    assert settings.enforcement.webhook_url == "http://receiver/hook"
    assert settings.stripe.timeout_s == 7.0


def test_missing_required_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCH_TOKEN", raising=False)
    with pytest.raises(ValidationError, match="orch_token"):
        make(monkeypatch)


def test_secrets_are_masked_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make(monkeypatch, ORCH_TOKEN=STRONG)
    assert STRONG not in repr(settings)
    assert "s.real-token-value" not in repr(settings)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgres://u:p@h:5432/d", "postgresql+psycopg://u:p@h:5432/d"),
        ("postgresql://u:p@h/d", "postgresql+psycopg://u:p@h/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
    ],
)
def test_sqlalchemy_url(url: str, expected: str) -> None:
    assert sqlalchemy_url(url) == expected


@pytest.mark.parametrize(("value", "placeholder"), [("", True), ("...", True), (STRONG, False)])
def test_is_placeholder(value: str, placeholder: bool) -> None:
    assert is_placeholder(value) is placeholder


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    names = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    fields = Settings.variables()
    spec = {
        "ORCH_PORT",
        "ORCH_TOKEN",
        "BASE_DOMAIN",
        "ACME_EMAIL",
        "DATABASE_URL",
        "REDIS_URL",
        "STRIPE_SECRET_KEY",
        "SUPABASE_URL",
        "SUPABASE_SERVICE_ROLE_KEY",
        "VAULT_ADDR",
        "VAULT_TOKEN",
    }
    assert spec <= fields
    assert fields <= names, f"missing from .env.example: {sorted(fields - names)}"


def test_tenant_stack_settings_are_in_env_example() -> None:
    names = set(re.findall(r"^([A-Z][A-Z0-9_]*)=", (ROOT / ".env.example").read_text(), re.M))
    assert {f"TENANT_{name.upper()}" for name in TenantStackSettings.model_fields} <= names


def test_the_swarm_runtime_needs_its_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match="SWARM_MANAGER_HOST, SWARM_NODE_ENGINE"):
        make(monkeypatch, ORCH_TOKEN=STRONG, TENANT_RUNTIME="swarm", SWARM_SERVICES_IP="x")
    with pytest.raises(ValidationError, match="Input should be 'docker' or 'swarm'"):
        make(monkeypatch, ORCH_TOKEN=STRONG, TENANT_RUNTIME="kubernetes")
    swarm = {
        "SWARM_MANAGER_HOST": "unix:///m.sock",
        "SWARM_NODE_ENGINE": "unix:///{node}.sock",
        "SWARM_SERVICES_IP": "10.88.0.1",
    }
    settings = make(monkeypatch, ORCH_TOKEN=STRONG, TENANT_RUNTIME="swarm", **swarm)
    assert settings.tenant_stack.runtime == "swarm"
    assert make(monkeypatch, ORCH_TOKEN=STRONG).tenant_stack.runtime == "docker"
