"""The Dagster client never launches one request twice: every launch carries the request's id,
a launch that timed out is looked up by it, and a keyed request looks before launching."""

import json
from typing import Any

import httpx
import pytest

from rp9_pipelines.api.dagster_client import DagsterClient
from rp9_pipelines.api.errors import ApiError
from rp9_pipelines.launches import REQUEST_ID_TAG, Launch

UNSTARTED = {"__typename": "RunStatsSnapshot", "startTime": None}
LAUNCH = Launch("suspend_tenant", {}, {"rp9/tenant": "acme"})


class FakeGraphql:
    """Dagster's GraphQL endpoint: runs by tag, and launches that may time out."""

    def __init__(
        self,
        launch_times_out: bool = False,
        records_timed_out: bool = True,
        failing_launches: int = 0,
        records_failed: bool = False,
        failed_runs_fail: bool = False,
        failed_while_stored: int = 0,
    ) -> None:
        self.runs: list[dict[str, str]] = []  # each run's tags
        self.launch_times_out = launch_times_out
        self.records_timed_out = records_timed_out
        # The first launches answered 500 (its storage's connection dropped), stored or not.
        self.failing_launches = failing_launches
        self.records_failed = records_failed
        # A run stored by a failed launch is marked failed without ever starting.
        self.failed_runs_fail = failed_runs_fail
        # The first launches answered success, their runs failed while being stored.
        self.failed_while_stored = failed_while_stored
        self.calls: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        sent = json.loads(request.content)
        if "launchRun" in sent["query"]:
            self.calls.append("launch")
            tags = sent["variables"]["params"]["executionMetadata"]["tags"]
            if self.failing_launches:
                self.failing_launches -= 1
                if self.records_failed:
                    status = "FAILURE" if self.failed_runs_fail else "QUEUED"
                    self.runs.append({t["key"]: t["value"] for t in tags} | {"_status": status})
                return httpx.Response(
                    500, json={"data": {"launchRun": {"__typename": "PythonError"}}}
                )
            if not self.launch_times_out or self.records_timed_out:
                status = "QUEUED"
                if self.failed_while_stored:
                    self.failed_while_stored -= 1
                    status = "FAILURE"
                self.runs.append({t["key"]: t["value"] for t in tags} | {"_status": status})
            if self.launch_times_out:
                raise httpx.ReadTimeout("no answer in time", request=request)
            run = {"__typename": "LaunchRunSuccess", "run": {"runId": f"run-{len(self.runs)}"}}
            return httpx.Response(200, json={"data": {"launchRun": run}})
        if "runOrError" in sent["query"]:
            self.calls.append("status")
            n = int(sent["variables"]["runId"].removeprefix("run-"))
            tags = self.runs[n - 1]
            run = {
                "__typename": "Run",
                "runId": f"run-{n}",
                "jobName": "suspend_tenant",
                "status": tags.get("_status", "QUEUED"),
                "stats": UNSTARTED,
            }
            return httpx.Response(200, json={"data": {"runOrError": run}})
        self.calls.append("find")
        (tag,) = sent["variables"]["filter"]["tags"]
        found = [
            {"runId": f"run-{n}", "status": tags.get("_status", "QUEUED"), "stats": UNSTARTED}
            for n, tags in enumerate(self.runs, 1)
            if tags.get(tag["key"]) == tag["value"]
        ]
        return httpx.Response(
            200, json={"data": {"runsOrError": {"__typename": "Runs", "results": found[-1:]}}}
        )


def client(graphql: Any, request_id: str | None = None) -> DagsterClient:
    return DagsterClient(
        "http://dagster/graphql",
        request_id=request_id,
        confirm_s=0,
        transport=httpx.MockTransport(graphql),
    )


def test_every_launch_carries_a_request_id() -> None:
    graphql = FakeGraphql()
    assert client(graphql).launch(LAUNCH) == "run-1"
    assert client(graphql).launch(LAUNCH) == "run-2"
    first, second = (run[REQUEST_ID_TAG] for run in graphql.runs)
    assert first != second
    assert graphql.runs[0]["rp9/tenant"] == "acme"
    assert graphql.calls == ["launch", "status", "launch", "status"]


def test_a_keyed_request_finds_the_run_an_earlier_try_launched() -> None:
    graphql = FakeGraphql()
    assert client(graphql, "req-1").launch(LAUNCH) == "run-1"
    assert client(graphql, "req-1").launch(LAUNCH) == "run-1"
    assert client(graphql, "req-2").launch(LAUNCH) == "run-2"
    assert graphql.calls == [
        "find",
        "launch",
        "status",
        "find",
        "status",
        "find",
        "launch",
        "status",
    ]


def test_a_launch_that_timed_out_is_found_not_made_again() -> None:
    graphql = FakeGraphql(launch_times_out=True)
    assert client(graphql).launch(LAUNCH) == "run-1"
    assert graphql.calls == ["launch", "find", "status"]
    assert len(graphql.runs) == 1


def test_a_launch_that_timed_out_and_left_no_run_is_503() -> None:
    graphql = FakeGraphql(launch_times_out=True, records_timed_out=False)
    with pytest.raises(ApiError) as error:
        client(graphql, "req-1").launch(LAUNCH)
    assert (error.value.status_code, error.value.code) == (503, "dagster_unavailable")
    assert "retry with the same Idempotency-Key" in error.value.message
    assert graphql.calls == ["find", "launch", "find"]


def test_an_unreachable_dagster_is_503() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    with pytest.raises(ApiError) as error:
        client(refuse).launch(LAUNCH)
    assert (error.value.status_code, error.value.code) == (503, "dagster_unavailable")


def test_a_launch_dagster_failed_is_tried_again_once_nothing_was_stored() -> None:
    # After Postgres restarts, Dagster's webserver fails a request or two on its dead pooled
    # connection, then reconnects.
    graphql = FakeGraphql(failing_launches=2)
    assert client(graphql).launch(LAUNCH) == "run-1"
    assert graphql.calls == ["launch", "find", "launch", "find", "launch", "status"]
    assert len(graphql.runs) == 1


def test_a_failed_launch_that_was_stored_after_all_is_not_made_again() -> None:
    graphql = FakeGraphql(failing_launches=1, records_failed=True)
    assert client(graphql).launch(LAUNCH) == "run-1"
    assert graphql.calls == ["launch", "find", "status"]
    assert len(graphql.runs) == 1


def test_dagster_failing_every_try_is_a_503_and_launches_nothing() -> None:
    graphql = FakeGraphql(failing_launches=5)
    with pytest.raises(ApiError) as refused:
        client(graphql).launch(LAUNCH)
    assert refused.value.status_code == 503
    assert graphql.calls.count("launch") == 3
    assert not graphql.runs


def test_a_run_failed_while_its_launch_was_stored_is_launched_again() -> None:
    graphql = FakeGraphql(failing_launches=1, records_failed=True, failed_runs_fail=True)
    assert client(graphql).launch(LAUNCH) == "run-2"
    assert graphql.calls == ["launch", "find", "launch", "status"]


def test_a_launch_dagster_failed_while_storing_it_is_made_again() -> None:
    # Dagster answers success, but the run's enqueue event failed: the run is FAILURE and
    # never started. Nothing ran; another run is launched.
    graphql = FakeGraphql(failed_while_stored=1)
    assert client(graphql).launch(LAUNCH) == "run-2"
    assert graphql.calls == ["launch", "status", "launch", "status"]
