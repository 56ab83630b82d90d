"""A DR drill's scratch environment on the real Docker engine: its Postgres, Redis and OpenBao
answer the host by address and the network's containers by name, the live services (the
stack's Postgres, Redis and OpenBao on docker0 and loopback, and whatever else listens on the
host) answer none of them, and a teardown or a sweep leaves nothing labelled behind."""

import datetime as dt
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import docker
import hvac
import psycopg
import pytest
import redis
from docker.errors import NotFound
from docker.models.containers import Container
from hvac.exceptions import Forbidden
from redis.backoff import NoBackoff
from redis.retry import Retry

from rp9_pipelines.resources import scratch
from rp9_pipelines.resources.docker_runtime import MIB, NANO
from rp9_pipelines.resources.postgres_dump import PgServer
from rp9_pipelines.resources.scratch import (
    BUILD_SCRIPT,
    LABEL_CREATED,
    LABEL_DRILL,
    ScratchEnvironment,
    ScratchError,
    Sizing,
    bridge_name,
    reachable_from,
    require_isolation,
    scratch_environment,
    start_scratch,
    sweep_scratch,
    teardown_scratch,
)
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack

SERVICES = ("postgres", "redis", "openbao")

# A TCP connect to each HOST:PORT argument at once, each given 3 s: "open", or "closed" (refused,
# unreachable, dropped or unresolvable), with how long the attempt took in milliseconds.
TIMED_PROBE = r"""
for target in "$@"; do
  (
    started=$(date +%s%N)
    if timeout 3 bash -c "exec 3<>/dev/tcp/${target%:*}/${target##*:}" 2>/dev/null; then
      outcome=open
    else
      outcome=closed
    fi
    echo "$target $outcome $((($(date +%s%N) - started) / 1000000))"
  ) &
done
wait
"""


def _token() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        self.lines.append(line)


@pytest.fixture(scope="module")
def environment(docker_client: docker.DockerClient) -> Iterator[ScratchEnvironment]:
    log = Log()
    started = time.monotonic()
    with scratch_environment(docker_client, _token(), log) as env:
        print(f"\nscratch environment started in {time.monotonic() - started:.1f} s")
        yield env


def _run(
    client: docker.DockerClient, env: ScratchEnvironment, script: str, *args: str, **extra: object
) -> str:
    """Run a bash script in a throwaway container on the scratch network, as the drill's n8n
    containers run: no capability, labelled for the drill; its output."""
    output: bytes = client.containers.run(
        env.image,
        entrypoint=["bash", "-c", script, "probe", *args],
        network=env.network,
        labels=env.labels,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        user="65534:65534",
        remove=True,
        **extra,
    )
    return output.decode()


