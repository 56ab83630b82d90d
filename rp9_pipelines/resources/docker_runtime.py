import concurrent.futures
import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import dagster as dg
import docker
from docker.errors import APIError, NotFound
from docker.models.containers import Container
from docker.models.networks import Network
from docker.types import LogConfig
from pydantic import PrivateAttr

from rp9_pipelines.domain.stack import (
    CAP_DROP,
    GRACEFUL_SHUTDOWN_S,
    HEALTHCHECK,
    HEALTHCHECK_RETRIES,
    HEALTHCHECK_TIMEOUT_S,
    LABEL_CONFIG,
    LABEL_MANAGED,
    LABEL_ROLE,
    LABEL_TENANT,
    LOG_DRIVER,
    LOG_OPTIONS,
    N8N_PORT,
    SECRETS_MOUNT,
    SECURITY_OPT,
    ContainerSpec,
    Observed,
)
from rp9_pipelines.resources.health import Health, probe

NANO = 1_000_000_000
MIB = 1024 * 1024


@dataclass(frozen=True)
class ContainerState:
    name: str
    role: str
    id: str
    status: str
    health: str | None
    ip: str | None
    # How often Docker restarted it (its restart policy): n8n exits when its boot fails.
    restarts: int = 0
    # Where the host reaches its n8n (its bridge address here; a node's published port on Swarm).
    url: str | None = None
    # The Swarm node that runs it (None: this engine).
    node: str | None = None


@dataclass(frozen=True)
class ContainerStats:
    name: str
    role: str
    cpu_percent: float
    memory_bytes: int
    memory_limit_bytes: int


class DockerRuntimeResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The Docker Engine API that runs tenants' stacks on this one engine
    (`SwarmRuntimeResource`, beside it, runs them on a Swarm: `runtime_resource` picks one)."""

    docker_host: str = "unix:///var/run/docker.sock"
    timeout_s: int = 120
    pids_limit: int = 1024

    # The Traefik provider that routes tenants' mains: its docker provider reads their labels.
    route_provider: ClassVar[str] = "docker"

    _client: docker.DockerClient | None = PrivateAttr(default=None)
    _host_cpus: int | None = PrivateAttr(default=None)

    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.docker_host, timeout=self.timeout_s)
        return self._client

    def engines(self) -> list[docker.DockerClient]:
        """The engines whose containers are tenants' (for what reads every container at once:
        usage samples, the workers' command lines): this one."""
        return [self.client()]

    def local(self) -> "DockerRuntimeResource":
        """The platform's own engine, for what must run beside the control plane whatever
        runs tenants (a platform DR drill's scratch): this one."""
        return self

    def ping(self) -> Health:
        def check() -> str:
            client = self.client()
            return f"Docker Engine {client.version()['Version']}"

        return probe("docker", check)

    def ensure_network(self, name: str, tenant: str) -> None:
        """A bridge network of the tenant's own: containers of other tenants are not on it."""
        client = self.client()
        if self._networks(client, name):
            return
        client.networks.create(
            name, driver="bridge", labels={LABEL_MANAGED: "true", LABEL_TENANT: tenant}
        )

    def remove_network(self, name: str) -> None:
        client = self.client()
        for network in self._networks(client, name):
            network.remove()

    @staticmethod
    def _networks(client: docker.DockerClient, name: str) -> list[Network]:
        """Networks named exactly `name`: the engine's name filter matches substrings, and
        tenant `ab`'s network name is a prefix of tenant `abc`'s."""
        return [n for n in client.networks.list(names=[name]) if n.name == name]

    def _tenant_containers(self, client: docker.DockerClient, tenant: str) -> list[Container]:
        filters = {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_TENANT}={tenant}"]}
        # A container removed between the listing and its inspection (a scale-down's drain,
        # another run) is not there: not an error.
        return list(client.containers.list(all=True, filters=filters, ignore_removed=True))

    def observe(self, tenant: str) -> list[Observed]:
        client = self.client()
        return [
            Observed(
                name=c.name or "",
                role=c.labels.get(LABEL_ROLE, ""),
                config_hash=c.labels.get(LABEL_CONFIG, ""),
                running=c.status == "running",
                cpu=c.attrs["HostConfig"]["NanoCpus"] / NANO,
                memory_mb=c.attrs["HostConfig"]["Memory"] // MIB,
            )
            for c in self._tenant_containers(client, tenant)
        ]

    def states(self, tenant: str) -> list[ContainerState]:
        client = self.client()
        return [_state(c) for c in self._tenant_containers(client, tenant)]

    def state(self, name: str) -> ContainerState | None:
        client = self.client()
        try:
            return _state(client.containers.get(name))
        except NotFound:
            return None

    def host_cpus(self) -> int:
        if self._host_cpus is None:
            self._host_cpus = int(self.client().info()["NCPU"])
        return self._host_cpus

    def create(
        self,
        spec: ContainerSpec,
        image: str,
        secrets_dir: Path,
        *,
        cpu: float | None = None,
        cpu_shares: int | None = None,
    ) -> str:
        """Create and start one container; an existing one of the same name is replaced. `cpu`
        overrides the spec's limit (a startup boost, lowered again by `update_limits`);
        `cpu_shares` its weight against the host's other containers (1024 by default)."""
        client = self.client()
        self._remove(client, spec.name, graceful=False)
        interval_ns = int(spec.healthcheck_interval_s * NANO)
        container = client.containers.run(
            image,
            command=spec.command or None,
            name=spec.name,
            hostname=spec.name,
            detach=True,
            environment=spec.env,
            labels={**spec.labels, LABEL_CONFIG: spec.config_hash},
            network=spec.network,
            nano_cpus=int((spec.cpu if cpu is None else cpu) * NANO),
            cpu_shares=cpu_shares,
            mem_limit=spec.memory_mb * MIB,
            memswap_limit=spec.memory_mb * MIB,
            pids_limit=self.pids_limit,
            cap_drop=list(CAP_DROP),
            security_opt=list(SECURITY_OPT),
            log_config=LogConfig(type=LOG_DRIVER, config=dict(LOG_OPTIONS)),
            restart_policy={"Name": "unless-stopped"},
            stop_signal="SIGTERM",
            extra_hosts={"host.docker.internal": "host-gateway"},
            volumes={str(secrets_dir): {"bind": SECRETS_MOUNT, "mode": "ro"}},
            healthcheck={
                "test": HEALTHCHECK,
                "interval": interval_ns,
                "timeout": HEALTHCHECK_TIMEOUT_S * NANO,
                "retries": HEALTHCHECK_RETRIES,
                "start_period": 180 * NANO,
            },
        )
        return str(container.id)

    def update_limits(
        self,
        name: str,
        cpu: float,
        memory_mb: int,
        *,
        cpu_shares: int | None = None,
        temporary: bool = False,
    ) -> None:
        """New limits for the container, in place. `temporary`: a startup boost (or weight)
        that a later call with the plan's limits undoes; the same here, in place either way."""
        update_in_place(
            self.client().api, name, cpu=cpu, memory_mb=memory_mb, cpu_shares=cpu_shares
        )

    def start(self, name: str) -> None:
        client = self.client()
        client.containers.get(name).start()

    def stop(self, name: str, timeout_s: int | None = None) -> None:
        """Graceful stop: SIGTERM, then n8n finishes its running executions before it exits
        (killed after `timeout_s`, by default n8n's own graceful shutdown timeout and then
        some)."""
        timeout = GRACEFUL_SHUTDOWN_S + 10 if timeout_s is None else timeout_s
        with contextlib.suppress(NotFound):
            self.client().containers.get(name).stop(timeout=timeout)

    def remove(self, name: str, *, graceful: bool = True) -> None:
        client = self.client()
        self._remove(client, name, graceful=graceful)

    def _remove(self, client: docker.DockerClient, name: str, *, graceful: bool) -> None:
        try:
            container = client.containers.get(name)
        except NotFound:
            return
        if graceful and container.status == "running":
            container.stop(timeout=GRACEFUL_SHUTDOWN_S + 10)
        try:
            container.remove(force=True)
        except NotFound:
            pass
        except APIError as error:
            if "already in progress" not in str(error):
                raise

    def logs(self, name: str, tail: int | str = 200, *, timestamps: bool = False) -> str:
        client = self.client()
        try:
            raw: bytes = client.containers.get(name).logs(tail=tail, timestamps=timestamps)
        except NotFound:
            return ""
        return raw.decode(errors="replace")

    def stats(self, tenant: str) -> list[ContainerStats]:
        """CPU and memory of the tenant's running containers, sampled in parallel."""
        client = self.client()
        running = [c for c in self._tenant_containers(client, tenant) if c.status == "running"]
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(_stats, running))

    def image_exists(self, image: str) -> bool:
        try:
            self.client().images.get(image)
        except NotFound:
            return False
        return True

    def exec(self, name: str, command: list[str]) -> tuple[int, str, str]:
        """Run `command` in a running container as its own user: exit code, stdout, stderr."""
        return exec_in(self.client().containers.get(name), command)


