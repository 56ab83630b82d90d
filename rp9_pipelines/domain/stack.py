"""A tenant's n8n stack as data: the containers it should have, and what to do to get there."""

import hashlib
import json
from dataclasses import dataclass, field

from rp9_pipelines.domain.routing import edge_rate, traefik_labels
from rp9_pipelines.domain.tenants import TenantNames, pool_sizes

N8N_PORT = 5678
SECRETS_MOUNT = "/run/secrets"
# Files under SECRETS_MOUNT, read by n8n through its `<VAR>_FILE` convention; the values never
# appear in the container's environment (`docker inspect`) or in the catalog.
SECRET_FILES = {
    "DB_POSTGRESDB_PASSWORD": "db_password",
    "QUEUE_BULL_REDIS_PASSWORD": "redis_password",
    "N8N_ENCRYPTION_KEY": "encryption_key",
}
OWNER_PASSWORD_HASH_FILE = "owner_password_hash"  # noqa: S105 (a file name)
GRACEFUL_SHUTDOWN_S = 30
# wget is in the official image (busybox) and in the local one; it costs a few milliseconds,
# where a Node probe costs tens, which matters at a short interval on many containers.
# Docker runs a check `interval` after the previous one ended and, before Engine 25's
# `start_interval`, at that pace during startup too: a plain probe every second leaves a new
# container unrouted (Traefik waits for "healthy") for half a second on average after n8n is
# ready. So until the process has been ready once, each check polls readiness every 0.1 s for
# up to ~2 s and answers at the first 200.
# "Ready once" is remembered per process: a marker holding PID 1's start time, so a restarted
# container (a new PID 1) waits for readiness again.
READINESS_URL = "http://127.0.0.1:5678/healthz/readiness"
LIVENESS_URL = "http://127.0.0.1:5678/healthz"
READY_MARKER = "/tmp/.rp9-ready"  # noqa: S108 (the container's own /tmp)
# Once a process has been ready, only liveness is probed, and it stays healthy (routed) while it
# answers within `LIVENESS_TIMEOUT_S`: readiness fails and any probe slows under the tenant's own
# load (its database pool busy, its event loop saturated), and a busy main must keep its route
# (Traefik drops a container Docker calls unhealthy; a webhook sender takes Traefik's 404 as
# permanent and the fallback's 503 as an outage). Only a process that does not answer for
# `HEALTHCHECK_RETRIES` checks in a row leaves the routing.
LIVENESS_TIMEOUT_S = 10
HEALTHCHECK_TIMEOUT_S = LIVENESS_TIMEOUT_S + 2
HEALTHCHECK_RETRIES = 3
HEALTHCHECK = [
    "CMD-SHELL",
    "b=$(cut -d' ' -f22 /proc/1/stat);"
    f' if [ "$(cat {READY_MARKER} 2>/dev/null)" = "$b" ]; then'
    f" wget -q -T {LIVENESS_TIMEOUT_S} -O /dev/null {LIVENESS_URL}; exit $?; fi;"
    f" for _ in $(seq 20); do wget -q -T 1 -O /dev/null {READINESS_URL}"
    f' && {{ echo "$b" > {READY_MARKER}; exit 0; }}; sleep 0.1; done; exit 1',
]

# Every container the platform runs may hold a tenant's code (n8n runs it; an n8n escape runs
# anything as the container's user), so each starts with no Linux capability at all: n8n runs
# as uid 1000 and listens on 5678, tini, the entrypoint and the wget health check need none.
# Logs rotate so a chatty workflow cannot fill the host's disk, and every line carries the
# container's tenant, role and color (json-file's `attrs`), which the log shipper keeps as
# labels (deploy/observability/alloy/config.alloy). Part of the configuration hash, so a change
# here recreates the containers on their next convergence.
CAP_DROP = ("ALL",)
SECURITY_OPT = ("no-new-privileges",)
LOG_DRIVER = "json-file"
LOG_OPTIONS = {
    "max-size": "10m",
    "max-file": "3",
    "labels": "io.rp9.tenant,io.rp9.role,io.rp9.color",
}

