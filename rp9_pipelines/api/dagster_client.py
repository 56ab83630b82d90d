"""Launches and reads runs through the running Dagster webserver's GraphQL API."""

from dataclasses import dataclass
from typing import Any

import httpx

from rp9_pipelines.api.errors import ApiError
from rp9_pipelines.launches import Launch

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


class DagsterClient:
    def __init__(self, graphql_url: str, timeout_s: float = 30.0) -> None:
        self.graphql_url = graphql_url
        self.timeout_s = timeout_s

    def _query(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        try:
            response = httpx.post(
                self.graphql_url,
                json={"query": query, "variables": variables},
                timeout=self.timeout_s,
            )
            response.raise_for_status()
        except httpx.HTTPError as error:
            raise ApiError(
                503, "dagster_unavailable", f"Dagster is unreachable: {error}"
            ) from error
        body: dict[str, Any] = response.json()
        if body.get("errors"):
            raise ApiError(502, "dagster_error", str(body["errors"][0].get("message")))
        data: dict[str, Any] = body["data"]
        return data

    def launch(self, launch: Launch) -> str:
        params = {
            "selector": {
                "repositoryLocationName": LOCATION,
                "repositoryName": REPOSITORY,
                "jobName": launch.job,
            },
            "runConfigData": launch.run_config,
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in launch.tags.items()]},
        }
        result = self._query(LAUNCH, {"params": params})["launchRun"]
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
