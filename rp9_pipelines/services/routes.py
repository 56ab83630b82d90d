"""Routes that follow a runtime's tasks: Traefik discovers the Docker runtime's containers by
their labels, but not a Swarm task on another node (no routing mesh here, no provider that
reaches a task's overlay address). The control plane writes the same routes as files instead,
to the task's node and published port, and removes them when the task stops serving; and, for
Prometheus, the tasks to scrape (`observability/targets.py`)."""

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rp9_pipelines.domain.routing import ROUTED_PREFIX, routed_files
from rp9_pipelines.observability.targets import swarm_targets
from rp9_pipelines.resources.swarm_runtime import Serving
from rp9_pipelines.resources.traefik_dynamic import TraefikDynamicResource, write_atomically

logger = logging.getLogger("rp9.routes")


class Tasks(Protocol):
    def serving(self) -> list[Serving]: ...


@dataclass(frozen=True)
class Synced:
    written: list[str]
    removed: list[str]
    # Where each serving service's task runs: its node.
    placed: dict[str, str]


def sync(runtime: Tasks, dynamic: TraefikDynamicResource, targets: Path | None = None) -> Synced:
    """Write the route files of what serves now (only those that changed) and remove the rest;
    with `targets`, Prometheus's file of the tasks to scrape, when it changed."""
    served = runtime.serving()
    if targets is not None:
        _write_if_changed(targets, json.dumps(swarm_targets(served), indent=1) + "\n")
    wanted: dict[str, dict[str, Any]] = routed_files([(s.name, s.labels, s.url) for s in served])
    written = []
    for name, config in sorted(wanted.items()):
        if dynamic.read(name) != config:
            dynamic.write(name, config)
            written.append(name)
    removed = [name for name in dynamic.names(ROUTED_PREFIX) if name not in wanted]
    for name in removed:
        dynamic.remove(name)
    return Synced(written, removed, {s.name: s.node for s in served})


def _write_if_changed(path: Path, text: str) -> None:
    """Replace the file atomically, unless it already says `text`."""
    if not (path.is_file() and path.read_text() == text):
        write_atomically(path, text)


async def follow(
    runtime: Tasks,
    dynamic: TraefikDynamicResource,
    placed: Callable[[dict[str, str]], list[str]],
    *,
    targets: Path | None = None,
    interval_s: float = 1.0,
    log: Callable[[str], None] = logger.info,
) -> None:
    """Keep the route files, and the catalog's nodes (`placed`: records them, returns the
    names that moved), in step with the tasks until cancelled: a task that moves (a drained or
    lost node) is served from its new node within `interval_s` of serving there. Swarm sends no
    event when a task moves, hence the polling; a failed round is logged and retried."""
    known: dict[str, str] = {}  # the nodes recorded so far: only changes are written
    while True:
        try:
            synced = await asyncio.to_thread(sync, runtime, dynamic, targets)
            changed = {k: v for k, v in synced.placed.items() if known.get(k) != v}
            moved = await asyncio.to_thread(placed, changed) if changed else []
            known = synced.placed
            if synced.written or synced.removed or moved:
                log(
                    f"routes: wrote {synced.written or 'none'}; removed {synced.removed or 'none'};"
                    f" now on another node: {moved or 'none'}"
                )
        except Exception as error:  # the next round tries again
            logger.warning(f"routes: could not follow the tasks: {error}")
        await asyncio.sleep(interval_s)
