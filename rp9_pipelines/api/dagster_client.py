"""Launches and reads runs through the running Dagster webserver's GraphQL API.

Every launch is tagged with its request's id (`launches.REQUEST_ID_TAG`), so a launch is never
made twice for one request: a launch that timed out (Dagster may have made the run and been slow
to say so) is looked up by that tag before the request fails, and a keyed request (whose id is
the same on every retry, `api/idempotency.py`) looks first, in case an earlier try launched it.
"""

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from rp9_pipelines.api.errors import ApiError
from rp9_pipelines.launches import REQUEST_ID_TAG, Launch
from rp9_pipelines.observability.api_metrics import counted_launch

LOCATION = "rp9_pipelines"
REPOSITORY = "__repository__"

LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}
"""

RUNS_BY_TAG = """
query RunsByTag($filter: RunsFilter) {
  runsOrError(filter: $filter, limit: 1) {
    __typename
    ... on Runs { results { runId status stats { ... on RunStatsSnapshot { startTime } } } }
    ... on Error { message }
  }
}
"""

STARTED = """
query Started($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status stats { ... on RunStatsSnapshot { startTime } } }
  }
}
"""

RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId jobName status tags { key value } startTime endTime }
    ... on Error { message }
  }
}
"""


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    job: str
    status: str
    tags: dict[str, str]
    start_time: float | None
    end_time: float | None


# Dagster's own failures (5xx) are tried this many times in all, waiting 0.5 s, 1 s between.
TRANSIENT_TRIES = 3
TRANSIENT_BACKOFF_S = 0.5


def _failed_unstarted(run: dict[str, Any]) -> bool:
    """A run Dagster failed before it ever started (its RUN_START never came): it could not
    finish storing the launch (its database went away mid-request). Nothing ran, so the
    request may launch again. (A run's `startTime` is its end time then; its stats' is not.)"""
    return run["status"] == "FAILURE" and (run.get("stats") or {}).get("startTime") is None


def _success(run_id: str) -> dict[str, Any]:
    return {"__typename": "LaunchRunSuccess", "run": {"runId": run_id}}


