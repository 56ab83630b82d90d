"""Structural checks of the production deployment, run by validate.sh on the configuration as
Compose resolves it (`docker compose config`, with .env.example's values) and on the files
beside it. Every problem is printed; the exit status is 1 if there is any.

    validate.py --project deploy/production --compose deploy/production/compose.yaml \
                --resolved /tmp/resolved.yaml

Reads Compose v2's long forms and Compose v1's short ones alike (ports, volumes, secrets).
"""

import argparse
import ipaddress
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import yaml

EXPECTED_SERVICES = frozenset(
    {
        "traefik",
        "postgres",
        "redis",
        "openbao",
        "api",
        "dagster-webserver",
        "dagster-daemon",
        "prometheus",
        "alertmanager",
        "grafana",
        "loki",
    }
)
# In the host's network namespace, because they reach tenants' bridge networks (compose.yaml's
# header says why for each).
HOST_NETWORK = frozenset({"traefik", "prometheus", "dagster-daemon"})
PUBLIC_PORTS = frozenset({80, 443})
# Published for tenants' containers on the Docker gateway address only.
TENANT_FACING = {"postgres": 5432, "redis": 6379}
# Never routed by Traefik.
INTERNAL_ONLY = ("postgres", "redis", "openbao", "prometheus", "alertmanager", "loki")
# Routed, and only behind basic auth.
OPERATOR_UIS = ("dagster-webserver", "grafana")
# Where each service keeps its state: a named volume, never the container's own layer.
STATE = {
    "traefik": "/letsencrypt",
    "postgres": "/var/lib/postgresql/data",
    "redis": "/data",
    "openbao": "/openbao/file",
    "dagster-webserver": "/opt/dagster/home/storage",
    "dagster-daemon": "/opt/dagster/home/storage",
    "prometheus": "/prometheus",
    "alertmanager": "/alertmanager",
    "grafana": "/var/lib/grafana",
    "loki": "/loki",
}
RESTART_POLICIES = frozenset({"always", "unless-stopped"})
MANAGED_CONSTRAINT = "Label(`io.rp9.managed`,`true`)"
ACME_RESOLVER = "letsencrypt"
DOCKER_SOCKET = "/var/run/docker.sock"
# Read the host's whole filesystem tree (read-only) for its filesystems' metrics.
HOST_ROOT_READERS = frozenset({"node-exporter"})
PROMETHEUS_CONFIG_DIR = "/etc/prometheus"

SECRET_NAME = re.compile(r"PASSWORD|_SECRET$|TOKEN$|_KEY$|_KEY_ID$")
# Values that must never appear in a committed file.
SECRET_VALUES = {
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "Stripe key": re.compile(r"\b[rs]k_(?:live|test)_[0-9A-Za-z]{8,}"),
    "Stripe webhook secret": re.compile(r"\bwhsec_[0-9A-Za-z]{8,}"),
    "AWS access key": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "JWT": re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}"),
    "bcrypt hash": re.compile(r"\$2[aby]\$\d\d\$[./A-Za-z0-9]{20,}"),
    "hex secret": re.compile(r"\b[0-9a-fA-F]{32,}\b"),
    "OpenBao/Vault token": re.compile(r"\b(?:hvs|hvb|s)\.[A-Za-z0-9]{20,}"),
    "password in a URL": re.compile(r"://[^/\s:@${}]+:(?!__PASS__@)[^@\s${}]+@"),
}
PLACEHOLDER = re.compile(r"change-me")
URL_CREDENTIAL_PLACEHOLDER = "__PASS__"
VARIABLE = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(:?[-?+])?")
ENV_LINE = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")


class Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def __call__(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")

    def check(self, ok: bool, where: str, what: str) -> None:
        if not ok:
            self(where, what)


@dataclass(frozen=True)
class Port:
    host_ip: str
    published: str
    target: int


@dataclass(frozen=True)
class Mount:
    kind: str  # "volume" | "bind"
    source: str
    target: str
    read_only: bool = False


def load_yaml(path: Path) -> Any:
    with path.open() as handle:
        return yaml.safe_load(handle)


def ports_of(service: dict[str, Any]) -> list[Port]:
    found = []
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            host_ip = str(entry.get("host_ip") or "")
            found.append(Port(host_ip, str(entry.get("published", "")), int(entry["target"])))
            continue
        spec = str(entry).split("/", 1)[0]
        host_ip = ""
        if spec.startswith("["):  # [::1]:80:80
            host_ip, _, spec = spec[1:].partition("]:")
        parts = spec.split(":")
        if len(parts) == 3:
            host_ip, published, target = parts
        elif len(parts) == 2:
            published, target = parts
        else:
            published, target = "", parts[0]
        found.append(Port(host_ip, published, int(target)))
    return found


def mounts_of(service: dict[str, Any]) -> list[Mount]:
    found = []
    for entry in service.get("volumes") or []:
        if isinstance(entry, dict):
            kind = str(entry.get("type", "volume"))
            read_only = bool(entry.get("read_only"))
            found.append(Mount(kind, str(entry.get("source", "")), str(entry["target"]), read_only))
            continue
        parts = str(entry).split(":")
        if len(parts) == 1:  # anonymous volume
            found.append(Mount("volume", "", parts[0]))
            continue
        source, target = parts[0], parts[1]
        kind = "bind" if source.startswith(("/", ".", "~")) else "volume"
        read_only = len(parts) > 2 and "ro" in parts[2].split(",")
        found.append(Mount(kind, source, target, read_only))
    return found


def host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def is_unspecified(host: str) -> bool:
    return host in ("", "0.0.0.0", "::", "*")  # noqa: S104


def is_private_address(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return (address.is_private or address.is_loopback) and not address.is_unspecified


def image_tag_problem(image: str) -> str | None:
    if "@sha256:" in image:
        return None
    name_end = image.rfind("/")
    tag_sep = image.rfind(":")
    if tag_sep <= name_end:
        return f"image {image!r} has no tag (that is `latest`)"
    if image[tag_sep + 1 :] == "latest":
        return f"image {image!r} uses the `latest` tag"
    return None


def labels_of(service: dict[str, Any]) -> dict[str, str]:
    labels = service.get("labels") or {}
    if isinstance(labels, list):
        return dict(str(item).split("=", 1) for item in labels)
    return {str(k): str(v) for k, v in labels.items()}


def routers_of(labels: dict[str, str]) -> dict[str, dict[str, str]]:
    routers: dict[str, dict[str, str]] = {}
    for key, value in labels.items():
        match = re.fullmatch(r"traefik\.http\.routers\.([^.]+)\.(.+)", key)
        if match:
            routers.setdefault(match.group(1), {})[match.group(2)] = value
    return routers


def parse_env_file(path: Path) -> tuple[dict[str, str], list[str]]:
    """The variables of an env file, and the ones with no comment above them in their block."""
    values: dict[str, str] = {}
    undocumented: list[str] = []
    commented = False
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not stripped:
            commented = False
        elif stripped.startswith("#"):
            commented = True
        elif match := ENV_LINE.match(stripped):
            values[match.group(1)] = match.group(2)
            if not commented:
                undocumented.append(match.group(1))
    return values, undocumented


def flag_value(command: Iterable[Any], flag: str) -> str | None:
    for item in command:
        text = str(item)
        if text.startswith(flag + "="):
            return text.split("=", 1)[1]
    return None


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(str(item).split("=", 1) for item in env if "=" in str(item))
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


class Checker:
    def __init__(self, project: Path, compose_file: Path, resolved: dict[str, Any]) -> None:
        self.project = project.resolve()
        self.root = self.project.parent.parent
        self.compose_file = compose_file
        self.config = resolved
        self.services: dict[str, dict[str, Any]] = resolved.get("services") or {}
        self.example, self.undocumented = parse_env_file(project / ".env.example")
        self.problems = Problems()
        self.traefik_static: dict[str, Any] = load_yaml(project / "traefik" / "traefik.yml") or {}

    def run(self) -> list[str]:
        self.check_services()
        self.check_listeners()
        self.check_traefik_static()
        self.check_routes()
        self.check_state()
        self.check_files()
        self.check_settings_agree()
        self.check_env_example()
        self.check_no_secrets()
        self.check_dockerfile()
        return self.problems.items

    # Every service: present, pinned, healthy, restarted.
    def check_services(self) -> None:
        missing = EXPECTED_SERVICES - set(self.services)
        self.problems.check(not missing, "compose", f"services missing: {sorted(missing)}")
        for name, service in self.services.items():
            image = service.get("image")
            if not image:
                self.problems(name, "no image: name and pin every image")
            elif problem := image_tag_problem(str(image)):
                self.problems(name, problem)
            self.problems.check(
                service.get("restart") in RESTART_POLICIES,
                name,
                f"restart policy {service.get('restart')!r}, not one of {sorted(RESTART_POLICIES)}",
            )
            health = service.get("healthcheck") or {}
            self.problems.check(
                bool(health.get("test")) and not health.get("disable"),
                name,
                "no healthcheck",
            )

    # What listens where: only Traefik publicly (80, 443); Postgres and Redis on the Docker
    # gateway for tenants; nothing else published; host networking only where it must be.
    def check_listeners(self) -> None:
        gateway = self.example.get("TENANT_GATEWAY_IP", "")
        for name, service in self.services.items():
            host_mode = service.get("network_mode") == "host"
            if host_mode:
                self.problems.check(
                    name in HOST_NETWORK,
                    name,
                    f"network_mode: host is reserved for {sorted(HOST_NETWORK)}",
                )
            for port in ports_of(service):
                where = f"{name} ports"
                if name == "traefik":
                    self.problems.check(
                        port.target in PUBLIC_PORTS and port.published == str(port.target),
                        where,
                        f"Traefik publishes only 80 and 443, not {port}",
                    )
                elif name in TENANT_FACING:
                    expected = TENANT_FACING[name]
                    self.problems.check(
                        port.target == expected and port.published == str(expected),
                        where,
                        f"only {expected}:{expected} for tenants, not {port}",
                    )
                    self.problems.check(
                        port.host_ip == gateway and is_private_address(gateway),
                        where,
                        f"published on {port.host_ip or 'every address'}: bind it to the Docker "
                        f"gateway TENANT_GATEWAY_IP ({gateway or 'unset'}), a private address",
                    )
                else:
                    self.problems(
                        where, f"publishes {port}: only Traefik is reachable from outside"
                    )
        if (self.services.get("prometheus") or {}).get("network_mode") == "host":
            listen = flag_value(
                self.services["prometheus"].get("command") or [], "--web.listen-address"
            )
            self.check_private_listener("prometheus", "--web.listen-address", listen)

    def check_private_listener(self, name: str, what: str, address: str | None) -> None:
        if address is None:
            self.problems(
                name, f"{what} is not set: on the host network it would listen on every address"
            )
            return
        host, _ = host_port(address)
        self.problems.check(
            is_private_address(host), name, f"{what}={address} is not a private, specific address"
        )

    # Traefik's static configuration.
    def check_traefik_static(self) -> None:
        where = "traefik/traefik.yml"
        static = self.traefik_static
        entrypoints: dict[str, Any] = static.get("entryPoints") or {}
        public: dict[int, str] = {}
        for name, entry in entrypoints.items():
            host, port = host_port(str((entry or {}).get("address", "")))
            if is_unspecified(host):
                public[port] = name
            elif not is_private_address(host):
                self.problems(where, f"entrypoint {name} listens on {host}, a public address")
        self.problems.check(
            set(public) == PUBLIC_PORTS,
            where,
            f"public entrypoints on ports {sorted(public)}; exactly 80 and 443 expected",
        )
        web = entrypoints.get(public.get(80, ""), {}) or {}
        redirect = ((web.get("http") or {}).get("redirections") or {}).get("entryPoint") or {}
        self.problems.check(
            redirect.get("scheme") == "https" and redirect.get("to") == public.get(443),
            where,
            "the entrypoint on :80 must redirect to the one on :443 over https",
        )
        acme = ((static.get("certificatesResolvers") or {}).get(ACME_RESOLVER) or {}).get("acme")
        if not acme:
            self.problems(where, f"no ACME certificate resolver named {ACME_RESOLVER}")
        else:
            self.problems.check(
                acme.get("email") == "__ACME_EMAIL__",
                where,
                "the ACME e-mail must be the __ACME_EMAIL__ placeholder (filled from ACME_EMAIL)",
            )
            self.problems.check(
                "tlsChallenge" in acme or "httpChallenge" in acme,
                where,
                "the ACME resolver needs a TLS-ALPN or HTTP challenge",
            )
            storage = str(acme.get("storage", ""))
            self.problems.check(
                any(
                    m.kind == "volume" and storage.startswith(m.target.rstrip("/") + "/")
                    for m in mounts_of(self.services.get("traefik") or {})
                ),
                where,
                f"ACME storage {storage} is not on a volume of the traefik service",
            )
        providers = static.get("providers") or {}
        docker = providers.get("docker") or {}
        self.problems.check(
            docker.get("exposedByDefault") is False,
            where,
            "the Docker provider must have exposedByDefault: false",
        )
        self.problems.check(
            str(docker.get("constraints", "")).replace(" ", "") == MANAGED_CONSTRAINT,
            where,
            f"the Docker provider's constraint must be {MANAGED_CONSTRAINT}",
        )
        file_dir = str((providers.get("file") or {}).get("directory", ""))
        self.problems.check(bool(file_dir), where, "no file provider directory")
        for feature in ("ping", "api"):
            entry = (static.get(feature) or {}).get("entryPoint", "traefik")
            self.problems.check(
                entry not in public.values(), where, f"{feature} is on a public entrypoint"
            )
        metrics = ((static.get("metrics") or {}).get("prometheus") or {}).get("entryPoint")
        self.problems.check(
            metrics is not None and metrics not in public.values(),
            where,
            "Prometheus metrics must be on an internal entrypoint",
        )

    # Routes: the operator UIs behind basic auth, nothing internal routed, every route on TLS.
    def check_routes(self) -> None:
        static_entrypoints = self.traefik_static.get("entryPoints") or {}
        public_tls = [
            name
            for name, entry in static_entrypoints.items()
            if host_port(str((entry or {}).get("address", "")))[1] == 443
        ]
        middlewares: dict[str, dict[str, str]] = {}
        for service in self.services.values():
            for key, value in labels_of(service).items():
                match = re.fullmatch(r"traefik\.http\.middlewares\.([^.]+)\.(.+)", key)
                if match:
                    middlewares.setdefault(match.group(1), {})[match.group(2).lower()] = value
        traefik_secrets = {
            (s if isinstance(s, str) else str(s.get("target") or s.get("source")))
            for s in (self.services.get("traefik") or {}).get("secrets") or []
        }
        for name, service in self.services.items():
            labels = labels_of(service)
            enabled = labels.get("traefik.enable") == "true"
            if name in INTERNAL_ONLY:
                self.problems.check(
                    not enabled, name, "internal only: must not be routed by Traefik"
                )
                continue
            routers = routers_of(labels)
            if name in OPERATOR_UIS:
                self.problems.check(enabled and bool(routers), name, "not routed by Traefik")
            if routers:
                self.problems.check(
                    labels.get("io.rp9.managed") == "true",
                    name,
                    "routed, but without io.rp9.managed=true Traefik's constraint ignores it",
                )
            for router, settings in routers.items():
                where = f"{name} router {router}"
                self.problems.check(
                    set(settings.get("entrypoints", "").split(",")) <= set(public_tls)
                    and bool(settings.get("entrypoints")),
                    where,
                    f"must be on the TLS entrypoint ({', '.join(public_tls)}) only",
                )
                self.problems.check(
                    settings.get("tls.certresolver") == ACME_RESOLVER,
                    where,
                    f"needs tls.certresolver={ACME_RESOLVER}",
                )
                if name not in OPERATOR_UIS:
                    continue
                chain = [m.strip() for m in settings.get("middlewares", "").split(",") if m.strip()]
                auth = [m for m in chain if "basicauth.usersfile" in middlewares.get(m, {})]
                self.problems.check(
                    bool(auth), where, "no basic auth (basicauth.usersfile) middleware"
                )
                for middleware in chain:
                    config = middlewares.get(middleware, {})
                    self.problems.check(
                        "basicauth.users" not in config,
                        where,
                        f"{middleware} lists users inline: use a usersfile from a secret",
                    )
                    users_file = config.get("basicauth.usersfile")
                    if users_file:
                        self.problems.check(
                            users_file.startswith("/run/secrets/")
                            and users_file.removeprefix("/run/secrets/") in traefik_secrets,
                            where,
                            f"{users_file} is not a secret mounted into traefik",
                        )

    # State lives in named volumes.
    def check_state(self) -> None:
        declared = set((self.config.get("volumes") or {}).keys())
        for name, path in STATE.items():
            mounts = [m for m in mounts_of(self.services.get(name) or {}) if m.target == path]
            ok = bool(mounts) and mounts[0].kind == "volume" and mounts[0].source in declared
            self.problems.check(ok, name, f"{path} must be a named volume (its state)")

    # Every file the deployment mounts or builds from exists; host paths are the known ones.
    def prometheus_path(self, relative: str) -> Path:
        """Where on this side a path of Prometheus's configuration directory is: through the
        deepest bind mount of the prometheus service that holds it."""
        inside = PurePosixPath(PROMETHEUS_CONFIG_DIR) / relative
        best: Mount | None = None
        for mount in mounts_of(self.services.get("prometheus") or {}):
            holds = mount.kind == "bind" and inside.is_relative_to(mount.target)
            if holds and (best is None or len(mount.target) > len(best.target)):
                best = mount
        if best is None:
            return self.project / "prometheus" / relative
        return Path(best.source) / inside.relative_to(best.target)

    def check_files(self) -> None:
        allowed_host_paths = {DOCKER_SOCKET, self.example.get("SECRETS_DIR", "")}
        for name, service in self.services.items():
            for mount in mounts_of(service):
                if mount.kind != "bind":
                    continue
                source = Path(mount.source)
                if source.is_relative_to(self.root):
                    self.problems.check(source.exists(), name, f"mounts {source}, which is missing")
                elif name in HOST_ROOT_READERS and mount.source == "/":
                    self.problems.check(
                        mount.read_only, name, "mounts the host's root writable: make it :ro"
                    )
                else:
                    self.problems.check(
                        mount.source in allowed_host_paths,
                        name,
                        f"mounts the host path {mount.source}; only {sorted(allowed_host_paths)}",
                    )
            build = service.get("build")
            if build:
                context = Path(str(build["context"] if isinstance(build, dict) else build))
                if not context.is_absolute():
                    context = self.project / context
                dockerfile = context / str(build.get("dockerfile", "Dockerfile"))
                self.problems.check(dockerfile.is_file(), name, f"no Dockerfile at {dockerfile}")
        prometheus = load_yaml(self.project / "prometheus" / "prometheus.yml") or {}
        for pattern in prometheus.get("rule_files") or []:
            self.problems.check(
                any(self.prometheus_path(str(pattern)).parent.glob(Path(str(pattern)).name)),
                "prometheus/prometheus.yml",
                f"rule_files {pattern} matches no file",
            )
        datasources = list(
            (self.project / "grafana" / "provisioning" / "datasources").glob("*.yml")
        )
        self.problems.check(bool(datasources), "grafana", "no provisioned data source")
        kinds = {
            source.get("type")
            for path in datasources
            for source in (load_yaml(path) or {}).get("datasources") or []
        }
        self.problems.check(
            {"prometheus", "loki"} <= kinds, "grafana", f"data sources {sorted(map(str, kinds))}"
        )
        ignored = (
            (self.project / ".gitignore").read_text().split()
            if (self.project / ".gitignore").exists()
            else []
        )
        for entry in (".env", "secrets/"):
            self.problems.check(entry in ignored, ".gitignore", f"{entry} must be git-ignored")
        raw = load_yaml(self.compose_file) or {}
        for secret, spec in (raw.get("secrets") or {}).items():
            default = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str((spec or {}).get("file", "")))
            self.problems.check(
                default.startswith("./secrets/"),
                f"secret {secret}",
                f"file {default!r}: operator-made secrets live in secrets/ (git-ignored)",
            )

    # Settings that must agree across compose.yaml, the static configuration and .env.example.
    def check_settings_agree(self) -> None:
        api = self.services.get("api") or {}
        env = environment_of(api)
        ip_of = {
            name: str(((s.get("networks") or {}).get("platform") or {}).get("ipv4_address", ""))
            for name, s in self.services.items()
            if isinstance(s.get("networks"), dict)
        }
        traefik_mounts = mounts_of(self.services.get("traefik") or {})
        file_dir = str(
            ((self.traefik_static.get("providers") or {}).get("file") or {}).get("directory", "")
        )
        traefik_dir = next((m for m in traefik_mounts if m.target == file_dir), None)
        api_dir = next(
            (m for m in mounts_of(api) if m.target == env.get("TRAEFIK_DYNAMIC_DIR")), None
        )
        self.problems.check(
            traefik_dir is not None
            and api_dir is not None
            and traefik_dir.kind == "volume"
            and traefik_dir.source == api_dir.source,
            "TRAEFIK_DYNAMIC_DIR",
            "the API must write its fallback router into the volume Traefik's file provider reads",
        )
        public_url = urlsplit(env.get("ORCH_PUBLIC_URL", ""))
        self.problems.check(
            public_url.hostname == ip_of.get("api")
            and str(public_url.port) == flag_value_after(api.get("command") or [], "--port"),
            "ORCH_PUBLIC_URL",
            f"{env.get('ORCH_PUBLIC_URL')} is not the API's address {ip_of.get('api')} and port",
        )
        entrypoints = self.traefik_static.get("entryPoints") or {}
        self.problems.check(
            host_port(
                str((entrypoints.get(env.get("TRAEFIK_ENTRYPOINT", "")) or {}).get("address", ":0"))
            )[1]
            == 443,
            "TRAEFIK_ENTRYPOINT",
            "tenants' routes must be on the :443 entrypoint",
        )
        self.problems.check(
            env.get("TRAEFIK_CERT_RESOLVER") == ACME_RESOLVER,
            "TRAEFIK_CERT_RESOLVER",
            f"must be {ACME_RESOLVER}",
        )
        internal = (entrypoints.get("traefik") or {}).get("address", "")
        self.problems.check(
            urlsplit(env.get("TRAEFIK_API_URL", "")).netloc == internal,
            "TRAEFIK_API_URL",
            f"must point at Traefik's internal entrypoint {internal}",
        )
        prometheus_listen = flag_value(
            (self.services.get("prometheus") or {}).get("command") or [], "--web.listen-address"
        )
        self.problems.check(
            urlsplit(env.get("PROMETHEUS_URL", "")).netloc == prometheus_listen,
            "PROMETHEUS_URL",
            f"must point at Prometheus's listener {prometheus_listen}",
        )
        for variable, service in (("DATABASE_URL", "postgres"), ("REDIS_URL", "redis")):
            url = urlsplit(env.get(variable, ""))
            self.problems.check(
                url.hostname == service and url.port == TENANT_FACING[service],
                variable,
                f"tenants use its port at the gateway: {service}:{TENANT_FACING[service]} expected",
            )
        self.problems.check(
            env.get("TENANT_SERVICES_HOST")
            in ("host.docker.internal", self.example.get("TENANT_GATEWAY_IP")),
            "TENANT_SERVICES_HOST",
            "tenants reach Postgres and Redis on the Docker gateway (host.docker.internal)",
        )
        secrets_dir = env.get("SECRETS_DIR", "")
        daemon_mounts = mounts_of(self.services.get("dagster-daemon") or {})
        self.problems.check(
            any(m.kind == "bind" and m.source == m.target == secrets_dir for m in daemon_mounts),
            "SECRETS_DIR",
            "the daemon must mount it at the same path as on the host",
        )
        for name in HOST_NETWORK:
            for host, address in extra_hosts_of(self.services.get(name) or {}):
                self.problems.check(
                    ip_of.get(host) == address,
                    f"{name} extra_hosts",
                    f"{host} is {ip_of.get(host) or 'not on the platform network'}, not {address}",
                )
        dagster = load_yaml(self.root / "deploy" / "dagster.yaml") or {}
        database = ((dagster.get("storage") or {}).get("postgres") or {}).get("postgres_db") or {}
        self.problems.check(bool(database), "deploy/dagster.yaml", "no Postgres storage")
        for field, value in database.items():
            if field == "scheme":  # the SQLAlchemy driver, a constant
                continue
            source = value.get("env") if isinstance(value, dict) else None
            self.problems.check(
                source in self.example,
                "deploy/dagster.yaml",
                f"{field} reads {source}, which .env.example does not set",
            )

    # .env.example: every variable compose needs, every rp9 setting, a comment for each, no secret.
    def check_env_example(self) -> None:
        where = ".env.example"
        text = self.compose_file.read_text()
        for variable, operator in VARIABLE.findall(text):
            has_default = operator in (":-", "-")
            self.problems.check(
                has_default or variable in self.example,
                where,
                f"{variable} is used by compose.yaml but not listed",
            )
        rp9_example = self.root / ".env.example"
        if rp9_example.exists():
            rp9_variables, _ = parse_env_file(rp9_example)
            missing = sorted(set(rp9_variables) - set(self.example))
            self.problems.check(not missing, where, f"rp9 settings missing: {missing}")
        self.problems.check(not self.undocumented, where, f"no comment above: {self.undocumented}")
        for variable, value in self.example.items():
            if SECRET_NAME.search(variable):
                self.problems.check(
                    value == "" or bool(PLACEHOLDER.search(value)),
                    where,
                    f"{variable} must be empty or a change-me placeholder",
                )
            url = urlsplit(value) if "://" in value else None
            if url is not None and url.password is not None:
                self.problems.check(
                    url.password == URL_CREDENTIAL_PLACEHOLDER,
                    where,
                    f"{variable}'s password must be the __PASS__ placeholder",
                )
        self.problems.check(
            self.example.get("RP9_VERSION", "") not in ("", "latest"),
            where,
            "RP9_VERSION must be a real tag",
        )

    # No secret value in any committed file of the deployment.
    def check_no_secrets(self) -> None:
        files = [self.compose_file, self.project / "Dockerfile"]
        files += [
            path
            for path in sorted(self.project.rglob("*"))
            if path.is_file()
            and path.name not in (".env.example", ".env")
            and "secrets" not in path.relative_to(self.project).parts
            and path.suffix not in (".pyc",)
        ]
        for path in dict.fromkeys(files):
            text = path.read_text(errors="replace")
            for label, pattern in SECRET_VALUES.items():
                for match in pattern.finditer(text):
                    line = text.count("\n", 0, match.start()) + 1
                    self.problems(f"{path.name}:{line}", f"looks like a {label}: remove it")
        raw = load_yaml(self.compose_file) or {}
        for name, service in (raw.get("services") or {}).items():
            for variable, value in environment_of(service or {}).items():
                if SECRET_NAME.search(variable):
                    self.problems.check(
                        value == "" or re.fullmatch(r"\$\{[^}]+\}", value.strip()) is not None,
                        f"{name} environment",
                        f"{variable} must be a ${{...}} reference to .env, not a value",
                    )

    def check_dockerfile(self) -> None:
        path = self.project / "Dockerfile"
        if not path.exists():
            self.problems("Dockerfile", "missing")
            return
        stages: set[str] = set()
        sources: list[str] = []
        for line in joined_lines(path.read_text()):
            words = line.split()
            if not words:
                continue
            instruction = words[0].upper()
            if instruction == "FROM":
                image = next(w for w in words[1:] if not w.startswith("--"))
                if image not in stages and (problem := image_tag_problem(image)):
                    self.problems("Dockerfile", problem)
                if len(words) >= 4 and words[-2].upper() == "AS":
                    stages.add(words[-1])
            elif instruction in ("ENV", "ARG"):
                for word in words[1:]:
                    name, _, value = word.partition("=")
                    self.problems.check(
                        not (SECRET_NAME.search(name) and value),
                        "Dockerfile",
                        f"{instruction} {name} carries a value: secrets come at run time",
                    )
            elif instruction == "COPY" and not any(w.startswith("--from") for w in words):
                sources += [w for w in words[1:-1] if not w.startswith("--")]
        ignore = self.project / "Dockerfile.dockerignore"
        included = (
            {line[1:].rstrip("/") for line in ignore.read_text().split() if line.startswith("!")}
            if ignore.exists()
            else None
        )
        for source in sources:
            self.problems.check(
                (self.root / source).exists(), "Dockerfile", f"COPY {source}: no such path"
            )
            if included is not None:
                self.problems.check(
                    any(source.rstrip("/") == i or source.startswith(i + "/") for i in included),
                    "Dockerfile.dockerignore",
                    f"{source} is copied but not in the build context",
                )


def extra_hosts_of(service: dict[str, Any]) -> list[tuple[str, str]]:
    """`host:ip` (Compose v1), `host=ip` (Compose v2) or a mapping, as (host, ip) pairs."""
    entries = service.get("extra_hosts") or []
    if isinstance(entries, dict):
        return [(str(host), str(address)) for host, address in entries.items()]
    pairs = []
    for entry in map(str, entries):
        separator = "=" if "=" in entry else ":"
        host, _, address = entry.partition(separator)
        pairs.append((host, address.strip("[]")))
    return pairs


def flag_value_after(command: Iterable[Any], flag: str) -> str | None:
    """The value of `--flag value` in a command list (or `--flag=value`)."""
    items = [str(item) for item in command]
    for index, item in enumerate(items):
        if item == flag and index + 1 < len(items):
            return items[index + 1]
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    return None


def joined_lines(text: str) -> Iterator[str]:
    """A Dockerfile's instructions, continuation lines joined, comments dropped."""
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") and not current:
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        yield current + line
        current = ""
    if current:
        yield current


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument("--compose", type=Path, required=True)
    parser.add_argument("--resolved", type=Path, required=True)
    args = parser.parse_args(argv)
    resolved = load_yaml(args.resolved) or {}
    problems = Checker(args.project, args.compose, resolved).run()
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{len(EXPECTED_SERVICES)} services: listeners, images, health, state, files, secrets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
