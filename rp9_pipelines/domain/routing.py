"""Traefik routing for tenants, as Docker labels (Traefik's Docker and Swarm providers)."""

import re

MANAGED_LABEL = "io.rp9.managed"
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def is_valid_hostname(host: str) -> bool:
    """A fully qualified DNS name in lowercase (custom domains; no wildcard, no port)."""
    return bool(_HOSTNAME.match(host))


def host_rule(hosts: list[str]) -> str:
    return " || ".join(f"Host(`{host}`)" for host in hosts)


def traefik_labels(
    *,
    router: str,
    hosts: list[str],
    port: int,
    entrypoint: str,
    network: str | None = None,
    cert_resolver: str = "",
) -> dict[str, str]:
    """Labels that route `hosts` on `entrypoint` to the container's `port`.

    With a certificate resolver the router terminates TLS with ACME certificates; without one it
    serves plain HTTP (development).
    """
    if not hosts:
        raise ValueError("a route needs at least one host")
    prefix = f"traefik.http.routers.{router}"
    labels = {
        MANAGED_LABEL: "true",
        "traefik.enable": "true",
        f"{prefix}.rule": host_rule(hosts),
        f"{prefix}.entrypoints": entrypoint,
        f"{prefix}.service": router,
        f"traefik.http.services.{router}.loadbalancer.server.port": str(port),
    }
    if network:
        labels["traefik.docker.network"] = network
    if cert_resolver:
        labels[f"{prefix}.tls"] = "true"
        labels[f"{prefix}.tls.certresolver"] = cert_resolver
    return labels