class DagsterClient:
    def __init__(
        self,
        graphql_url: str,
        timeout_s: float = 30.0,
        request_id: str | None = None,
        confirm_s: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.graphql_url = graphql_url
        self.timeout_s = timeout_s
        # A keyed request's id (the same on its retries); None: each launch gets a fresh one.
        self.request_id = request_id
        # How long a timed-out launch is looked for before the request fails.
        self.confirm_s = confirm_s
        self.transport = transport

    def _send(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        with httpx.Client(transport=self.transport, timeout=self.timeout_s) as client:
            response = client.post(self.graphql_url, json={"query": query, "variables": variables})
            response.raise_for_status()
        body: dict[str, Any] = response.json()
        if body.get("errors"):
            raise ApiError(502, "dagster_error", str(body["errors"][0].get("message")))
        data: dict[str, Any] = body["data"]
        return data

    def _query(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        """A read, tried again on Dagster's own failures (see `_send_retrying`)."""
        try:
            return self._send_retrying(query, variables)
        except httpx.HTTPError as error:
            raise ApiError(
                503, "dagster_unavailable", f"Dagster is unreachable: {error}"
            ) from error

    def _send_retrying(
        self,
        query: str,
        variables: dict[str, Any],
        before_retry: Callable[[], dict[str, Any] | None] | None = None,
    ) -> dict[str, Any]:
        """`_send`, tried again when Dagster answers 5xx: after its Postgres restarted, the
        webserver's pooled connection fails the first requests ("server closed the connection
        unexpectedly") and the pool then reconnects. `before_retry()` returning a value ends
        the tries with it (a launch that was stored after all)."""
        for attempt in range(TRANSIENT_TRIES):
            try:
                return self._send(query, variables)
            except httpx.HTTPStatusError as error:
                if error.response.status_code < 500 or attempt == TRANSIENT_TRIES - 1:
                    raise
            time.sleep(TRANSIENT_BACKOFF_S * 2**attempt)
            if before_retry is not None and (found := before_retry()) is not None:
                return dict(found)
        raise AssertionError("unreachable")

    def find_launch(self, request_id: str) -> str | None:
        """The id of the run a request launched, if there is one."""
        tag = {"key": REQUEST_ID_TAG, "value": request_id}
        result = self._query(RUNS_BY_TAG, {"filter": {"tags": [tag]}})["runsOrError"]
        if result["__typename"] != "Runs" or not result["results"]:
            return None
        (run,) = result["results"]
        return None if _failed_unstarted(run) else str(run["runId"])

    def _confirm(self, request_id: str) -> str | None:
        deadline = time.monotonic() + self.confirm_s
        while True:
            run_id = self.find_launch(request_id)
            if run_id is not None or time.monotonic() >= deadline:
                return run_id
            time.sleep(1.0)

    def launch(self, launch: Launch) -> str:
        """The id of the run `launch` made (or an earlier try of this request made)."""
        return counted_launch(launch.job, lambda: self._launch_stored(launch))

    def _launch_stored(self, launch: Launch) -> str:
        """`_launch`, again when Dagster answered success but failed the run while storing it
        (after its Postgres restarted, the enqueue event fails on a dead pooled connection and
        the run is marked failed before it ever starts): nothing ran, so a new run is safe."""
        for _ in range(TRANSIENT_TRIES):
            run_id = self._launch(launch)
            run = self._query(STARTED, {"runId": run_id})["runOrError"]
            if run["__typename"] != "Run" or not _failed_unstarted(run):
                return run_id
            time.sleep(TRANSIENT_BACKOFF_S)
        raise ApiError(
            503,
            "dagster_unavailable",
            f"Dagster failed {TRANSIENT_TRIES} launches of {launch.job} while storing them "
            f"(the last: run {run_id}); retry with the same Idempotency-Key",
        )

    def _launch(self, launch: Launch) -> str:
        if self.request_id is not None:
            earlier = self.find_launch(self.request_id)
            if earlier is not None:
                return earlier
        request_id = self.request_id or uuid.uuid4().hex
        tags = launch.tags | {REQUEST_ID_TAG: request_id}
        params = {
            "selector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": REPOSITORY,
                "jobName": launch.job,
            },
            "runConfigData": launch.run_config,
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }

        def stored_after_all() -> dict[str, Any] | None:
            run_id = self.find_launch(request_id)
            return None if run_id is None else {"launchRun": _success(run_id)}

        try:
            result = self._send_retrying(LAUNCH, {"params": params}, stored_after_all)["launchRun"]
        except httpx.TimeoutException as error:
            # Sent but not answered in time (a connect timeout never reached Dagster): the run
            # may exist; look for it rather than fail a request that did launch.
            run_id = None if isinstance(error, httpx.ConnectTimeout) else self._confirm(request_id)
            if run_id is not None:
                return run_id
            raise ApiError(
                503,
                "dagster_unavailable",
                f"launching {launch.job} timed out and no run carries request id {request_id}; "
                "retry with the same Idempotency-Key",
            ) from error
        except httpx.HTTPError as error:
            raise ApiError(
                503, "dagster_unavailable", f"Dagster is unreachable: {error}"
            ) from error
        if result["__typename"] != "LaunchRunSuccess":
            detail = result.get("message") or result.get("errors") or result["__typename"]
            raise ApiError(
                502, "launch_failed", f"Dagster refused to launch {launch.job}: {detail}"
            )
        return str(result["run"]["runId"])

    def run(self, run_id: str) -> RunInfo | None:
        result = self._query(RUN, {"runId": run_id})["runOrError"]
        if result["__typename"] != "Run":
            return None
        return RunInfo(
            run_id=result["runId"],
            job=result["jobName"],
            status=result["status"],
            tags={t["key"]: t["value"] for t in result["tags"]},
            start_time=result.get("startTime"),
            end_time=result.get("endTime"),
        )
