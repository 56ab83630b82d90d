"""A DR drill's scratch environment: a Postgres, a Redis and an OpenBao of its own on an internal
Docker network, so the platform rebuilt from S3 alone runs beside the live one and never
reaches it.

The network is `internal` (Docker forwards nothing between it and any other network or the
outside) and its bridge is named `rp9dr<hash>`, so the host's firewall can refuse what its
containers open to the host itself (deploy/local/firewall.sh): an internal network still gives
its containers a default route through the bridge's address on Docker 20.10, and the host
answers there on every address it has, the live Postgres's and Redis's included. The host
reaches the containers by their addresses (the drill restores into Postgres and calls n8n that
way). `live_ports` makes a start fail unless a probe from inside the network reaches none of
the live services.

Everything carries the label `io.rp9.dr-drill=<token>` and never `io.rp9.managed` (the live
Traefik routes containers with that label). Passwords and the root token are generated here and
copied into the containers as files before they start: they appear in no `docker inspect`.
"""

import concurrent.futures
import datetime as dt
import hashlib
import io
import json
import os
import re
import secrets
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import docker
import httpx
import psycopg
import redis
from docker.errors import APIError, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import LogConfig
from redis.backoff import NoBackoff
from redis.retry import Retry

from rp9_pipelines.domain.stack import CAP_DROP, LOG_DRIVER, LOG_OPTIONS, SECURITY_OPT
from rp9_pipelines.resources.docker_runtime import MIB, NANO, DockerRuntimeResource

Log = Callable[[str], None]
DockerAccess: TypeAlias = docker.DockerClient | DockerRuntimeResource

LABEL_DRILL = "io.rp9.dr-drill"
LABEL_CREATED = "io.rp9.dr-created"
LABEL_SERVICE = "io.rp9.dr-service"
NAME_PREFIX = "rp9-dr-"
# deploy/local/firewall.sh matches the scratch bridges as `rp9dr+` (names are at most 15 bytes).
BRIDGE_PREFIX = "rp9dr"
BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "images" / "scratch" / "build.sh"
# In the image (deploy/images/scratch/entrypoint.sh).
SECRETS_DIR = "/etc/rp9-scratch"
PG_DATA = "/var/lib/rp9-scratch/postgres"
POSTGRES_PORT, REDIS_PORT, VAULT_PORT = 5432, 6379, 8200

TOKEN = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


class ScratchError(RuntimeError):
    """The scratch environment could not be started, isolated or torn down."""


class ScratchLeftovers(ScratchError):
    """Objects labelled with the drill's token remain after its teardown."""

    def __init__(self, token: str, leftovers: Sequence[str]) -> None:
        super().__init__(f"scratch environment {token}: still present: {', '.join(leftovers)}")
        self.token = token
        self.leftovers = tuple(leftovers)


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    cpu: float
    pids: int = 512


@dataclass(frozen=True)
class Sizing:
    """Small, for a drill that restores the catalog and the tenants one after another."""

    postgres: Limits = field(default_factory=lambda: Limits(memory_mb=768, cpu=1.0))
    redis: Limits = field(default_factory=lambda: Limits(memory_mb=256, cpu=0.5, pids=64))
    vault: Limits = field(default_factory=lambda: Limits(memory_mb=256, cpu=0.5, pids=128))
    shared_buffers_mb: int = 64
    max_connections: int = 100


