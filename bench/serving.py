"""The control plane's API for a benchmark, as `make dev` runs it, beside the benchmark's own
Dagster: served on a free port, its log beside Dagster's."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rp9_pipelines_tests.conftest import BIN, Served, free_port, serve


@contextmanager
def api_for(dagster_url: str, log_dir: Path, env: dict[str, str] | None = None) -> Iterator[Served]:
    port = free_port()
    command = [
        str(BIN / "uvicorn"),
        "rp9_pipelines.api.main:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    with serve(
        command,
        url=f"http://127.0.0.1:{port}",
        ready_path="/healthz",
        log=log_dir / "api.log",
        # ORCH_PORT: the address Traefik's fallback route reaches this API at.
        env={
            **(env or os.environ),
            "DAGSTER_GRAPHQL_URL": f"{dagster_url}/graphql",
            "ORCH_PORT": str(port),
        },
        timeout_s=60,
    ) as served:
        yield served