def _host_addresses() -> set[str]:
    """The host's IPv4 addresses but loopback: docker0, every bridge's gateway, its own."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    return {line.split()[3].split("/")[0] for line in out.splitlines()} - {"127.0.0.1"}


def _listening_ports() -> set[int]:
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _live_ports(settings: Settings) -> set[int]:
    urls = (settings.database_url, settings.redis_url, settings.vault_addr)
    return {port for port in (urlsplit(url).port for url in urls) if port}


def _labelled(client: docker.DockerClient, token: str) -> list[str]:
    selector = {"label": f"{LABEL_DRILL}={token}"}
    return [
        *(f"container {c.name}" for c in client.containers.list(all=True, filters=selector)),
        *(f"network {n.name}" for n in client.networks.list(filters=selector)),
        *(f"volume {v.name}" for v in client.volumes.list(filters=selector)),
    ]


def test_its_postgres_takes_a_restore_from_the_host(environment: ScratchEnvironment) -> None:
    """The drill's path: pg_dump and pg_restore on the host, over TCP to the container's address."""
    url = environment.postgres.url
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CREATE DATABASE source")
        connection.execute("CREATE DATABASE restored")
        settings: dict[str, str] = dict(
            connection.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                (["shared_buffers", "max_connections", "listen_addresses", "fsync"],),
            ).fetchall()
        )
    # shared_buffers is counted in 8 kB pages.
    assert settings == {
        "shared_buffers": str(64 * 1024 // 8),
        "max_connections": "100",
        "listen_addresses": "*",
        "fsync": "off",
    }
    source = url.rsplit("/", 1)[0] + "/source"
    with psycopg.connect(source) as connection:
        connection.execute("CREATE TABLE workflow_entity (id text PRIMARY KEY, body jsonb)")
        connection.execute(
            "INSERT INTO workflow_entity SELECT 'w' || g, jsonb_build_object('n', g) "
            "FROM generate_series(1, 500) g"
        )
    server = PgServer.from_url(url)
    dump = subprocess.run(
        [server.tool("pg_dump"), "--format=custom", "--no-password"],
        capture_output=True,
        env=server.env("source"),
        check=True,
        timeout=60,
    ).stdout
    subprocess.run(
        [server.tool("pg_restore"), "--exit-on-error", "--no-password", "--dbname=restored"],
        input=dump,
        capture_output=True,
        env=server.env("restored"),
        check=True,
        timeout=60,
    )
    with psycopg.connect(url.rsplit("/", 1)[0] + "/restored") as connection:
        row = connection.execute("SELECT count(*), max(body->>'n') FROM workflow_entity").fetchone()
    assert row == (500, "99")

    wrong = url.replace(environment.postgres.password, "not-the-password")
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(wrong, connect_timeout=5)


def test_its_redis_answers_the_host_with_its_password_only(
    environment: ScratchEnvironment,
) -> None:
    client = redis.Redis.from_url(environment.redis.url, socket_timeout=5)
    assert client.ping()
    assert client.set("drill:probe", "1")
    assert client.get("drill:probe") == b"1"
    client.close()
    anonymous = redis.Redis(
        host=environment.redis.ip, port=environment.redis.port, retry=Retry(NoBackoff(), 0)
    )
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()


def test_its_openbao_keeps_a_kv_v2_secret_for_its_root_token_only(
    environment: ScratchEnvironment,
) -> None:
    vault = hvac.Client(url=environment.vault.url, token=environment.vault.token, timeout=10)
    kv = vault.secrets.kv.v2
    kv.create_or_update_secret(path="tenants/acme", secret={"encryption_key": "k" * 64})
    read = kv.read_secret_version(path="tenants/acme", raise_on_deleted_version=True)
    assert read["data"]["data"] == {"encryption_key": "k" * 64}
    assert read["data"]["metadata"]["version"] == 1
    stranger = hvac.Client(url=environment.vault.url, token="not-the-root-token", timeout=10)
    with pytest.raises(Forbidden):
        stranger.secrets.kv.v2.read_secret_version(
            path="tenants/acme", raise_on_deleted_version=True
        )


def test_containers_on_its_network_reach_the_services_by_name(
    docker_client: docker.DockerClient, environment: ScratchEnvironment
) -> None:
    script = """