@dataclass(frozen=True)
class ScratchPostgres:
    host: str  # the container's name, which the network's DNS resolves
    port: int
    ip: str  # the container's address, which the host reaches
    user: str
    password: str = field(repr=False)

    @property
    def url(self) -> str:
        """From the host."""
        return f"postgresql://{self.user}:{self.password}@{self.ip}:{self.port}/postgres"

    @property
    def network_url(self) -> str:
        """From a container on the scratch network."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/postgres"


@dataclass(frozen=True)
class ScratchRedis:
    host: str
    port: int
    ip: str
    password: str = field(repr=False)

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.ip}:{self.port}/0"

    @property
    def network_url(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/0"


@dataclass(frozen=True)
class ScratchVault:
    """An OpenBao dev server: unsealed, in memory, KV v2 mounted at `secret/`."""

    host: str
    port: int
    ip: str
    token: str = field(repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.ip}:{self.port}"

    @property
    def network_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class ScratchEnvironment:
    token: str
    network: str
    image: str
    created: str  # ISO 8601, as labelled
    postgres: ScratchPostgres
    redis: ScratchRedis
    vault: ScratchVault
    client: docker.DockerClient = field(repr=False, compare=False)
    log: Log = field(repr=False, compare=False)

    @property
    def labels(self) -> dict[str, str]:
        """For every container the drill adds to the network: teardown and sweep find it."""
        return {LABEL_DRILL: self.token, LABEL_CREATED: self.created}

    def teardown(self) -> list[str]:
        """Remove everything of the drill; see `teardown_scratch`."""
        return teardown_scratch(self.client, self.token, self.log)


def network_name(token: str) -> str:
    return f"{NAME_PREFIX}{token}"


def bridge_name(token: str) -> str:
    """The host's interface for the network: a fixed prefix the firewall matches, and a hash
    of the token (an interface name has at most 15 bytes)."""
    return BRIDGE_PREFIX + hashlib.sha256(token.encode()).hexdigest()[:10]


def _client(access: DockerAccess) -> docker.DockerClient:
    return access.client() if isinstance(access, DockerRuntimeResource) else access


def scratch_image(client: docker.DockerClient, log: Log, build_script: Path = BUILD_SCRIPT) -> str:
    """The image the build script's inputs name (`rp9/scratch:<hash>`), built first if the
    engine does not have it (about a minute; the debootstrap rootfs is shared with n8n's)."""
    if not build_script.is_file():
        raise ScratchError(f"{build_script} is missing: pass the scratch image explicitly")
    image = _run_build(build_script, "tag", timeout_s=60)
    try:
        client.images.get(image)
        return image
    except ImageNotFound:
        pass
    log(f"scratch image {image} is missing: building it with {build_script} (about a minute)")
    started = time.monotonic()
    built = _run_build(build_script, timeout_s=30 * 60)
    if built != image:
        raise ScratchError(f"{build_script} built {built}, expected {image}")
    log(f"built {image} in {time.monotonic() - started:.0f} s")
    return image


def _run_build(script: Path, *args: str, timeout_s: float) -> str:
    done = subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env=os.environ.copy(),
        check=False,
    )
    if done.returncode != 0:
        raise ScratchError(
            f"{script} {' '.join(args)} exited {done.returncode}: {done.stderr[-1500:]}"
        )
    return done.stdout.strip().splitlines()[-1]


@contextmanager
def scratch_environment(
    docker_access: DockerAccess,
    token: str,
    log: Log,
    *,
    image: str | None = None,
    sizing: Sizing | None = None,
    live_ports: Sequence[int] = (),
    ready_timeout_s: float = 120,
) -> Iterator[ScratchEnvironment]:
    """A started scratch environment, torn down when the block ends, whatever happened."""
    environment = start_scratch(
        docker_access,
        token,
        log,
        image=image,
        sizing=sizing,
        live_ports=live_ports,
        ready_timeout_s=ready_timeout_s,
    )
    try:
        yield environment
    finally:
        environment.teardown()


def start_scratch(
    docker_access: DockerAccess,
    token: str,
    log: Log,
    *,
    image: str | None = None,
    sizing: Sizing | None = None,
    live_ports: Sequence[int] = (),
    ready_timeout_s: float = 120,
) -> ScratchEnvironment:
    """Network, volume and the three services, each answering from the host; with
    `live_ports`, also checked to reach none of the host's addresses on those ports. Whatever
    was created is removed again if a step fails. Call `teardown()` when done."""
    if not TOKEN.fullmatch(token):
        raise ValueError(f"{token!r} is not a drill token (a-z, 0-9 and -, at most 40)")
    client = _client(docker_access)
    image = image or scratch_image(client, log)
    found = _leftovers(client, token)
    if found:
        raise ScratchError(f"scratch environment {token} already exists: {', '.join(found)}")
    started = time.monotonic()
    labels = {LABEL_DRILL: token, LABEL_CREATED: dt.datetime.now(dt.UTC).isoformat()}
    try:
        environment = _start(client, token, log, image, sizing or Sizing(), labels, ready_timeout_s)
        if live_ports:
            require_isolation(environment, live_ports)
    except BaseException:
        try:
            teardown_scratch(client, token, log)
        except ScratchError as error:
            log(f"after the failed start: {error}")
        raise
    log(f"scratch environment {token} ready in {time.monotonic() - started:.1f} s")
    return environment


