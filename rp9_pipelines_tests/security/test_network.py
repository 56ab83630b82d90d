"""Network and container attacks from inside a tenant's real main container (`docker exec`, as
code that escaped n8n would run) and from a workflow's HTTP Request node: only the tenant's own
Postgres and Redis answer on the host, not the platform's services, not whatever else listens
on the host's addresses, not another tenant's containers. The containers hold no capability,
rotate their logs and run n8n hardened."""

import http.server
import json
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import docker
import pytest
from docker.models.containers import Container

from rp9_pipelines.domain.stack import LOG_OPTIONS, hardening_env
from rp9_pipelines.domain.tenants import TenantNames
from rp9_pipelines.resources.docker_runtime import DockerRuntimeResource
from rp9_pipelines.resources.vault import VaultResource
from rp9_pipelines.settings import Settings
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.conftest import Served
from rp9_pipelines_tests.n8n_workflows import node, respond, webhook, workflow
from rp9_pipelines_tests.tenants.conftest import TenantN8n, unique_slug
from rp9_pipelines_tests.waiting import wait_until

pytestmark = pytest.mark.stack

# TCP connects from inside a container, all at once, each given 1.5 s: "open", "timeout"
# (dropped) or the error code (ECONNREFUSED when nothing listens or the firewall rejects).
PROBE = """
const net = require('net');
const probe = ([host, port]) => new Promise((done) => {
  const socket = net.connect({ host, port, timeout: 1500 });
  let settled = false;
  const end = (outcome) => {
    if (!settled) { settled = true; socket.destroy(); done([host, port, outcome]); }
  };
  socket.on('connect', () => end('open'));
  socket.on('timeout', () => end('timeout'));
  socket.on('error', (error) => end(error.code || String(error)));
});
Promise.all(JSON.parse(process.argv[1]).map(probe)).then((r) => console.log(JSON.stringify(r)));
"""

# The platform's ports in the local stack (deploy/local/stack.sh), the Docker API's, and the usual
# web and SSH ports; the test adds whatever listens on the host when it runs.
PLATFORM_PORTS = {
    22, 80, 443, 2024, 2375, 2376, 3000, 8080, 8088, 8089, 12111,
    54321, 54330, 55432, 56379, 58200, 58201, 59000, 59090,
}  # fmt: skip


@pytest.fixture(scope="module")
def tenant(api: Api) -> Iterator[dict[str, Any]]:
    created = api.create_tenant(slug=unique_slug("sec"), name="Network attacker", plan="starter")
    yield created
    response = api.request("DELETE", f"/tenants/{created['id']}?purge=true")
    assert response.status_code == 202, response.text
    assert api.wait_run(response.json()["run_id"])["status"] == "SUCCESS"


@pytest.fixture(scope="module")
def names(tenant: dict[str, Any]) -> TenantNames:
    return TenantNames(tenant["slug"], tenant["tier"])


@pytest.fixture(scope="module")
def neighbour(
    settings: Settings, runtime: DockerRuntimeResource
) -> Iterator[tuple[Container, str]]:
    """Another tenant's container as the network sees it: its own bridge network from the
    tenant pool, something listening on n8n's port. Returns it and its address."""
    name = f"rp9-t-nb{uuid.uuid4().hex[:6]}"
    runtime.ensure_network(name, name)
    client = runtime.client()
    server = "require('net').createServer((s) => s.end('hi')).listen(5678)"
    container = client.containers.run(
        settings.image,
        entrypoint=["node", "-e", server],
        name=name,
        network=name,
        detach=True,
        cap_drop=["ALL"],
        user="node",
    )
    try:

        def address() -> str | None:
            container.reload()
            ip: str = container.attrs["NetworkSettings"]["Networks"][name]["IPAddress"]
            return ip if ip and _listens(ip, 5678) else None

        yield container, wait_until(address, timeout_s=30, what="the neighbour to listen")
    finally:
        container.remove(force=True)
        runtime.remove_network(name)


@pytest.fixture(scope="module")
def open_to_all() -> Iterator[int]:
    """A host process listening on every address (0.0.0.0), as anything started carelessly on
    the host would: only the firewall keeps tenants from it."""
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 0), http.server.SimpleHTTPRequestHandler)  # noqa: S104
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


