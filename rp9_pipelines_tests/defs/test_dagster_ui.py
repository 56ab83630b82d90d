"""`make dev`'s Dagster: the webserver and daemon come up and load the code location cleanly."""

import httpx
import pytest

from rp9_pipelines_tests.conftest import Served
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack

LOCATIONS = """
{ workspaceOrError { __typename ... on Workspace { locationEntries {
    name loadStatus
    locationOrLoadError { __typename ... on PythonError { message } }
} } } }
"""

DAEMON = "{ instance { daemonHealth { allDaemonStatuses { daemonType healthy required } } } }"


def graphql(served: Served, query: str) -> dict:  # type: ignore[type-arg]
    response = httpx.post(f"{served.url}/graphql", json={"query": query}, timeout=30)
    response.raise_for_status()
    return response.json()["data"]  # type: ignore[no-any-return]


def test_code_location_loads_without_errors(dagster_webserver: Served) -> None:
    def loaded() -> list[dict] | None:  # type: ignore[type-arg]
        entries = graphql(dagster_webserver, LOCATIONS)["workspaceOrError"]["locationEntries"]
        return entries if all(e["loadStatus"] == "LOADED" for e in entries) else None

    entries = wait_until(loaded, timeout_s=120, what="the code location to load")
    assert [e["name"] for e in entries] == ["rp9_pipelines"]
    assert entries[0]["locationOrLoadError"]["__typename"] == "RepositoryLocation", entries


def test_daemon_is_healthy(dagster_webserver: Served) -> None:
    def healthy() -> bool:
        statuses = graphql(dagster_webserver, DAEMON)["instance"]["daemonHealth"]
        return all(s["healthy"] for s in statuses["allDaemonStatuses"] if s["required"])

    wait_until(healthy, timeout_s=120, what="required Dagster daemons to report healthy")