def _start(
    client: docker.DockerClient,
    token: str,
    log: Log,
    image: str,
    sizing: Sizing,
    labels: dict[str, str],
    ready_timeout_s: float,
) -> ScratchEnvironment:
    users = _image_users(client, image)
    network = network_name(token)
    client.networks.create(
        network,
        driver="bridge",
        internal=True,
        check_duplicate=True,
        labels=labels,
        options={"com.docker.network.bridge.name": bridge_name(token)},
    )
    volume = f"{network}-postgres"
    client.volumes.create(volume, labels=labels)
    pg_password, redis_password, vault_token = (secrets.token_urlsafe(32) for _ in range(3))
    redis_conf = "\n".join(
        [
            "bind 0.0.0.0",
            f"port {REDIS_PORT}",
            f"requirepass {redis_password}",
            'save ""',
            "appendonly no",
            "dir /tmp",
            "",
        ]
    )
    pg_flags = {
        "shared_buffers": f"{sizing.shared_buffers_mb}MB",
        "max_connections": str(sizing.max_connections),
        # A throwaway cluster: nothing needs to survive a crash.
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
    }
    pg_args = [arg for key, value in pg_flags.items() for arg in ("-c", f"{key}={value}")]
    pg_extra = {"volumes": {volume: {"bind": PG_DATA, "mode": "rw"}}, "shm_size": "128m"}
    specs: dict[str, tuple[list[str], Limits, dict[str, str], dict[str, Any]]] = {
        "postgres": (pg_args, sizing.postgres, {"postgres.password": pg_password}, pg_extra),
        "redis": ([], sizing.redis, {"redis.conf": redis_conf}, {}),
        "openbao": ([], sizing.vault, {"openbao.token": vault_token}, {}),
    }
    services = {
        service: _create(
            client, image, network, service, args, labels, limits, users[service], files, **extra
        )
        for service, (args, limits, files, extra) in specs.items()
    }
    # Each start sets up the container's network namespace: a few hundred ms, done at once.
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(services)) as pool:
        list(pool.map(lambda container: container.start(), services.values()))
    ips = {service: _ip(container, network) for service, container in services.items()}
    deadline = time.monotonic() + ready_timeout_s
    postgres = ScratchPostgres(
        services["postgres"].name or "", POSTGRES_PORT, ips["postgres"], "postgres", pg_password
    )
    redis_ = ScratchRedis(services["redis"].name or "", REDIS_PORT, ips["redis"], redis_password)
    vault = ScratchVault(services["openbao"].name or "", VAULT_PORT, ips["openbao"], vault_token)
    _wait(services["postgres"], deadline, lambda: _postgres_answers(postgres))
    _wait(services["redis"], deadline, lambda: _redis_answers(redis_))
    _wait(services["openbao"], deadline, lambda: _vault_answers(vault))
    created = labels[LABEL_CREATED]
    return ScratchEnvironment(token, network, image, created, postgres, redis_, vault, client, log)


def _image_users(client: docker.DockerClient, image: str) -> dict[str, tuple[int, int]]:
    """Each service's uid and gid, as the image's build recorded them."""
    label = (client.images.get(image).labels or {}).get("io.rp9.scratch-users", "")
    users = {}
    for entry in filter(None, label.split(",")):
        name, uid, gid = entry.split(":")
        users[name] = (int(uid), int(gid))
    missing = {"postgres", "redis", "openbao"} - users.keys()
    if missing:
        raise ScratchError(f"{image} is not a scratch image (no user ids for {sorted(missing)})")
    return users


def _create(
    client: docker.DockerClient,
    image: str,
    network: str,
    service: str,
    args: list[str],
    labels: dict[str, str],
    limits: Limits,
    owner: tuple[int, int],
    files: dict[str, str],
    **extra: Any,
) -> Container:
    """Create a service's container and copy its secret files in (readable by its user only)
    before it ever starts."""
    name = f"{network}-{service}"
    container = client.containers.create(
        image,
        command=[service, *args],
        name=name,
        hostname=name,
        user=f"{owner[0]}:{owner[1]}",
        labels={**labels, LABEL_SERVICE: service},
        network=network,
        mem_limit=limits.memory_mb * MIB,
        memswap_limit=limits.memory_mb * MIB,
        nano_cpus=int(limits.cpu * NANO),
        pids_limit=limits.pids,
        cap_drop=list(CAP_DROP),
        security_opt=list(SECURITY_OPT),
        log_config=LogConfig(type=LOG_DRIVER, config=dict(LOG_OPTIONS)),
        **extra,
    )
    container.put_archive(SECRETS_DIR, _archive(files, owner))
    return container