def _listens(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _host_addresses() -> set[str]:
    """The host's IPv4 addresses but loopback: docker0, every bridge's gateway, its own."""
    out = subprocess.run(
        ["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True
    ).stdout
    found = {line.split()[3].split("/")[0] for line in out.splitlines()}
    return {a for a in found if not a.startswith("127.")}


def _listening_ports() -> set[int]:
    """Every TCP port something listens on on the host, whatever its address."""
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def _probe(runtime: DockerRuntimeResource, container: str, targets: list[tuple[str, int]]) -> Any:
    code, out, err = runtime.exec(container, ["node", "-e", PROBE, json.dumps(targets)])
    assert code == 0, err
    return {(host, port): outcome for host, port, outcome in json.loads(out)}


def _services_host(runtime: DockerRuntimeResource, container: str) -> str:
    """What host.docker.internal is in the container: the host's address on docker0."""
    code, out, err = runtime.exec(container, ["cat", "/etc/hosts"])
    assert code == 0, err
    [address] = [line.split()[0] for line in out.splitlines() if "host.docker.internal" in line]
    return address


def _gateway(runtime: DockerRuntimeResource, network: str) -> str:
    attrs = runtime.client().networks.get(network).attrs
    gateway: str = attrs["IPAM"]["Config"][0]["Gateway"]
    return gateway


def test_from_its_container_only_its_postgres_and_redis_answer_on_the_host(
    settings: Settings,
    runtime: DockerRuntimeResource,
    api_server: Served,
    dagster_webserver: Served,
    names: TenantNames,
    open_to_all: int,
) -> None:
    main = names.container("main")
    services = _services_host(runtime, main)
    gateway = _gateway(runtime, names.network)
    postgres = urlsplit(settings.database_url).port
    redis_port = urlsplit(settings.redis_url).port
    session = {urlsplit(s.url).port for s in (api_server, dagster_webserver)}
    ports = PLATFORM_PORTS | _listening_ports() | {p for p in session if p} | {open_to_all}
    addresses = _host_addresses() | {services, gateway}
    assert _listens("127.0.0.1", open_to_all)  # the host itself reaches it

    outcomes = _probe(runtime, main, [(a, p) for a in sorted(addresses) for p in sorted(ports)])

    opened = {target for target, outcome in outcomes.items() if outcome == "open"}
    assert opened == {(services, postgres), (services, redis_port)}, outcomes
    # Refused at once (the firewall's reset), not left to time out: nothing to wait on.
    assert {o for o in outcomes.values() if o != "open"} == {"ECONNREFUSED"}


def test_another_tenants_container_is_out_of_reach_and_its_own_worker_is_not(
    runtime: DockerRuntimeResource, names: TenantNames, neighbour: tuple[Container, str]
) -> None:
    _, other = neighbour
    worker = runtime.state(names.container("worker", index=1))
    assert worker is not None
    assert worker.ip is not None
    outcomes = _probe(runtime, names.container("main"), [(other, 5678), (worker.ip, 5678)])
    assert outcomes[(worker.ip, 5678)] == "open"
    # Docker's isolation between bridge networks drops the packets.
    assert outcomes[(other, 5678)] == "timeout"


def probe_workflow(path: str) -> dict[str, Any]:
    """Webhook → HTTP Request to the URL it is sent (errors become its output) → Respond with
    whether the request reached anything and the error it met."""
    fetch = node(
        "Fetch",
        "httpRequest",
        4.2,
        240,
        onError="continueRegularOutput",
        parameters={
            "url": "={{ $json.body.url }}",
            "options": {
                "timeout": 3000,
                "response": {"response": {"neverError": True, "responseFormat": "text"}},
            },
        },
    )
    answer = respond(
        "={{ { reached: !$json.error, "
        "error: $json.error ? JSON.stringify($json.error).slice(0, 500) : null } }}",
        480,
    )
    return workflow(f"probe {path}", [webhook(path), fetch, answer])


def test_a_workflows_http_request_reaches_no_platform_service(
    settings: Settings,
    vault: VaultResource,
    runtime: DockerRuntimeResource,
    api_server: Served,
    tenant: dict[str, Any],
    names: TenantNames,
    open_to_all: int,
) -> None:
    n8n = TenantN8n(settings, vault, tenant)
    created = n8n.http.post("/api/v1/workflows", json=probe_workflow("probe"))
    assert created.status_code == 200, created.text
    activated = n8n.http.post(f"/api/v1/workflows/{created.json()['id']}/activate")
    assert activated.status_code == 200, activated.text
    services = _services_host(runtime, names.container("main"))
    gateway = _gateway(runtime, names.network)
    api_port = urlsplit(api_server.url).port

    def fetch(url: str) -> dict[str, Any]:
        answer = n8n.call("probe", {"url": url})
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result

    # The worker runs the execution: its own health endpoint answers.
    assert fetch("http://127.0.0.1:5678/healthz")["reached"]
    for host in (services, gateway):
        for port in (open_to_all, api_port, 3000, 58200, 59000, 59090, 8088, 8089, 12111, 2375):
            outcome = fetch(f"http://{host}:{port}/")
            assert not outcome["reached"], (host, port, outcome)
            assert "ECONNREFUSED" in (outcome["error"] or ""), (host, port, outcome)


def test_its_containers_hold_no_capability_rotate_logs_and_run_n8n_hardened(
    runtime: DockerRuntimeResource, docker_client: docker.DockerClient, names: TenantNames
) -> None:
    for role, index in (("main", 0), ("worker", 1)):
        name = names.container(role, index=index)
        attrs = docker_client.containers.get(name).attrs
        host = attrs["HostConfig"]
        assert host["CapDrop"] == ["ALL"]
        assert not host["CapAdd"]
        assert "no-new-privileges" in host["SecurityOpt"]
        assert host["LogConfig"] == {"Type": "json-file", "Config": LOG_OPTIONS}
        # Every line it logged says whose it is (what the log shipper keeps as labels).
        labels = attrs["Config"]["Labels"]
        owner = {key: labels[key] for key in ("io.rp9.tenant", "io.rp9.role", "io.rp9.color")}
        assert owner["io.rp9.tenant"] == names.slug
        assert owner["io.rp9.role"] == role
        lines = Path(attrs["LogPath"]).read_text().splitlines()
        assert lines, f"{name} logged nothing"
        assert all(json.loads(line)["attrs"] == owner for line in lines), lines[:3]
        env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
        for var, value in hardening_env("starter").items():
            assert env[var] == value, (name, var)
        # What n8n and anything it runs hold: no capability, none to gain.
        code, status, _ = runtime.exec(name, ["cat", "/proc/1/status"])
        assert code == 0
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert fields["CapEff"].strip() == fields["CapBnd"].strip() == "0000000000000000"
        assert fields["NoNewPrivs"].strip() == "1"