# n8n's own hardening, the same on main and workers (both load nodes and run executions), and
# set by the platform: a tenant cannot change its containers' environment.
# - Expressions and the Code node see no environment variable (`$env` is refused).
# - Nodes that read or write files do so only under one directory of the node user's home; n8n's
#   own files (`~/.n8n`: settings, encryption key) and `/run/secrets` are outside it.
# - Execution pruning is pinned (n8n's defaults, 14 days and 10,000 executions), so a tenant's
#   data cannot grow without bound and every tenant is pruned alike.
FILES_DIR = "/home/node/.n8n-files"
HARDENING_ENV = {
    "N8N_BLOCK_ENV_ACCESS_IN_NODE": "true",
    "N8N_RESTRICT_FILE_ACCESS_TO": FILES_DIR,
    "N8N_BLOCK_FILE_ACCESS_TO_N8N_FILES": "true",
    "EXECUTIONS_DATA_PRUNE": "true",
    "EXECUTIONS_DATA_MAX_AGE": "336",
    "EXECUTIONS_DATA_PRUNE_MAX_COUNT": "10000",
    "EXECUTIONS_DATA_HARD_DELETE_BUFFER": "1",
}

# n8n pings its database (`SELECT 1`, every 2 s) through the pool its requests use, and for
# as long as one ping takes over N8N_DB_PING_TIMEOUT (5 s by default) it calls the database
# "not ready": 503 on every route, readiness down. Under a tenant's own load on busy cores
# the pool's queue alone passes 5 s, and the 503s then fail the webhooks that the database
# would have answered. A database that is down fails the ping at once (refused, reset); the
# timeout only tells a slow database from a hung one.
DATABASE_ENV = {"N8N_DB_PING_TIMEOUT": "30000"}


@dataclass(frozen=True)
class NodePolicy:
    """What a plan's n8n may load besides its built-in nodes, and which built-ins it may not."""

    community_packages: bool
    excluded_nodes: tuple[str, ...]


# NODES_EXCLUDE replaces n8n's default list (executeCommand and localFileTrigger in 2.x), so
# every plan repeats both: a shell in the container, and a watcher of its filesystem. The git
# node runs the git binary on a repository in the container's filesystem (hooks and config can
# run commands): only the larger plans keep it. SSH stays: it is a client of
# the customer's own servers, like the HTTP Request node. Community packages are npm code the
# tenant installs into its own n8n: the larger plans only.
_CONTAINER_NODES = ("n8n-nodes-base.executeCommand", "n8n-nodes-base.localFileTrigger")
STRICT_NODES = NodePolicy(
    community_packages=False, excluded_nodes=(*_CONTAINER_NODES, "n8n-nodes-base.git")
)
NODE_POLICIES = {
    "starter": STRICT_NODES,
    "pro": STRICT_NODES,
    "business": NodePolicy(community_packages=True, excluded_nodes=_CONTAINER_NODES),
    "enterprise": NodePolicy(community_packages=True, excluded_nodes=_CONTAINER_NODES),
}


def node_policy(plan: str) -> NodePolicy:
    """The plan's policy; a plan without one (a new plan, a typo) gets the strictest."""
    return NODE_POLICIES.get(plan, STRICT_NODES)


def hardening_env(plan: str) -> dict[str, str]:
    """The environment that hardens an n8n running a tenant's workflows on `plan`."""
    nodes = node_policy(plan)
    return {
        **HARDENING_ENV,
        "N8N_COMMUNITY_PACKAGES_ENABLED": "true" if nodes.community_packages else "false",
        # A JSON array: n8n reads anything else as an empty list, which excludes nothing.
        "NODES_EXCLUDE": json.dumps(list(nodes.excluded_nodes)),
    }


LABEL_MANAGED = "io.rp9.managed"
LABEL_TENANT = "io.rp9.tenant"
LABEL_ROLE = "io.rp9.role"
LABEL_COLOR = "io.rp9.color"
COLORS = ("blue", "green")
LABEL_CONFIG = "io.rp9.config-hash"
LABEL_METRICS = "io.rp9.metrics"


def other_color(color: str) -> str:
    """The color a cutover boots beside the serving containers."""
    return COLORS[1 - COLORS.index(color)]


@dataclass(frozen=True)
class StackConfig:
    """Platform-wide settings that shape every tenant's containers."""

    image: str
    base_domain: str
    services_host: str
    postgres_port: int
    redis_port: int
    redis_db: int
    traefik_entrypoint: str
    public_scheme: str
    public_port: int | None
    cert_resolver: str
    healthcheck_interval_s: float = 1.0


