"""The loop that keeps route files and the catalog's nodes in step with a Swarm's tasks
(`services/routes.follow`), against a hand-written runtime whose tasks the test moves: files
follow the tasks, only changed nodes reach the catalog, a failing round is retried; and
Prometheus's targets follow them too."""

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from rp9_pipelines.domain.routing import ROUTED_PREFIX, traefik_labels
from rp9_pipelines.resources.swarm_runtime import Serving
from rp9_pipelines.resources.traefik_dynamic import TraefikDynamicResource
from rp9_pipelines.services import routes

METRICS = {"io.rp9.managed": "true", "io.rp9.tenant": "a", "io.rp9.metrics": "true"}
LABELS = {
    **traefik_labels(router="t-a", hosts=["a.localhost"], port=5678, entrypoint="web"),
    **METRICS,
    "io.rp9.role": "main",
}
WORKER = {**METRICS, "io.rp9.role": "worker"}


class Tasks:
    """What serves, as the test says; `fail` makes the next rounds raise."""

    def __init__(self) -> None:
        self.now: list[Serving] = []
        self.fail = False

    def serving(self) -> list[Serving]:
        if self.fail:
            raise ConnectionError("the manager does not answer")
        return list(self.now)


def test_files_and_nodes_follow_the_tasks_and_a_failed_round_is_retried(tmp_path: Path) -> None:
    dynamic = TraefikDynamicResource(directory=str(tmp_path))
    tasks = Tasks()
    recorded: list[dict[str, str]] = []
    logged: list[str] = []

    def placed(nodes: dict[str, str]) -> list[str]:
        recorded.append(nodes)
        return sorted(nodes)

    def servers() -> list[str] | None:
        config = dynamic.read(f"{ROUTED_PREFIX}t-a")
        if config is None:
            return None
        return [s["url"] for s in config["http"]["services"]["t-a"]["loadBalancer"]["servers"]]

    targets = tmp_path / "targets" / "n8n-swarm.json"

    def scraped() -> dict[str, str]:
        """Prometheus's targets now: the container at each address."""
        if not targets.is_file():
            return {}
        groups = json.loads(targets.read_text())
        return {g["targets"][0]: g["labels"]["container"] for g in groups}

    async def scenario() -> None:
        loop = asyncio.create_task(
            routes.follow(
                tasks, dynamic, placed, targets=targets, interval_s=0.01, log=logged.append
            )
        )

        async def until(condition: Callable[[], bool], what: str) -> None:
            for _ in range(500):
                if condition():
                    return
                await asyncio.sleep(0.01)
            raise AssertionError(what)

        tasks.now = [
            Serving("rp9-a-blue-main", LABELS, "http://10.96.0.11:40000", "w1"),
            Serving("rp9-a-blue-worker-1", WORKER, "http://10.96.0.11:40001", "w1"),
        ]
        await until(lambda: servers() == ["http://10.96.0.11:40000"], "the main routed on w1")
        await until(lambda: len(recorded) == 1, "the nodes recorded")
        await asyncio.sleep(0.05)  # rounds with nothing new write nothing to the catalog
        assert recorded == [{"rp9-a-blue-main": "w1", "rp9-a-blue-worker-1": "w1"}]
        assert scraped() == {
            "10.96.0.11:40000": "rp9-a-blue-main",
            "10.96.0.11:40001": "rp9-a-blue-worker-1",
        }

        tasks.fail = True  # the manager is gone for a while: the routes stay as they were
        await asyncio.sleep(0.05)
        assert servers() == ["http://10.96.0.11:40000"]
        tasks.fail = False
        tasks.now = [
            Serving("rp9-a-blue-main", LABELS, "http://10.96.0.12:40005", "w2"),
            Serving("rp9-a-blue-worker-1", WORKER, "http://10.96.0.11:40001", "w1"),
        ]
        await until(lambda: servers() == ["http://10.96.0.12:40005"], "the main routed on w2")
        await until(lambda: len(recorded) == 2, "the move recorded")
        assert recorded[1] == {"rp9-a-blue-main": "w2"}
        await until(lambda: "10.96.0.12:40005" in scraped(), "the main scraped on w2")
        assert "10.96.0.11:40000" not in scraped()

        tasks.now = []  # stopped: no route (the fallback answers)
        await until(lambda: servers() is None, "the route removed")
        await until(lambda: scraped() == {}, "no target left")
        loop.cancel()

    asyncio.run(scenario())
    assert any("now on another node: ['rp9-a-blue-main']" in line for line in logged), logged