psql "$1" -qAtc "SELECT 'postgres ' || current_user"
echo "redis $(REDISCLI_AUTH="$4" redis-cli -h "$2" -p "$3" ping)"
exec 3<>"/dev/tcp/$5/$6"
printf 'GET /v1/sys/health HTTP/1.0\\r\\n\\r\\n' >&3
echo "openbao $(head -1 <&3 | tr -d '\\r')"
"""
    vault = environment.vault
    output = _run(
        docker_client,
        environment,
        script,
        environment.postgres.network_url,
        environment.redis.host,
        str(environment.redis.port),
        environment.redis.password,
        vault.host,
        str(vault.port),
    )
    assert output.splitlines() == ["postgres postgres", "redis PONG", "openbao HTTP/1.0 200 OK"]
    # The resource's own probe, which the isolation check at start uses, sees them too.
    targets = [
        (environment.postgres.host, 5432),
        (environment.redis.host, 6379),
        (vault.host, 8200),
        (vault.host, 9),
    ]
    opened = reachable_from(environment, targets)
    assert opened == {f"{host}:{port}" for host, port in targets[:3]}


@pytest.fixture
def neighbour(docker_client: docker.DockerClient, environment: ScratchEnvironment) -> Iterator[str]:
    """A container listening on Docker's default bridge (docker0), the network the live tenants'
    path to the host runs through; its address."""
    container: Container = docker_client.containers.run(
        environment.image,
        entrypoint=["redis-server", "--port", "7000", "--protected-mode", "no", "--save", ""],
        user="65534:65534",
        cap_drop=["ALL"],
        labels=environment.labels,
        detach=True,
    )
    try:

        def address() -> str | None:
            container.reload()
            ip: str = container.attrs["NetworkSettings"]["Networks"]["bridge"]["IPAddress"]
            return ip if ip and redis.Redis(host=ip, port=7000, socket_timeout=1).ping() else None

        yield wait_until(address, timeout_s=30, what="the neighbour to listen")
    finally:
        container.remove(force=True)


def test_nothing_live_answers_its_network(
    settings: Settings,
    docker_client: docker.DockerClient,
    environment: ScratchEnvironment,
    neighbour: str,
) -> None:
    """From a container on the scratch network, given host.docker.internal as the platform's
    containers are: no port of any host address answers (the live Postgres, Redis and OpenBao
    among them), nor a container on another network; each attempt fails within 3 s.

    Needs the host firewall's rule for `rp9dr+` bridges (see scratch.py): Docker 20.10 gives
    an internal network's containers a default route through the bridge's address, and the
    host answers there on all its addresses."""
    gateway = docker_client.networks.get(environment.network).attrs["IPAM"]["Config"][0]["Gateway"]
    addresses = _host_addresses() | {gateway, "host.docker.internal"}
    ports = _listening_ports() | _live_ports(settings)
    targets = [f"{a}:{p}" for a in sorted(addresses) for p in sorted(ports)]
    targets.append(f"{neighbour}:7000")
    output = _run(
        docker_client,
        environment,
        TIMED_PROBE,
        *targets,
        extra_hosts={"host.docker.internal": "host-gateway"},
    )
    outcomes = {
        target: (outcome, int(ms))
        for target, outcome, ms in (line.split() for line in output.splitlines())
    }
    assert set(outcomes) == set(targets)
    opened = sorted(t for t, (outcome, _) in outcomes.items() if outcome == "open")
    assert not opened, f"reachable from the scratch network: {opened}"
    # The host refuses at once; Docker drops what would leave the network (a 3 s timeout).
    slowest = max(ms for target, (_, ms) in outcomes.items() if target != targets[-1])
    assert slowest < 2500, outcomes
    print(f"\n{len(targets)} targets closed; slowest refusal by the host {slowest} ms")
    # The check a drill's start runs, on the live services' ports.
    require_isolation(environment, sorted(_live_ports(settings)))


def test_a_start_that_reaches_a_live_port_is_refused_and_removed(
    docker_client: docker.DockerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The isolation check at start: here its own Redis stands in for a live service."""
    monkeypatch.setattr(scratch, "host_addresses", lambda env: {env.redis.ip})
    token, log = _token(), Log()
    with pytest.raises(ScratchError, match=r"reaches live services at \S+:6379"):
        start_scratch(docker_client, token, log, live_ports=[6379])
    assert _labelled(docker_client, token) == []