@dataclass(frozen=True)
class TenantStack:
    """What the catalog says a tenant's stack should be."""

    names: TenantNames
    owner_email: str
    custom_domain: str | None
    workers: int
    cpu: float
    memory_mb: int
    worker_concurrency: int
    color: str = "blue"
    # The tenant's concurrency quota: production executions main may run at once when it runs
    # them itself (no workers); in queue mode each worker's `--concurrency` is the limit.
    concurrency: int | None = None
    # The tenant's plan, for the nodes its n8n may load (`node_policy`).
    plan: str = ""
    # Where its containers may run (a Swarm's node label `region`).
    region: str | None = None


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    role: str
    index: int
    command: list[str]
    env: dict[str, str]
    labels: dict[str, str]
    cpu: float
    memory_mb: int
    network: str
    healthcheck_interval_s: float
    # Where it may run (a node label on Swarm; one engine is one region). Not in the
    # configuration hash: placement is the runtime's, not the container's.
    region: str | None = None

    @property
    def config_hash(self) -> str:
        """Everything that needs a new container when it changes; CPU and memory are not in it
        because a running container's limits are updated in place."""
        payload = {
            "command": self.command,
            "env": self.env,
            "labels": self.labels,
            "host": {"cap_drop": CAP_DROP, "security_opt": SECURITY_OPT, "logs": LOG_OPTIONS},
            "health": [HEALTHCHECK, HEALTHCHECK_TIMEOUT_S, HEALTHCHECK_RETRIES],
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def public_url(stack: TenantStack, config: StackConfig) -> str:
    host = f"{stack.names.slug}.{config.base_domain}"
    port = f":{config.public_port}" if config.public_port else ""
    return f"{config.public_scheme}://{host}{port}/"


def _common_env(stack: TenantStack, config: StackConfig) -> dict[str, str]:
    names = stack.names
    env = {
        "DB_TYPE": "postgresdb",
        "DB_POSTGRESDB_HOST": config.services_host,
        "DB_POSTGRESDB_PORT": str(config.postgres_port),
        "DB_POSTGRESDB_DATABASE": names.db_name,
        "DB_POSTGRESDB_SCHEMA": names.db_schema,
        "DB_POSTGRESDB_USER": names.db_role,
        "EXECUTIONS_MODE": "queue",
        "QUEUE_BULL_PREFIX": names.bull_prefix,
        "N8N_REDIS_KEY_PREFIX": names.redis_key_prefix,
        "QUEUE_BULL_REDIS_HOST": config.services_host,
        "QUEUE_BULL_REDIS_PORT": str(config.redis_port),
        "QUEUE_BULL_REDIS_DB": str(config.redis_db),
        "QUEUE_BULL_REDIS_USERNAME": names.redis_user,
        "N8N_GRACEFUL_SHUTDOWN_TIMEOUT": str(GRACEFUL_SHUTDOWN_S),
        "N8N_METRICS": "true",
        "GENERIC_TIMEZONE": "UTC",
        "N8N_DIAGNOSTICS_ENABLED": "false",
        "N8N_VERSION_NOTIFICATIONS_ENABLED": "false",
        "N8N_TEMPLATES_ENABLED": "false",
        **DATABASE_ENV,
        **hardening_env(stack.plan),
    }
    env.update({f"{var}_FILE": f"{SECRETS_MOUNT}/{name}" for var, name in SECRET_FILES.items()})
    return env


def desired_containers(stack: TenantStack, config: StackConfig) -> list[ContainerSpec]:
    """The main container (routed) and `workers` queue workers, in start order."""
    names = stack.names
    url = public_url(stack, config)
    base_labels = {
        LABEL_MANAGED: "true",
        LABEL_TENANT: names.slug,
        LABEL_COLOR: stack.color,
        LABEL_METRICS: "true",
    }
    pools = pool_sizes(stack.concurrency or stack.worker_concurrency)
    main_env = {
        **_common_env(stack, config),
        "N8N_HOST": f"{names.slug}.{config.base_domain}",
        "N8N_PROTOCOL": config.public_scheme,
        "N8N_EDITOR_BASE_URL": url,
        "WEBHOOK_URL": url,
        "N8N_PROXY_HOPS": "1",
        "N8N_SECURE_COOKIE": "true" if config.public_scheme == "https" else "false",
        "N8N_METRICS_INCLUDE_QUEUE_METRICS": "true",
        "OFFLOAD_MANUAL_EXECUTIONS_TO_WORKERS": "true" if stack.workers else "false",
        # The owner exists from the first boot, so nobody can claim a fresh instance.
        "N8N_INSTANCE_OWNER_MANAGED_BY_ENV": "true",
        "N8N_INSTANCE_OWNER_EMAIL": stack.owner_email,
        "N8N_INSTANCE_OWNER_PASSWORD_HASH_FILE": f"{SECRETS_MOUNT}/{OWNER_PASSWORD_HASH_FILE}",
        "DB_POSTGRESDB_POOL_SIZE": str(pools.main),
    }
    if not stack.workers and stack.concurrency is not None:
        # Main runs executions itself only without workers; with workers, n8n ignores this
        # limit and each worker's `--concurrency` is what bounds the tenant's executions.
        main_env["N8N_CONCURRENCY_PRODUCTION_LIMIT"] = str(stack.concurrency)
    route = traefik_labels(
        router=names.router,
        hosts=names.hosts(config.base_domain, stack.custom_domain),
        port=N8N_PORT,
        entrypoint=config.traefik_entrypoint,
        network=names.network,
        cert_resolver=config.cert_resolver,
        rate_limit=edge_rate(stack.concurrency) if stack.concurrency is not None else None,
        answer_unavailable=True,
    )
    specs = [
        ContainerSpec(
            name=names.container("main", stack.color),
            role="main",
            index=0,
            command=[],
            env=main_env,
            labels={**base_labels, LABEL_ROLE: "main", **route},
            cpu=stack.cpu,
            memory_mb=stack.memory_mb,
            network=names.network,
            healthcheck_interval_s=config.healthcheck_interval_s,
            region=stack.region,
        )
    ]
    worker_env = {
        **_common_env(stack, config),
        "QUEUE_HEALTH_CHECK_ACTIVE": "true",
        "DB_POSTGRESDB_POOL_SIZE": str(pools.worker),
    }
    for index in range(1, stack.workers + 1):
        specs.append(
            ContainerSpec(
                name=names.container("worker", stack.color, index),
                role="worker",
                index=index,
                command=["worker", f"--concurrency={stack.worker_concurrency}"],
                env=worker_env,
                labels={**base_labels, LABEL_ROLE: "worker"},
                cpu=stack.cpu,
                memory_mb=stack.memory_mb,
                network=names.network,
                healthcheck_interval_s=config.healthcheck_interval_s,
                region=stack.region,
            )
        )
    return specs


@dataclass(frozen=True)
class Observed:
    """A container of the tenant as the engine reports it."""

    name: str
    role: str
    config_hash: str
    running: bool
    cpu: float
    memory_mb: int


@dataclass(frozen=True)
class Reconcile:
    create: list[ContainerSpec] = field(default_factory=list)
    recreate: list[ContainerSpec] = field(default_factory=list)
    start: list[ContainerSpec] = field(default_factory=list)
    update_limits: list[ContainerSpec] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.create or self.recreate or self.start or self.update_limits or self.remove)