def _archive(files: dict[str, str], owner: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o400, int(time.time())
            info.uid, info.gid = owner
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _ip(container: Container, network: str) -> str:
    container.reload()
    networks = container.attrs["NetworkSettings"]["Networks"]
    ip = (networks.get(network) or {}).get("IPAddress")
    if not ip:
        raise ScratchError(f"{container.name} has no address on {network}")
    return str(ip)


def _wait(container: Container, deadline: float, answers: Callable[[], bool]) -> None:
    """Poll `answers` until it is true; fail at once if the container stopped, or at the
    deadline, with the end of its log."""
    last: Exception | None = None
    while True:
        try:
            if answers():
                return
        except Exception as error:
            last = error
        container.reload()
        if container.status in {"exited", "dead"} or time.monotonic() > deadline:
            logs = container.logs(tail=20).decode(errors="replace")
            why = "stopped" if container.status in {"exited", "dead"} else "did not answer in time"
            raise ScratchError(f"{container.name} {why} (last error: {last!r}): {logs[-1500:]}")
        time.sleep(0.2)


def _postgres_answers(postgres: ScratchPostgres) -> bool:
    with psycopg.connect(postgres.url, connect_timeout=2) as connection:
        row = connection.execute("SELECT 1").fetchone()
    return row == (1,)


def _redis_answers(redis_: ScratchRedis) -> bool:
    # No retry of its own: the caller polls until its deadline.
    client = redis.Redis.from_url(
        redis_.url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0)
    )
    try:
        return bool(client.ping())
    finally:
        client.close()


def _vault_answers(vault: ScratchVault) -> bool:
    # 200: initialised, unsealed and active.
    return httpx.get(f"{vault.url}/v1/sys/health", timeout=2).status_code == 200


# A TCP connect to each HOST:PORT argument at once, from inside the network; prints those that
# opened. A refusal or an unreachable network fails at once, a dropped packet after 2 s.
PROBE = """
for target in "$@"; do
  (timeout 2 bash -c "exec 3<>/dev/tcp/${target%:*}/${target##*:}" 2>/dev/null \
    && echo "$target") &
done
wait
"""


def reachable_from(environment: ScratchEnvironment, targets: Sequence[tuple[str, int]]) -> set[str]:
    """The `host:port` targets a container on the scratch network can open a TCP connection to
    (probed from its Postgres container, which holds no capability, like every drill container)."""
    container = environment.client.containers.get(f"{environment.network}-postgres")
    arguments = [f"{host}:{port}" for host, port in targets]
    code, output = container.exec_run(["bash", "-c", PROBE, "probe", *arguments])
    if code != 0:
        raise ScratchError(f"the probe failed ({code}): {output.decode(errors='replace')[-500:]}")
    return set(output.decode().split())


def host_addresses(environment: ScratchEnvironment) -> set[str]:
    """The host's IPv4 addresses a live service may listen on and the scratch network could
    reach: docker0's (host.docker.internal), the network's own gateway, and those of the host's
    other interfaces; not loopback, nor other Docker networks' bridges."""
    raw = subprocess.run(
        ["ip", "-j", "-4", "addr", "show"], capture_output=True, text=True, check=True, timeout=10
    ).stdout
    own = bridge_name(environment.token)
    found = set()
    for interface in json.loads(raw):
        name = str(interface.get("ifname", ""))
        other_bridge = name.startswith(("br-", BRIDGE_PREFIX)) and name != own
        if name == "lo" or other_bridge:
            continue
        found |= {str(a["local"]) for a in interface.get("addr_info", []) if a.get("local")}
    return found


def require_isolation(environment: ScratchEnvironment, live_ports: Sequence[int]) -> None:
    """Raise unless a probe from inside the network reaches none of `live_ports` on any of the
    host's addresses (`host_addresses`)."""
    targets = [
        (address, port) for address in sorted(host_addresses(environment)) for port in live_ports
    ]
    opened = reachable_from(environment, targets)
    if opened:
        raise ScratchError(
            f"scratch network {environment.network} reaches live services at "
            f"{', '.join(sorted(opened))}: the host's firewall must refuse connections opened "
            f"from {BRIDGE_PREFIX}+ bridges (deploy/local/firewall.sh)"
        )
    environment.log(f"isolation checked: none of {len(targets)} live address:port pairs answers")