def test_its_containers_are_limited_unprivileged_and_keep_their_secrets_out_of_sight(
    docker_client: docker.DockerClient, environment: ScratchEnvironment
) -> None:
    network = docker_client.networks.get(environment.network)
    assert network.attrs["Internal"] is True
    assert network.attrs["Options"]["com.docker.network.bridge.name"] == bridge_name(
        environment.token
    )
    sizing = Sizing()
    limits = {"postgres": sizing.postgres, "redis": sizing.redis, "openbao": sizing.vault}
    hidden = (environment.postgres.password, environment.redis.password, environment.vault.token)
    for service in SERVICES:
        container = docker_client.containers.get(f"{environment.network}-{service}")
        attrs = container.attrs
        host = attrs["HostConfig"]
        assert container.labels[LABEL_DRILL] == environment.token
        assert not any(label.startswith("io.rp9.managed") for label in container.labels)
        assert host["Memory"] == limits[service].memory_mb * MIB
        assert host["NanoCpus"] == int(limits[service].cpu * NANO)
        assert host["PidsLimit"] == limits[service].pids
        assert host["CapDrop"] == ["ALL"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert not host["Privileged"]
        assert not host["ExtraHosts"]
        assert not attrs["Config"]["User"].startswith("0:")
        inspected = json.dumps(attrs)
        assert not any(secret in inspected for secret in hidden), service
        code, out = container.exec_run(["cat", "/proc/1/status"])
        assert code == 0
        fields = dict(line.split(":\t", 1) for line in out.decode().splitlines() if ":\t" in line)
        assert fields["CapEff"].strip() == "0000000000000000"
        assert fields["Uid"].split()[0] != "0"
        code, out = container.exec_run(["stat", "-c", "%a %u", *_secret_files(service)])
        assert code == 0, out
        uid = attrs["Config"]["User"].split(":")[0]
        assert set(out.decode().split("\n")) - {""} == {f"400 {uid}"}
        logs = container.logs().decode(errors="replace")
        assert not any(secret in logs for secret in hidden), service


def _secret_files(service: str) -> list[str]:
    names = {"postgres": "postgres.password", "redis": "redis.conf", "openbao": "openbao.token"}
    return [f"{scratch.SECRETS_DIR}/{names[service]}"]


def test_a_token_in_use_is_refused_and_its_environment_left_alone(
    docker_client: docker.DockerClient, environment: ScratchEnvironment
) -> None:
    with pytest.raises(ScratchError, match="already exists"):
        start_scratch(docker_client, environment.token, Log())
    with psycopg.connect(environment.postgres.url, connect_timeout=5) as connection:
        assert connection.execute("SELECT 1").fetchone() == (1,)


def test_teardown_leaves_nothing_labelled_with_its_token(
    docker_client: docker.DockerClient,
) -> None:
    """Also what the drill adds: a labelled container on the network goes, an unlabelled one
    attached to it is disconnected (so the network can go) and left to its owner."""
    log = Log()
    started = time.monotonic()
    with scratch_environment(docker_client, _token(), log) as env:
        start_s = time.monotonic() - started
        token, network = env.token, env.network
        assert len(_labelled(docker_client, token)) == 5  # network, volume, three containers
        added = docker_client.containers.run(
            env.image,
            entrypoint=["sleep", "300"],
            network=network,
            labels=env.labels,
            cap_drop=["ALL"],
            user="65534:65534",
            detach=True,
        )
        stray = docker_client.containers.run(
            env.image,
            entrypoint=["sleep", "300"],
            network=network,
            cap_drop=["ALL"],
            user="65534:65534",
            detach=True,
        )
        ending = time.monotonic()
    teardown_s = time.monotonic() - ending
    try:
        assert _labelled(docker_client, token) == []
        assert not [n for n in docker_client.networks.list(names=[network]) if n.name == network]
        with pytest.raises(NotFound):
            docker_client.containers.get(str(added.id))
        stray.reload()
        assert network not in stray.attrs["NetworkSettings"]["Networks"]
        assert any("disconnecting" in line for line in log.lines)
    finally:
        stray.remove(force=True)
    print(f"\nstart {start_s:.1f} s, teardown {teardown_s:.1f} s")
    assert teardown_s < 30


def test_sweep_removes_what_dead_drills_left_and_spares_running_ones(
    docker_client: docker.DockerClient, environment: ScratchEnvironment
) -> None:
    now = dt.datetime.now(dt.UTC)
    dead, young = _token(), _token()
    for token, created in ((dead, now - dt.timedelta(hours=5)), (young, now)):
        labels = {LABEL_DRILL: token, LABEL_CREATED: created.isoformat()}
        docker_client.networks.create(f"rp9-dr-{token}", internal=True, labels=labels)
        docker_client.volumes.create(f"rp9-dr-{token}-postgres", labels=labels)
        docker_client.containers.create(
            environment.image, name=f"rp9-dr-{token}-redis", labels=labels, command=["redis"]
        )
    try:
        swept = sweep_scratch(docker_client, dt.timedelta(hours=3), Log(), now=now)
        assert dead in swept
        assert young not in swept
        assert environment.token not in swept
        assert _labelled(docker_client, dead) == []
        assert len(_labelled(docker_client, young)) == 3
        assert len(_labelled(docker_client, environment.token)) == 5
    finally:
        teardown_scratch(docker_client, young, Log())


def test_the_image_is_named_by_its_inputs_and_built_once(environment: ScratchEnvironment) -> None:
    def build(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(BUILD_SCRIPT), *args], capture_output=True, text=True, check=True
        )

    assert build("tag").stdout.strip() == environment.image
    started = time.monotonic()
    again = build()
    assert again.stdout.strip() == environment.image
    assert "already built" in again.stderr
    assert time.monotonic() - started < 10
