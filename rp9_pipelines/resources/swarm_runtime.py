"""The tenant runtime on Docker Swarm: the same members as `DockerRuntimeResource`, each of
the Docker runtime's containers a Swarm service of the same name with 0 or 1 replica.

One service per container keeps everything above the runtime as it is: the names, the
reconciliation, which worker drains (the control plane picks it, not Swarm), the instance rows.
A service's update is stop-first and a drained node's task stops before its replacement starts
(swarmkit's restart supervisor), so a main is never running twice.

This machine's kernel has no IPVS, so there is no routing mesh and no virtual IP: services
resolve by DNS round robin (`dnsrr`) and publish n8n's port on the node that runs the task
(`mode: host`, an ephemeral port). A task's address, for the host's Traefik, Prometheus and the
cutovers' readiness checks, is that node's address and port (`ContainerState.url`).

Secrets: each file of the tenant's secrets directory becomes a Swarm secret (content-addressed:
Swarm's secrets are immutable), mounted at the same `/run/secrets/<file>` with the same owner and
mode as the Docker runtime's bind mount, so n8n's `<VAR>_FILE` environment is unchanged.

What runs where is read from the manager; what only a node's engine knows (a container's logs,
stats and exec) is asked of that node's engine (`node_engine`, a URL with `{node}`: its
hostname).
"""

import concurrent.futures
import contextlib
import hashlib
import time
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import docker
from docker.errors import APIError, NotFound
from docker.models.services import Service
from docker.types import (
    ContainerSpec as SwarmContainerSpec,
)
from docker.types import (
    EndpointSpec,
    Healthcheck,
    Placement,
    Resources,
    RestartPolicy,
    SecretReference,
    ServiceMode,
    TaskTemplate,
    UpdateConfig,
)
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
    ContainerSpec,
    Observed,
)
from rp9_pipelines.resources.docker_runtime import (
    MIB,
    NANO,
    ContainerState,
    ContainerStats,
    DockerRuntimeResource,
    _stats,
    exec_in,
    update_in_place,
)
from rp9_pipelines.resources.health import Health, probe

LABEL_SECRET_FILE = "io.rp9.secret-file"  # noqa: S105 (a label's name)
# Whose secret it is: the tenant of the services that use it, or the one service that does
# (a drill's sandbox, the template builder: no tenant label).
LABEL_SECRET_OWNER = "io.rp9.secret-owner"  # noqa: S105
# Nodes that run tenants carry this label (a manager that should not, does not).
TENANT_NODES = "node.labels.rp9.tenants==true"
N8N_UID = "1000"
# Task states before a task runs: not yet on a node (`pending` also while no node fits its
# constraints), then on one; Swarm reports `running` only once its health check passed.
UNPLACED = {"new", "pending", "assigned"}
BOOTING = {"accepted", "preparing", "ready", "starting"}
ENDED = {"complete", "shutdown", "failed", "rejected", "orphaned", "remove"}
WAIT_S = 120.0
# How long a boost waits for the container of a task just created or started.
BOOST_WAIT_S = 30.0


class Serving(NamedTuple):
    """A service whose task serves: where (its node) and at which URL."""

    name: str
    labels: dict[str, str]
    url: str
    node: str


def secret_name(tenant: str, file: str, content: bytes) -> str:
    """A Swarm secret's name for one file of a tenant's secrets: content-addressed (a changed
    value is a new secret), within Swarm's 64 characters, naming no value."""
    digest = hashlib.sha256(b"\0".join([tenant.encode(), file.encode(), content])).hexdigest()
    return f"rp9-{digest[:32]}"


def placement(region: str | None) -> list[str]:
    """The constraints of a tenant's service: a node that runs tenants, of its region."""
    return [TENANT_NODES, *([f"node.labels.region=={region}"] if region else [])]


def task_state(task: dict[str, Any] | None, replicas: int) -> tuple[str, str | None]:
    """The Docker runtime's (status, health) for a service's newest task (`newest_task`)."""
    if task is None:
        return ("exited", None) if replicas == 0 else ("created", "starting")
    state = task["Status"]["State"]
    desired = task.get("DesiredState")
    if desired == "running":
        if state == "running":
            return "running", "healthy"
        if state in UNPLACED:
            return "created", "starting"
        if state in BOOTING:
            return "running", "starting"
    elif replicas:
        # No task wants to run yet the service wants one: Swarm is replacing it (an update
        # stopping the old task first, a restart after a failure), as Docker's `restarting`.
        return "restarting", None
    if state in ("failed", "rejected"):
        return "dead", None
    return "exited", None


