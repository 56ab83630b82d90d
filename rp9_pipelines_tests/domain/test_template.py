import pytest

from rp9_pipelines.domain.stack import LABEL_ROLE
from rp9_pipelines.domain.template import (
    TEMPLATE_DATABASE,
    TEMPLATE_ROLE,
    builder_container,
    template_schema,
)
from rp9_pipelines_tests.fixtures import STACK_CONFIG


def test_one_template_schema_per_n8n_version() -> None:
    assert template_schema("2.20.12") == "n8n_2_20_12"
    assert template_schema("2.21.0-rc.1") == "n8n_2_21_0_rc_1"
    assert template_schema("2.20.12") != template_schema("2.20.13")


@pytest.mark.parametrize("version", ["", "2.20; DROP SCHEMA x", "../etc", "a" * 41])
def test_a_version_that_is_not_one_is_refused(version: str) -> None:
    with pytest.raises(ValueError, match="not an n8n version"):
        template_schema(version)


def test_the_builder_migrates_the_template_schema_without_route_queue_or_inline_secrets() -> None:
    spec = builder_container("n8n_2_20_12", STACK_CONFIG)
    assert spec.env["DB_POSTGRESDB_DATABASE"] == TEMPLATE_DATABASE
    assert spec.env["DB_POSTGRESDB_SCHEMA"] == "n8n_2_20_12"
    assert spec.env["DB_POSTGRESDB_USER"] == TEMPLATE_ROLE
    assert spec.labels[LABEL_ROLE] == "template"
    assert not any(label.startswith("traefik.") for label in spec.labels)
    assert "EXECUTIONS_MODE" not in spec.env  # regular mode: no Redis needed to migrate
    assert {"DB_POSTGRESDB_PASSWORD", "N8N_ENCRYPTION_KEY"}.isdisjoint(spec.env)
    assert spec.env["N8N_ENCRYPTION_KEY_FILE"].startswith("/run/secrets/")
