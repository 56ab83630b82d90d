"""A private ACME certificate authority for tests, and a Traefik of the test's own that gets its
certificates from it.

- Pebble (Debian's `pebble`, Let's Encrypt's RFC 8555 test server) issues the certificates. Its
  validation authority really validates: it resolves a name through `pebble-challtestsrv` (same
  package), which answers every A query with 127.0.0.1 (and no AAAA), then fetches the HTTP-01
  token from that address on the port it is told, Traefik's `web` entry point.
- Pebble serves its ACME and management APIs over HTTPS with a certificate made here by a
  throwaway CA (`ListenerTls`; the package ships no test certificate); Traefik's ACME client
  trusts that CA through `LEGO_CA_CERTIFICATES`.
- Pebble's issuing root and intermediate are new on every start: `Pebble.issuing_chain` reads
  them from its management API, to verify what Traefik serves with.

Every process listens on 127.0.0.1 only, on free ports, and is stopped when its context exits.
"""

import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

PEBBLE = "pebble"
CHALLTESTSRV = "pebble-challtestsrv"
# The certificate resolver's name in the test's Traefik.
RESOLVER = "pebble"
# The live stack's Docker provider constraint (deploy/local/stack.sh).
MANAGED_CONSTRAINT = "Label(`io.rp9.managed`, `true`)"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Poll `check` until it holds; raise at the deadline with its last error."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        try:
            if check():
                return
        except Exception as error:
            last = error
        if time.monotonic() >= deadline:
            cause = f" (last error: {last!r})" if last else ""
            raise TimeoutError(f"{what}: not ready after {timeout_s} s{cause}")
        time.sleep(0.2)


def ensure_pebble() -> None:
    """Install Debian's `pebble` (Pebble and pebble-challtestsrv) when it is missing; raise if
    that is not possible."""
    if shutil.which(PEBBLE) and shutil.which(CHALLTESTSRV):
        return
    if os.geteuid() != 0:
        raise RuntimeError("Debian's `pebble` package is missing and only root can install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", PEBBLE]
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
        # A machine whose package lists are stale or missing.
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        subprocess.run(install, env=env, capture_output=True, check=True)
    if not (shutil.which(PEBBLE) and shutil.which(CHALLTESTSRV)):
        raise RuntimeError("apt-get installed `pebble`, yet its binaries are not on PATH")


@dataclass(frozen=True)
class ListenerTls:
    """The certificate Pebble serves its own APIs with, and the CA that signed it."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def create(cls, directory: Path) -> "ListenerTls":
        """A throwaway CA, and a certificate for 127.0.0.1 and localhost signed by it."""
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rp9 test listener CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        tls = cls(directory / "listener-ca.pem", directory / "listener.pem", directory / "key.pem")
        tls.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        tls.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        tls.key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        tls.key.chmod(0o600)
        return tls


@dataclass(frozen=True)
class Process:
    process: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        """True while it runs; raises with the end of its log once it has exited."""
        if self.process.poll() is not None:
            raise RuntimeError(
                f"{self.process.args!r} exited {self.process.returncode}: {tail(self.log)}"
            )
        return True


def tail(log: Path, chars: int = 3000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


@contextmanager
def running(
    command: list[str], *, log: Path, env: dict[str, str] | None = None
) -> Iterator[Process]:
    """Run `command`, its output in `log`, until the context exits."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        yield Process(process, log)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class Pebble:
    directory_url: str
    management_url: str
    listener: ListenerTls
    logs: tuple[Path, ...]

    def issuing_chain(self) -> str:
        """This run's issuing root and intermediate, PEM."""
        verify = ssl.create_default_context(cafile=str(self.listener.ca))
        with httpx.Client(base_url=self.management_url, verify=verify, timeout=10) as http:
            parts = [http.get(path) for path in ("/roots/0", "/intermediates/0")]
        for part in parts:
            part.raise_for_status()
        return "".join(part.text for part in parts)