def newest_task(tasks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The task that says what the service is doing: the newest one Swarm wants running,
    else the newest at all."""
    ordered = sorted(tasks, key=lambda t: t["Version"]["Index"])
    wanted = [t for t in ordered if t.get("DesiredState") == "running"]
    chosen = wanted or ordered
    return chosen[-1] if chosen else None


def published_port(task: dict[str, Any]) -> int | None:
    for port in (task.get("Status", {}).get("PortStatus") or {}).get("Ports") or []:
        if port.get("TargetPort") == N8N_PORT and port.get("PublishedPort"):
            return int(port["PublishedPort"])
    return None


class SwarmRuntimeResource(DockerRuntimeResource):
    """Docker Swarm (its manager's API) running tenants' stacks as services. `docker_host`
    stays the platform's own engine (`local`)."""

    manager_host: str
    # A node's engine, by its hostname: unix:///var/lib/rp9/swarm/{node}/run/docker.sock here,
    # tcp://{node}:2376 (TLS) across machines.
    node_engine: str
    # The address at which tasks reach the platform's Postgres and Redis (host.docker.internal).
    services_ip: str

    _manager: docker.DockerClient | None = PrivateAttr(default=None)
    _nodes: dict[str, docker.DockerClient] = PrivateAttr(default_factory=dict)

    # Routes to tasks are files the control plane writes (`services/routes.py`).
    route_provider: ClassVar[str] = "file"

    def client(self) -> docker.DockerClient:
        """The manager's API."""
        if self._manager is None:
            self._manager = docker.DockerClient(base_url=self.manager_host, timeout=self.timeout_s)
        return self._manager

    def node(self, hostname: str) -> docker.DockerClient:
        if hostname not in self._nodes:
            url = self.node_engine.format(node=hostname)
            self._nodes[hostname] = docker.DockerClient(base_url=url, timeout=self.timeout_s)
        return self._nodes[hostname]

    def engines(self) -> list[docker.DockerClient]:
        """The engines of the ready nodes that run tenants: their task containers carry the
        tenants' labels."""
        nodes = [n for n in self._tenant_nodes(self.client()) if _ready(n, drained_too=True)]
        return [self.node(n["Description"]["Hostname"]) for n in nodes]

    def local(self) -> DockerRuntimeResource:
        return DockerRuntimeResource(
            docker_host=self.docker_host, timeout_s=self.timeout_s, pids_limit=self.pids_limit
        )

    def ping(self) -> Health:
        def check() -> str:
            client = self.client()
            ready = [n for n in self._tenant_nodes(client) if _ready(n)]
            if not ready:
                raise RuntimeError("no Swarm node that runs tenants is ready")
            return f"Docker Swarm {client.version()['Version']}, {len(ready)} tenant nodes ready"

        return probe("docker", check)

    # Networks -----------------------------------------------------------------------------------

    def ensure_network(self, name: str, tenant: str) -> None:
        """An overlay network of the tenant's own, across the nodes its tasks run on."""
        client = self.client()
        if self._networks(client, name):
            return
        client.networks.create(
            name,
            driver="overlay",
            scope="swarm",
            labels={LABEL_MANAGED: "true", LABEL_TENANT: tenant},
        )

    def remove_network(self, name: str) -> None:
        """The network, once no task is attached to it any more (tasks leave it as their
        containers go, a moment after their service)."""
        client = self.client()
        deadline = time.monotonic() + WAIT_S
        for network in self._networks(client, name):
            tenant = (network.attrs.get("Labels") or {}).get(LABEL_TENANT)
            while True:
                try:
                    network.remove()
                    break
                except NotFound:
                    break
                except APIError as error:
                    if "in use" not in str(error) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            if tenant:
                self._collect_secrets(client, tenant)

    @staticmethod
    def _networks(client: docker.DockerClient, name: str) -> list[Any]:
        return [n for n in client.networks.list(names=[name]) if n.name == name]

    # What runs ----------------------------------------------------------------------------------

    def _services(self, client: docker.DockerClient, tenant: str) -> list[Service]:
        filters = {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_TENANT}={tenant}"]}
        return list(client.services.list(filters=filters))

    def _service(self, client: docker.DockerClient, name: str) -> Service | None:
        found = [s for s in client.services.list(filters={"name": name}) if s.name == name]
        return found[0] if found else None

    def observe(self, tenant: str) -> list[Observed]:
        client = self.client()
        observed = []
        for service in self._services(client, tenant):
            spec = service.attrs["Spec"]
            labels = spec.get("Labels") or {}
            limits = spec["TaskTemplate"].get("Resources", {}).get("Limits", {})
            observed.append(
                Observed(
                    name=service.name or "",
                    role=labels.get(LABEL_ROLE, ""),
                    config_hash=labels.get(LABEL_CONFIG, ""),
                    running=_replicas(service) == 1,
                    cpu=limits.get("NanoCPUs", 0) / NANO,
                    memory_mb=limits.get("MemoryBytes", 0) // MIB,
                )
            )
        return observed

    def states(self, tenant: str) -> list[ContainerState]:
        client = self.client()
        return [self._state(client, s) for s in self._services(client, tenant)]

    def state(self, name: str) -> ContainerState | None:
        client = self.client()
        service = self._service(client, name)
        return None if service is None else self._state(client, service)

    def _state(self, client: docker.DockerClient, service: Service) -> ContainerState:
        tasks = client.api.tasks(filters={"service": service.id})
        task = newest_task(tasks)
        status, health = task_state(task, _replicas(service))
        labels = service.attrs["Spec"].get("Labels") or {}
        url = node = container = None
        if task is not None and status == "running":
            node, address = self._node(client, task.get("NodeID", ""))
            container = (task["Status"].get("ContainerStatus") or {}).get("ContainerID")
            # Swarm reports the port once the task is healthy; a booting one's is its node's.
            port = published_port(task) or self._booting_port(node, container)
            if port and address:
                url = f"http://{address}:{port}"
        failed = [t for t in tasks if t["Status"]["State"] in ("failed", "rejected")]
        return ContainerState(
            name=service.name or "",
            role=labels.get(LABEL_ROLE, ""),
            id=container or str(service.id),
            status=status,
            health=health,
            ip=None,
            restarts=len(failed),
            url=url,
            node=node,
        )

    def serving(self) -> list[Serving]:
        """Every managed service whose task serves (healthy, its port known): its name, labels,
        URL and node, for the routes that follow the tasks (`services/routes.py`) and the
        catalog's record of what runs where. Three calls to the manager whatever the fleet's
        size (it runs every second): the services, the tasks that should run, the nodes."""
        client = self.client()
        wanted: dict[str, list[dict[str, Any]]] = {}
        for task in client.api.tasks(filters={"desired-state": "running"}):
            wanted.setdefault(task["ServiceID"], []).append(task)
        nodes = {n["ID"]: n for n in client.api.nodes()}
        found = []
        for service in client.services.list(filters={"label": f"{LABEL_MANAGED}=true"}):
            task = newest_task(wanted.get(str(service.id), []))
            if task is None or task_state(task, _replicas(service)) != ("running", "healthy"):
                continue
            node = nodes.get(task.get("NodeID", ""), {})
            hostname = node.get("Description", {}).get("Hostname")
            address = node.get("Status", {}).get("Addr")
            port = published_port(task)
            if hostname and address and port:
                labels = service.attrs["Spec"].get("Labels") or {}
                url = f"http://{address}:{port}"
                found.append(Serving(service.name or "", labels, url, str(hostname)))
        return found

    def _node(self, client: docker.DockerClient, node_id: str) -> tuple[str | None, str | None]:
        """A node's hostname (its engine's `{node}`) and address (where its ports answer)."""
        if not node_id:  # a task not yet given a node
            return None, None
        try:
            attrs: dict[str, Any] = client.api.inspect_node(node_id)
        except (NotFound, APIError):
            return None, None
        hostname = attrs.get("Description", {}).get("Hostname")
        address = attrs.get("Status", {}).get("Addr")
        return (str(hostname) if hostname else None, str(address) if address else None)

    def _booting_port(self, node: str | None, container: str | None) -> int | None:
        """The node port of a container whose task is not healthy yet (a cutover dials the
        main it boots before Swarm calls it healthy, as on the Docker runtime)."""
        if not node or not container:
            return None
        try:
            ports = self.node(node).api.inspect_container(container)["NetworkSettings"]["Ports"]
        except (NotFound, APIError):
            return None
        for binding in (ports or {}).get(f"{N8N_PORT}/tcp") or []:
            if binding.get("HostPort"):
                return int(binding["HostPort"])
        return None

    def _tenant_nodes(self, client: docker.DockerClient) -> list[dict[str, Any]]:
        nodes = client.api.nodes()
        return [n for n in nodes if (n["Spec"].get("Labels") or {}).get("rp9.tenants") == "true"]

    def host_cpus(self) -> int:
        """The CPUs of the smallest node that runs tenants: what one task can be given."""
        nodes = [n for n in self._tenant_nodes(self.client()) if _ready(n)]
        return min((n["Description"]["Resources"]["NanoCPUs"] // NANO for n in nodes), default=1)

    # Create, change, stop, remove ---------------------------------------------------------------

    def create(
        self,
        spec: ContainerSpec,
        image: str,
        secrets_dir: Path,
        *,
        cpu: float | None = None,
        cpu_shares: int | None = None,
    ) -> str:
        """Create one service of one task; an existing one of the same name is replaced. Its
        limits are the spec's; `cpu` (a startup boost) and `cpu_shares` (a weight) are given to
        its task's container in place, on its node, once it exists (`update_limits`)."""
        client = self.client()
        self._remove(client, spec.name, graceful=False)
        owner = _owner(spec.name, spec.labels)
        secrets = self._ensure_secrets(client, owner, secrets_dir)
        labels = {**spec.labels, LABEL_CONFIG: spec.config_hash}
        interval_ns = int(spec.healthcheck_interval_s * NANO)
        container = SwarmContainerSpec(
            image,
            args=spec.command or None,
            hostname=spec.name,
            env=spec.env,
            labels=labels,
            stop_grace_period=(GRACEFUL_SHUTDOWN_S + 10) * NANO,
            stop_signal="SIGTERM",
            secrets=secrets,
            hosts={"host.docker.internal": self.services_ip},
            cap_drop=list(CAP_DROP),
            healthcheck=Healthcheck(
                test=HEALTHCHECK,
                interval=interval_ns,
                timeout=HEALTHCHECK_TIMEOUT_S * NANO,
                retries=HEALTHCHECK_RETRIES,
                start_period=180 * NANO,
            ),
        )
        resources = Resources(cpu_limit=int(spec.cpu * NANO), mem_limit=spec.memory_mb * MIB)
        resources["Limits"]["Pids"] = self.pids_limit
        template = TaskTemplate(
            container,
            resources=resources,
            restart_policy=RestartPolicy(condition="any", delay=NANO),
            placement=Placement(constraints=placement(spec.region)),
            log_driver={"Name": LOG_DRIVER, "Options": dict(LOG_OPTIONS)},
            networks=[] if spec.network == "bridge" else [{"Target": spec.network}],
        )
        endpoint = EndpointSpec(
            mode="dnsrr",
            ports=[{"Protocol": "tcp", "TargetPort": N8N_PORT, "PublishMode": "host"}],
        )
        created = client.api.create_service(
            template,
            name=spec.name,
            labels=labels,
            mode=ServiceMode("replicated", replicas=1),
            update_config=UpdateConfig(
                parallelism=1, order="stop-first", failure_action="continue"
            ),
            endpoint_spec=endpoint,
        )
        self._collect_secrets(client, owner)
        if (cpu is not None and cpu != spec.cpu) or cpu_shares is not None:
            self._in_place(
                client, spec.name, spec.cpu if cpu is None else cpu, cpu_shares, wait=True
            )
        return str(created["ID"])

    def _ensure_secrets(
        self, client: docker.DockerClient, tenant: str, secrets_dir: Path
    ) -> list[SecretReference]:
        existing = {s.name: s.id for s in client.secrets.list(filters={"label": LABEL_MANAGED})}
        references = []
        for path in sorted(p for p in secrets_dir.iterdir() if _secret_file(p)):
            content = path.read_bytes()
            name = secret_name(tenant, path.name, content)
            secret_id = existing.get(name)
            if secret_id is None:
                labels = {
                    LABEL_MANAGED: "true",
                    LABEL_SECRET_OWNER: tenant,
                    LABEL_SECRET_FILE: path.name,
                }
                secret_id = client.secrets.create(name=name, data=content, labels=labels).id
            references.append(
                SecretReference(
                    secret_id,
                    name,
                    filename=path.name,
                    uid=N8N_UID,
                    gid=N8N_UID,
                    mode=0o400,
                )
            )
        return references

    def _collect_secrets(self, client: docker.DockerClient, owner: str) -> None:
        """The owner's secrets no service refers to any more (older values, a removed stack)."""
        used = {
            reference["SecretID"]
            for service in client.services.list(filters={"label": f"{LABEL_MANAGED}=true"})
            for reference in service.attrs["Spec"]["TaskTemplate"]["ContainerSpec"].get("Secrets")
            or []
        }
        filters = {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_SECRET_OWNER}={owner}"]}
        for secret in client.secrets.list(filters=filters):
            if secret.id not in used:
                with contextlib.suppress(NotFound, APIError):  # in use by a task still leaving
                    secret.remove()

    def update_limits(
        self,
        name: str,
        cpu: float,
        memory_mb: int,
        *,
        cpu_shares: int | None = None,
        temporary: bool = False,
    ) -> None:
        """New limits. The service's own (a resize) are a service update: Swarm restarts its
        task with them (stop-first). `temporary` ones (a startup boost, a background weight),
        or the service's own again (the boost over), change its running task's container in
        place on its node: Swarm keeps the service's limits in its spec and does not put a
        running container back to them. A temporary change waits for the task's container
        (a service just created or started)."""
        client = self.client()
        service = self._service(client, name)
        if service is None:
            raise NotFound(f"no service {name}")
        if temporary:
            self._in_place(client, name, cpu, cpu_shares, wait=True)
            return
        limits = service.attrs["Spec"]["TaskTemplate"].get("Resources", {}).get("Limits", {})
        wanted = {"NanoCPUs": int(cpu * NANO), "MemoryBytes": memory_mb * MIB}
        if all(limits.get(k) == v for k, v in wanted.items()):
            self._in_place(client, name, cpu, cpu_shares, wait=False)
            return
        resources = Resources(cpu_limit=wanted["NanoCPUs"], mem_limit=wanted["MemoryBytes"])
        resources["Limits"]["Pids"] = self.pids_limit
        service.update(resources=resources)

    def _in_place(
        self,
        client: docker.DockerClient,
        name: str,
        cpu: float,
        cpu_shares: int | None,
        *,
        wait: bool,
    ) -> None:
        """CPU and weight of the service's running task's container, through its node's engine;
        with `wait`, for up to `BOOST_WAIT_S` until it has one (else it runs at its spec's)."""
        deadline = time.monotonic() + (BOOST_WAIT_S if wait else 0)
        while True:
            for task in client.api.tasks(filters={"service": name, "desired-state": "running"}):
                container = (task["Status"].get("ContainerStatus") or {}).get("ContainerID")
                hostname, _ = self._node(client, task.get("NodeID", ""))
                if not container or not hostname:
                    continue
                with contextlib.suppress(NotFound, APIError):  # gone, or not created yet
                    api = self.node(hostname).api
                    update_in_place(api, container, cpu=cpu, memory_mb=None, cpu_shares=cpu_shares)
                    return
            if time.monotonic() >= deadline:
                return
            time.sleep(0.1)

    def _scale(self, client: docker.DockerClient, name: str, replicas: int) -> Service:
        service = self._service(client, name)
        if service is None:
            raise NotFound(f"no service {name}")
        if _replicas(service) != replicas:
            service.scale(replicas)
        return service

    def start(self, name: str) -> None:
        self._scale(self.client(), name, 1)

    def stop(self, name: str, timeout_s: int | None = None) -> None:
        """Graceful stop: SIGTERM, n8n finishes its running executions, killed after
        `timeout_s` (by default n8n's own graceful timeout and then some); returns once its task
        stopped."""
        client = self.client()
        with contextlib.suppress(NotFound):
            service = self._scale(client, name, 0)
            self._stop_tasks(client, service, timeout_s)

    def _stop_tasks(
        self, client: docker.DockerClient, service: Service, timeout_s: int | None
    ) -> None:
        """Stop the service's containers on their nodes (Swarm does so with the service's
        grace period; a shorter `timeout_s` is applied here) and wait until none runs."""
        timeout = GRACEFUL_SHUTDOWN_S + 10 if timeout_s is None else timeout_s
        for hostname, container_id in self._containers(client, service):
            with contextlib.suppress(NotFound, APIError):
                self.node(hostname).containers.get(container_id).stop(timeout=timeout)
        deadline = time.monotonic() + timeout + WAIT_S
        while self._containers(client, service, running_only=True):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the task of {service.name} did not stop")
            time.sleep(0.2)

    def _containers(
        self, client: docker.DockerClient, service: Service, *, running_only: bool = False
    ) -> list[tuple[str, str]]:
        """(node hostname, container id) of the service's tasks that still have a container
        (running ones only, with `running_only`)."""
        found = []
        for task in client.api.tasks(filters={"service": service.id}):
            container = (task["Status"].get("ContainerStatus") or {}).get("ContainerID")
            state = task["Status"]["State"]
            if not container or state in ("complete", "failed", "rejected", "orphaned"):
                continue
            if running_only and state not in ("running", "starting"):
                continue
            hostname, _ = self._node(client, task.get("NodeID", ""))
            if hostname:
                found.append((hostname, container))
        return found

    def remove(self, name: str, *, graceful: bool = True) -> None:
        self._remove(self.client(), name, graceful=graceful)

    def _remove(self, client: docker.DockerClient, name: str, *, graceful: bool) -> None:
        service = self._service(client, name)
        if service is None:
            return
        if graceful:
            with contextlib.suppress(NotFound):
                self._scale(client, name, 0)
                self._stop_tasks(client, service, None)
        else:
            for hostname, container_id in self._containers(client, service):
                with contextlib.suppress(NotFound, APIError):
                    self.node(hostname).containers.get(container_id).kill()
        with contextlib.suppress(NotFound):
            service.remove()
        self._collect_secrets(client, _owner(name, service.attrs["Spec"].get("Labels") or {}))

    # What only a node's engine knows --------------------------------------------------------

    def _running_container(self, client: docker.DockerClient, service: Service) -> Any | None:
        """The container of the service's running task, from its node's engine."""
        for hostname, container_id in self._containers(client, service, running_only=True):
            with contextlib.suppress(NotFound):
                return self.node(hostname).containers.get(container_id)
        return None

    def logs(self, name: str, tail: int | str = 200, *, timestamps: bool = False) -> str:
        """The running task's logs, else every task's (what failed before a restart)."""
        client = self.client()
        service = self._service(client, name)
        if service is None:
            return ""
        container = self._running_container(client, service)
        if container is not None:
            raw: bytes = container.logs(tail=tail, timestamps=timestamps)
            return raw.decode(errors="replace")
        chunks = service.logs(stdout=True, stderr=True, tail=tail, timestamps=timestamps)
        return b"".join(chunks).decode(errors="replace")

    def stats(self, tenant: str) -> list[ContainerStats]:
        client = self.client()
        running = [
            c
            for service in self._services(client, tenant)
            if (c := self._running_container(client, service)) is not None
        ]
        with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
            sampled = list(pool.map(_stats, running))
        # A task's container is named <service>.<slot>.<task id>: the runtime's name is the
        # service's.
        return [
            ContainerStats(
                name=s.name.split(".", 1)[0],
                role=s.role,
                cpu_percent=s.cpu_percent,
                memory_bytes=s.memory_bytes,
                memory_limit_bytes=s.memory_limit_bytes,
            )
            for s in sampled
        ]

    def image_exists(self, image: str) -> bool:
        """Whether every ready node that runs tenants holds the image (there is no registry to
        pull it from: `deploy/swarm/swarm.sh images` copies it to them)."""
        nodes = [n for n in self._tenant_nodes(self.client()) if _ready(n)]
        for node in nodes:
            try:
                self.node(node["Description"]["Hostname"]).images.get(image)
            except NotFound:
                return False
        return bool(nodes)

    def exec(self, name: str, command: list[str]) -> tuple[int, str, str]:
        client = self.client()
        service = self._service(client, name)
        container = None if service is None else self._running_container(client, service)
        if container is None:
            raise NotFound(f"no running task of {name}")
        return exec_in(container, command)


def _owner(name: str, labels: dict[str, str]) -> str:
    """Whose secrets a service uses: its tenant's, or its own (no tenant label)."""
    return labels.get(LABEL_TENANT) or name


def _secret_file(path: Path) -> bool:
    """A value of the secrets directory (not a half-written `.name.tmp`)."""
    return path.is_file() and not path.name.startswith(".")


def _replicas(service: Service) -> int:
    return int(service.attrs["Spec"].get("Mode", {}).get("Replicated", {}).get("Replicas", 0))


def _ready(node: dict[str, Any], *, drained_too: bool = False) -> bool:
    """A node that is up and takes tasks (or, `drained_too`, is up whatever its availability:
    a drained node's tasks may still be stopping)."""
    if node["Status"]["State"] != "ready":
        return False
    return drained_too or node["Spec"].get("Availability") == "active"