def _leftovers(client: docker.DockerClient, token: str) -> list[str]:
    selector = {"label": f"{LABEL_DRILL}={token}"}
    found = [f"container {c.name}" for c in client.containers.list(all=True, filters=selector)]
    found += [f"network {n.name}" for n in client.networks.list(filters=selector)]
    found += [f"volume {v.name}" for v in client.volumes.list(filters=selector)]
    return found


def teardown_scratch(docker_access: DockerAccess, token: str, log: Log) -> list[str]:
    """Remove the drill's containers (those it added included, by label), its network (after
    disconnecting anything else still attached) and volumes; then look again, and raise
    `ScratchLeftovers` if anything labelled with the token remains. The removed objects."""
    client = _client(docker_access)
    selector = {"label": f"{LABEL_DRILL}={token}"}
    name = network_name(token)
    removed, problems = [], []
    for container in client.containers.list(all=True, filters=selector):
        try:
            container.remove(force=True, v=True)
            removed.append(f"container {container.name}")
        except NotFound:
            pass
        except APIError as error:
            if "already in progress" not in str(error):
                problems.append(f"container {container.name}: {error}")
    # The engine's name filter matches substrings: only the exact name is this drill's.
    networks = {n.id: n for n in client.networks.list(filters=selector)}
    networks |= {n.id: n for n in client.networks.list(names=[name]) if n.name == name}
    for network in networks.values():
        try:
            network.reload()
            for attached in network.attrs.get("Containers") or {}:
                log(f"disconnecting {attached[:12]} (not labelled for {token}) from {network.name}")
                network.disconnect(attached, force=True)
            network.remove()
            removed.append(f"network {network.name}")
        except NotFound:
            pass
        except APIError as error:
            problems.append(f"network {network.name}: {error}")
    for volume in client.volumes.list(filters=selector):
        try:
            volume.remove(force=True)
            removed.append(f"volume {volume.name}")
        except NotFound:
            pass
        except APIError as error:
            problems.append(f"volume {volume.name}: {error}")
    for problem in problems:
        log(f"teardown of {token}: {problem}")
    leftovers = _leftovers(client, token)
    if leftovers:
        raise ScratchLeftovers(token, leftovers)
    log(f"scratch environment {token} removed ({len(removed)} objects)")
    return removed


def sweep_scratch(
    docker_access: DockerAccess,
    older_than: dt.timedelta,
    log: Log,
    now: dt.datetime | None = None,
) -> list[str]:
    """Tear down the scratch environments of drills that died: every token whose newest object
    was created before `now - older_than`. Younger ones (drills still running) are left alone.
    The swept tokens; a token that leaves something behind is logged, not raised, and swept
    again next time."""
    client = _client(docker_access)
    now = now or dt.datetime.now(dt.UTC)
    selector = {"label": LABEL_DRILL}
    labelled = [
        *(c.labels for c in client.containers.list(all=True, filters=selector)),
        *(n.attrs.get("Labels") or {} for n in client.networks.list(filters=selector)),
        *(v.attrs.get("Labels") or {} for v in client.volumes.list(filters=selector)),
    ]
    newest: dict[str, dt.datetime] = {}
    for labels in labelled:
        token = labels[LABEL_DRILL]
        created = _created(labels.get(LABEL_CREATED))
        newest[token] = max(newest.get(token, created), created)
    swept = []
    for token in sorted(t for t, created in newest.items() if created < now - older_than):
        try:
            teardown_scratch(client, token, log)
        except ScratchLeftovers as error:
            log(str(error))
            continue
        log(f"swept scratch environment {token} (created {newest[token].isoformat()})")
        swept.append(token)
    return swept


def _created(value: str | None) -> dt.datetime:
    """When an object was created; one without a readable date counts as old."""
    try:
        created = dt.datetime.fromisoformat(value or "")
    except ValueError:
        return dt.datetime.min.replace(tzinfo=dt.UTC)
    return created if created.tzinfo else created.replace(tzinfo=dt.UTC)