@contextmanager
def pebble(directory: Path, *, http_port: int, tls_port: int) -> Iterator[Pebble]:
    """Pebble, validating HTTP-01 on `http_port` (TLS-ALPN-01 on `tls_port`) of the address its
    DNS server, pebble-challtestsrv, gives every name: 127.0.0.1."""
    ensure_pebble()
    directory.mkdir(parents=True, exist_ok=True)
    tls = ListenerTls.create(directory)
    dns_port, dns_admin_port, acme_port, admin_port = (free_port() for _ in range(4))
    config = {
        "pebble": {
            "listenAddress": f"127.0.0.1:{acme_port}",
            "managementListenAddress": f"127.0.0.1:{admin_port}",
            "certificate": str(tls.cert),
            "privateKey": str(tls.key),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    (directory / "pebble.json").write_text(json.dumps(config, indent=2))
    # DNS only: its own challenge servers are off (Traefik answers the challenges).
    dns_command = [
        CHALLTESTSRV,
        *("-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""),
        *("-dns01", f"127.0.0.1:{dns_port}", "-management", f"127.0.0.1:{dns_admin_port}"),
        *("-http01", "", "-https01", "", "-tlsalpn01", ""),
    ]
    pebble_command = [
        PEBBLE,
        *("-config", str(directory / "pebble.json"), "-dnsserver", f"127.0.0.1:{dns_port}"),
    ]
    # No random sleep before a validation, no good nonce refused at random: only speed changes.
    env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0"}
    env.pop("PEBBLE_VA_ALWAYS_VALID", None)
    with running(dns_command, log=directory / "challtestsrv.log") as dns:
        wait_for(lambda: dns.alive() and _listening(dns_port), timeout_s=20, what=CHALLTESTSRV)
        with running(pebble_command, log=directory / "pebble.log", env=env) as server:
            served = Pebble(
                directory_url=f"https://127.0.0.1:{acme_port}/dir",
                management_url=f"https://127.0.0.1:{admin_port}",
                listener=tls,
                logs=(dns.log, server.log),
            )

            def ready() -> bool:
                verify = ssl.create_default_context(cafile=str(tls.ca))
                answer = server.alive() and httpx.get(served.directory_url, verify=verify)
                return bool(answer and answer.status_code == 200)

            wait_for(ready, timeout_s=30, what=PEBBLE)
            yield served


@dataclass(frozen=True)
class Answer:
    """An HTTPS answer, with the certificate it came with."""

    status_code: int
    text: str
    certificate: x509.Certificate

    @property
    def names(self) -> list[str]:
        san = self.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        return san.value.get_values_for_type(x509.DNSName)


@dataclass(frozen=True)
class Traefik:
    web_port: int
    websecure_port: int
    api_url: str
    log: Path

    def get(self, name: str, path: str, verify: ssl.SSLContext) -> Answer:
        """GET https://<name><path> from `websecure`, as a client that resolves `name` to
        127.0.0.1: `name` is the TLS server name (SNI, and what the certificate is checked
        against) and the Host header."""
        url = f"https://127.0.0.1:{self.websecure_port}{path}"
        with (
            httpx.Client(verify=verify, timeout=10) as http,
            http.stream(
                "GET", url, headers={"Host": name}, extensions={"sni_hostname": name}
            ) as response,
        ):
            tls = response.extensions["network_stream"].get_extra_info("ssl_object")
            der = tls.getpeercert(True)
            return Answer(response.status_code, response.read().decode(), load_der(der))

    def routers(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.api_url}/api/http/routers", timeout=5)
        response.raise_for_status()
        routers: list[dict[str, Any]] = response.json()
        return routers


def load_der(der: bytes) -> x509.Certificate:
    return x509.load_der_x509_certificate(der)


def traefik_config(
    directory: Path, *, web: int, websecure: int, admin: int, ca_server: str, email: str
) -> dict[str, Any]:
    """Static configuration: `web` (where Pebble validates HTTP-01), `websecure`, the live
    stack's Docker provider and constraint, and the ACME resolver `RESOLVER`."""
    return {
        "entryPoints": {
            "web": {"address": f"127.0.0.1:{web}"},
            "websecure": {"address": f"127.0.0.1:{websecure}"},
            "traefik": {"address": f"127.0.0.1:{admin}"},
        },
        "providers": {
            "providersThrottleDuration": "200ms",
            "docker": {
                "endpoint": "unix:///var/run/docker.sock",
                "exposedByDefault": False,
                "constraints": MANAGED_CONSTRAINT,
            },
            "file": {"directory": str(directory / "dynamic"), "watch": True},
        },
        "certificatesResolvers": {
            RESOLVER: {
                "acme": {
                    "email": email,
                    "caServer": ca_server,
                    "storage": str(directory / "acme.json"),
                    "httpChallenge": {"entryPoint": "web"},
                }
            }
        },
        "api": {"insecure": True},
        "ping": {"entryPoint": "traefik"},
        "log": {"level": "INFO"},
    }


@contextmanager
def traefik(
    binary: Path,
    directory: Path,
    ca: Pebble,
    *,
    web: int,
    websecure: int,
    default_host: str,
    email: str = "ops@rp9.test",
    dynamic: dict[str, dict[str, Any]] | None = None,
) -> Iterator[Traefik]:
    """A Traefik of the test's own, `web` and `websecure` on those 127.0.0.1 ports and its API
    on a free one, with Pebble as its ACME CA. Its default certificate (served to a client
    whose server name no router claims) is one Pebble issues for `default_host`; it is ready
    once it serves that one. `dynamic`: more files for its file provider, by name (the
    middlewares the routers it will see name)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "dynamic").mkdir(exist_ok=True)
    admin = free_port()
    config = traefik_config(
        directory,
        web=web,
        websecure=websecure,
        admin=admin,
        ca_server=ca.directory_url,
        email=email,
    )
    # JSON is YAML; Traefik picks the format by the file's extension.
    (directory / "traefik.yaml").write_text(json.dumps(config, indent=2))
    default = {"resolver": RESOLVER, "domain": {"main": default_host}}
    stores = {"tls": {"stores": {"default": {"defaultGeneratedCert": default}}}}
    (directory / "dynamic" / "default-certificate.yaml").write_text(json.dumps(stores))
    for name, content in (dynamic or {}).items():
        (directory / "dynamic" / f"{name}.yaml").write_text(json.dumps(content))
    env = {**os.environ, "LEGO_CA_CERTIFICATES": str(ca.listener.ca)}
    command = [str(binary), f"--configFile={directory / 'traefik.yaml'}"]
    with running(command, log=directory / "traefik.log", env=env) as server:
        served = Traefik(web, websecure, f"http://127.0.0.1:{admin}", server.log)
        wait_for(
            lambda: (
                server.alive() and httpx.get(f"{served.api_url}/ping", timeout=2).status_code == 200
            ),
            timeout_s=30,
            what="Traefik",
        )
        verify = ssl.create_default_context(cadata=ca.issuing_chain())
        wait_for(
            lambda: server.alive() and bool(served.get(default_host, "/", verify)),
            timeout_s=60,
            what=f"Traefik's default certificate for {default_host} from Pebble",
        )
        yield served
