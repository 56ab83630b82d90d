"""Routes that follow a runtime's tasks: Traefik discovers the Docker runtime's containers by
their labels, but not a Swarm task on another node (no routing mesh here, no provider that
reaches a task's overlay address). The control plane writes the same routes as files instead,
to the task's node and published port, and removes them when the task stops serving."""

from typing import Any, Protocol

from rp9_pipelines.domain.routing import ROUTED_PREFIX, routed_files
from rp9_pipelines.resources.traefik_dynamic import TraefikDynamicResource


class Serving(Protocol):
    def serving(self) -> list[tuple[str, dict[str, str], str]]: ...


def sync(runtime: Serving, dynamic: TraefikDynamicResource) -> tuple[list[str], list[str]]:
    """Write the route files of what serves now (only those that changed) and remove the rest;
    the names written and removed."""
    wanted: dict[str, dict[str, Any]] = routed_files(runtime.serving())
    written = []
    for name, config in sorted(wanted.items()):
        if dynamic.read(name) != config:
            dynamic.write(name, config)
            written.append(name)
    removed = [name for name in dynamic.names(ROUTED_PREFIX) if name not in wanted]
    for name in removed:
        dynamic.remove(name)
    return written, removed
