"""Which runtime runs tenants, by configuration (`TENANT_RUNTIME`): this host's Docker Engine
(the default) or a Docker Swarm. Both are a `DockerRuntimeResource` to everything above them."""

import dagster as dg

from rp9_pipelines.resources.docker_runtime import DockerRuntimeResource
from rp9_pipelines.resources.swarm_runtime import SwarmRuntimeResource
from rp9_pipelines.settings import Settings


def runtime_resource(kind: str) -> DockerRuntimeResource:
    """For the code location: the runtime `kind` names, its addresses read from the
    environment when a run starts (`dg.EnvVar`)."""
    if kind == "swarm":
        return SwarmRuntimeResource(
            docker_host=dg.EnvVar("DOCKER_HOST"),
            manager_host=dg.EnvVar("SWARM_MANAGER_HOST"),
            node_engine=dg.EnvVar("SWARM_NODE_ENGINE"),
            services_ip=dg.EnvVar("SWARM_SERVICES_IP"),
        )
    if kind != "docker":
        raise ValueError(f"TENANT_RUNTIME must be docker or swarm, not {kind!r}")
    return DockerRuntimeResource(docker_host=dg.EnvVar("DOCKER_HOST"))


def runtime_from_settings(settings: Settings) -> DockerRuntimeResource:
    """For the API and tools: the runtime the settings name."""
    if settings.tenant_stack.runtime == "swarm":
        return SwarmRuntimeResource(
            docker_host=settings.docker_host,
            manager_host=settings.swarm_manager_host,
            node_engine=settings.swarm_node_engine,
            services_ip=settings.swarm_services_ip,
        )
    return DockerRuntimeResource(docker_host=settings.docker_host)