def startup_cpu(steady_cpu: float, boost_cpu: float, host_cpus: int) -> float:
    """CPU a container may use while n8n starts (a startup boost, as Cloud Run's): n8n's boot is
    CPU-bound, about 6.5 CPU-seconds, so a 1-CPU tenant starts in ~7 s and in ~5 s with two.
    Never below the steady limit, never above the host's CPUs (the engine refuses more); the
    steady limit is restored once the container is healthy."""
    return max(steady_cpu, min(boost_cpu, float(host_cpus)))


def plan_reconcile(desired: list[ContainerSpec], observed: list[Observed]) -> Reconcile:
    """What to do so that exactly the desired containers run with the desired configuration.

    Containers are matched by their deterministic name, so a re-run after a crash finds what the
    previous run created instead of creating a second stack.
    """
    by_name = {o.name: o for o in observed}
    wanted = {spec.name for spec in desired}
    plan = Reconcile(remove=sorted(name for name in by_name if name not in wanted))
    for spec in desired:
        seen = by_name.get(spec.name)
        if seen is None:
            plan.create.append(spec)
        elif seen.config_hash != spec.config_hash:
            plan.recreate.append(spec)
        else:
            if (seen.cpu, seen.memory_mb) != (spec.cpu, spec.memory_mb):
                plan.update_limits.append(spec)
            if not seen.running:
                plan.start.append(spec)
    return plan
