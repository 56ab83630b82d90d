"""Session fixtures on the real local stack (`deploy/local/stack.sh up`, run by `make test`).

A test that needs a service and cannot reach it fails: the fixtures raise, they never skip.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import docker
import httpx
import pytest
import sqlalchemy as sa

from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.resources.s3 import S3Resource
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.waiting import wait_until
from testing.dagster_db import dagster_database

ROOT = Path(__file__).parent.parent
BIN = Path(sys.executable).parent

REQUIRED = (
    "DATABASE_URL",
    "TENANT_ADMIN_DATABASE_URL",
    "REDIS_URL",
    "VAULT_ADDR",
    "VAULT_TOKEN",
    "ORCH_TOKEN",
)


TERMINATE = """
mutation Terminate($runId: String!) {
  terminateRun(runId: $runId) { __typename ... on PythonError { message } }
}
"""


def terminate_run(dagster_url: str, run_id: str) -> None:
    """Stop a run as an operator does from the Dagster UI (its process is interrupted)."""
    answer = httpx.post(
        f"{dagster_url}/graphql",
        json={"query": TERMINATE, "variables": {"runId": run_id}},
        timeout=30,
    ).json()
    assert answer["data"]["terminateRun"]["__typename"] == "TerminateRunSuccess", answer


@pytest.fixture(scope="session")
def settings() -> Settings:
    missing = [name for name in REQUIRED if not os.environ.get(name)]
    if missing:
        pytest.fail(
            f"the local stack's environment is missing {missing}: run the tests with `make test` "
            "(or `set -a; source .stack/env` after `make stack-up`)"
        )
    return Settings()


@pytest.fixture(scope="session")
def admin_engine(settings: Settings) -> Iterator[sa.Engine]:
    """A connection to the server's `postgres` database, for creating throwaway databases."""
    url = sa.make_url(sqlalchemy_url(settings.database_url)).set(database="postgres")
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def s3(settings: Settings) -> S3Resource:
    """The S3 server, at the platform's default bucket."""
    return S3Resource(
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        bucket=settings.s3_bucket,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key.get_secret_value(),
    )


@pytest.fixture(scope="session")
def n8n_data(settings: Settings) -> N8nDataResource:
    """The tenants' n8n tables on the real server, as the platform reads them."""
    return N8nDataResource(admin_url=settings.tenant_admin_url)


@pytest.fixture
def fresh_database_url(settings: Settings, admin_engine: sa.Engine) -> Iterator[str]:
    """The URL of a new, empty database on the real server, dropped afterwards."""
    name = f"rp9_test_{uuid.uuid4().hex[:12]}"
    with admin_engine.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(sqlalchemy_url(settings.database_url)).set(database=name)
    yield url.render_as_string(hide_password=False)
    with admin_engine.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def docker_client(settings: Settings) -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=settings.docker_host, timeout=120)
    client.ping()
    yield client
    client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Served:
    url: str
    log: Path
    # What another process needs to share it (a Dagster's DAGSTER_HOME and storage).
    env: dict[str, str] = field(default_factory=dict)


@contextmanager
def serve(
    command: list[str],
    *,
    url: str,
    ready_path: str,
    log: Path,
    env: dict[str, str],
    timeout_s: float,
) -> Iterator[Served]:
    """Run a server process until the test session is done; fail if it does not come up."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
    try:

        def up() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"{command[0]} exited early: {log.read_text()[-2000:]}")
            return httpx.get(url + ready_path, timeout=2).status_code == 200

        wait_until(up, timeout_s=timeout_s, what=f"{' '.join(command[:2])} at {url}")
        yield Served(url, log)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def enforcement_webhook_port() -> int:
    """Where the session's Dagster sends enforcement warnings (ENFORCEMENT_WEBHOOK_URL): a
    test that checks them listens there (rp9_pipelines_tests/enforcement/receiver.py)."""
    return free_port()


@pytest.fixture(scope="session")
def dagster_webserver(
    settings: Settings, tmp_path_factory: pytest.TempPathFactory, enforcement_webhook_port: int
) -> Iterator[Served]:
    """`dagster dev` (webserver + daemon) on the project's dev instance config, as `make dev`."""
    home = tmp_path_factory.mktemp("dagster_home")
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    port = free_port()
    webhook = f"http://127.0.0.1:{enforcement_webhook_port}/enforcement"
    with dagster_database() as storage:
        yield from _dagster_dev(home, port, storage, webhook)


def _dagster_dev(home: Path, port: int, storage: dict[str, str], webhook: str) -> Iterator[Served]:
    env = {
        **os.environ,
        **storage,
        "DAGSTER_HOME": str(home),
        "ENFORCEMENT_WEBHOOK_URL": webhook,
        # A rollout launches its tenants' runs on this webserver.
        "DAGSTER_GRAPHQL_URL": f"http://127.0.0.1:{port}/graphql",
        # The watch after an upgrade's switch: long enough for the probe and a few looks.
        "UPGRADE_WATCH_S": "10",
    }
    command = [
        str(BIN / "dagster"),
        "dev",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-w",
        str(ROOT / "workspace.yaml"),
    ]
    with serve(
        command,
        url=f"http://127.0.0.1:{port}",
        ready_path="/server_info",
        log=home / "dagster.log",
        env=env,
        timeout_s=180,
    ) as served:
        yield replace(served, env={"DAGSTER_HOME": str(home), **storage})


@pytest.fixture(scope="session")
def api_server(
    settings: Settings, dagster_webserver: Served, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """The FastAPI shim under uvicorn, launching runs on the session's Dagster, as `make dev`."""
    port = free_port()
    command = [
        str(BIN / "uvicorn"),
        "rp9_pipelines.api.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    log = tmp_path_factory.mktemp("api") / "api.log"
    # ORCH_PORT: the URL Traefik's fallback route reaches this API at (tenant_fallback.py).
    env = {
        **os.environ,
        "DAGSTER_GRAPHQL_URL": f"{dagster_webserver.url}/graphql",
        "ORCH_PORT": str(port),
    }
    with serve(
        command,
        url=f"http://127.0.0.1:{port}",
        ready_path="/healthz",
        log=log,
        env=env,
        timeout_s=60,
    ) as served:
        yield served


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that restart the stack's services run last (a stable sort keeps every other
    order): every other test sees a steady stack."""
    items.sort(key=lambda item: item.get_closest_marker("restarts_stack") is not None)
