"""The production deployment (deploy/production/) passes its own validation, and the validation
refuses a deployment that exposes what must stay internal. No service runs: validate.sh checks
the files offline (it may install docker-compose and promtool with apt-get on first use)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
PRODUCTION = ROOT / "deploy" / "production"
VALIDATE = PRODUCTION / "validate.sh"
# A first run may install docker-compose and prometheus (promtool) from Debian.
TIMEOUT_S = 900


def validate(compose_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = ["bash", str(VALIDATE)]
    if compose_file is not None:
        command.append(str(compose_file))
    return subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT_S, check=False, cwd=ROOT
    )


def mutated(tmp_path: Path, old: str, new: str) -> Path:
    """A copy of compose.yaml with one change (paths in it still resolve against
    deploy/production: validate.sh passes --project-directory)."""
    text = (PRODUCTION / "compose.yaml").read_text()
    assert old in text, f"compose.yaml no longer contains {old!r}: update this test"
    copy = tmp_path / "compose.yaml"
    copy.write_text(text.replace(old, new, 1))
    return copy


def test_the_production_deployment_validates() -> None:
    assert shutil.which("bash")
    result = validate()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK: compose.yaml and its configuration are valid" in result.stdout


POSTGRES_PORT = '"${TENANT_GATEWAY_IP:?set TENANT_GATEWAY_IP in .env}:5432:5432"'


@pytest.mark.parametrize(
    ("old", "new", "refusal"),
    [
        pytest.param(
            POSTGRES_PORT,
            '"5432:5432"',
            "postgres ports: published on every address",
            id="postgres-published-publicly",
        ),
        pytest.param(
            '    user: "10001:10001"\n',
            '    user: "10001:10001"\n    ports: ["3000:3000"]\n',
            "dagster-webserver ports: publishes",
            id="dagster-ui-on-a-port",
        ),
        pytest.param(
            'traefik.http.routers.rp9-dagster.middlewares: "rp9-dagster-allow,rp9-dagster-auth"',
            'traefik.http.routers.rp9-dagster.middlewares: "rp9-dagster-allow"',
            "router rp9-dagster: no basic auth",
            id="dagster-ui-without-basic-auth",
        ),
        pytest.param(
            'image: "redis:7.4.2-bookworm"',
            'image: "redis:latest"',
            "uses the `latest` tag",
            id="latest-tag",
        ),
        pytest.param(
            '"${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD in .env}"',
            '"s3cr3t-grafana-password"',
            "GF_SECURITY_ADMIN_PASSWORD must be a ${...} reference",
            id="secret-written-in-compose",
        ),
    ],
)
def test_validation_refuses(tmp_path: Path, old: str, new: str, refusal: str) -> None:
    result = validate(mutated(tmp_path, old, new))
    assert result.returncode != 0, result.stdout
    assert refusal in result.stderr, result.stderr
    assert "FAIL" in result.stderr