def update_in_place(
    api: Any, container: str, *, cpu: float, memory_mb: int | None, cpu_shares: int | None
) -> None:
    """A running (or stopped) container's CPU, memory and weight, changed by its engine without
    a restart. The SDK's update() knows only CPU period/quota, which the engine refuses beside
    the NanoCpus the container was created with: the engine's own fields are sent instead."""
    limits: dict[str, int] = {"NanoCpus": int(cpu * NANO)}
    if memory_mb is not None:
        limits |= {"Memory": memory_mb * MIB, "MemorySwap": memory_mb * MIB}
    if cpu_shares is not None:
        limits["CpuShares"] = cpu_shares
    response = api._post_json(api._url("/containers/{0}/update", container), data=limits)
    api._raise_for_status(response)


def exec_in(container: Container, command: list[str]) -> tuple[int, str, str]:
    """Run `command` in a running container as its own user: exit code, stdout, stderr."""
    code, (out, err) = container.exec_run(command, demux=True)
    return (
        int(code),
        (out or b"").decode(errors="replace"),
        (err or b"").decode(errors="replace"),
    )


def _state(container: Container) -> ContainerState:
    attrs: dict[str, Any] = container.attrs
    health = (attrs.get("State") or {}).get("Health") or {}
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    ip = next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), None)
    return ContainerState(
        name=container.name or "",
        role=container.labels.get(LABEL_ROLE, ""),
        id=str(container.id),
        status=container.status,
        health=health.get("Status"),
        ip=ip,
        restarts=int(attrs.get("RestartCount") or 0),
        url=f"http://{ip}:{N8N_PORT}" if ip else None,
    )


def _stats(container: Container) -> ContainerStats:
    raw: dict[str, Any] = container.stats(stream=False)
    cpu = raw.get("cpu_stats", {})
    pre = raw.get("precpu_stats", {})
    cpu_delta = cpu.get("cpu_usage", {}).get("total_usage", 0) - pre.get("cpu_usage", {}).get(
        "total_usage", 0
    )
    system_delta = cpu.get("system_cpu_usage", 0) - pre.get("system_cpu_usage", 0)
    cpus = cpu.get("online_cpus") or 1
    percent = (cpu_delta / system_delta) * cpus * 100 if system_delta > 0 else 0.0
    memory = raw.get("memory_stats", {})
    usage = memory.get("usage", 0) - (memory.get("stats", {}) or {}).get("cache", 0)
    return ContainerStats(
        name=container.name or "",
        role=container.labels.get(LABEL_ROLE, ""),
        cpu_percent=round(percent, 2),
        memory_bytes=max(usage, 0),
        memory_limit_bytes=memory.get("limit", 0),
    )
