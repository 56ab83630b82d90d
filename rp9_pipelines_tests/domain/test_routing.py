import pytest

from rp9_pipelines.domain.routing import (
    EdgeRate,
    edge_rate,
    host_rule,
    is_valid_hostname,
    traefik_labels,
)


def test_labels_route_every_host_to_the_port_in_plain_http() -> None:
    labels = traefik_labels(
        router="t-acme", hosts=["acme.rp9.io", "n8n.acme.com"], port=5678, entrypoint="web"
    )
    assert labels["traefik.http.routers.t-acme.rule"] == (
        "Host(`acme.rp9.io`) || Host(`n8n.acme.com`)"
    )
    assert labels["traefik.http.services.t-acme.loadbalancer.server.port"] == "5678"
    assert labels["traefik.http.routers.t-acme.entrypoints"] == "web"
    assert labels["io.rp9.managed"] == "true"
    assert not any(".tls" in key for key in labels)


def test_labels_with_a_cert_resolver_terminate_tls() -> None:
    labels = traefik_labels(
        router="t-acme",
        hosts=["acme.rp9.io"],
        port=5678,
        entrypoint="websecure",
        network="rp9-t-acme",
        cert_resolver="letsencrypt",
    )
    assert labels["traefik.http.routers.t-acme.tls.certresolver"] == "letsencrypt"
    assert labels["traefik.docker.network"] == "rp9-t-acme"


def test_with_a_cert_resolver_each_host_gets_its_own_certificate() -> None:
    """One ACME order per host: a custom domain that fails validation does not hold up the
    tenant's own address, and its certificate does not name the slug."""
    labels = traefik_labels(
        router="t-acme",
        hosts=["acme.rp9.io", "n8n.acme.com"],
        port=5678,
        entrypoint="websecure",
        cert_resolver="letsencrypt",
    )
    domains = {key: value for key, value in labels.items() if ".tls.domains" in key}
    assert domains == {
        "traefik.http.routers.t-acme.tls.domains[0].main": "acme.rp9.io",
        "traefik.http.routers.t-acme.tls.domains[1].main": "n8n.acme.com",
    }
    assert labels["traefik.http.routers.t-acme.tls"] == "true"


def test_a_route_needs_a_host() -> None:
    with pytest.raises(ValueError, match="at least one host"):
        traefik_labels(router="r", hosts=[], port=1, entrypoint="web")


@pytest.mark.parametrize(
    ("host", "valid"),
    [
        ("n8n.acme.com", True),
        ("a.b.example.io", True),
        ("acme", False),
        ("*.acme.com", False),
        ("acme.com:8080", False),
        ("ACME.com", False),
        ("-bad.acme.com", False),
        ("x" * 64 + ".com", False),
    ],
)
def test_hostname_validation(host: str, valid: bool) -> None:
    assert is_valid_hostname(host) is valid


def test_host_rule_single() -> None:
    assert host_rule(["a.localhost"]) == "Host(`a.localhost`)"


@pytest.mark.parametrize(("concurrency", "average"), [(1, 20), (5, 20), (20, 40), (200, 400)])
def test_a_plans_edge_rate_grows_with_its_concurrency(concurrency: int, average: int) -> None:
    assert edge_rate(concurrency) == EdgeRate(average, 2 * average)


def test_a_rate_limited_route_sheds_per_host_with_a_named_middleware() -> None:
    labels = traefik_labels(
        router="rp9-acme",
        hosts=["acme.rp9.io"],
        port=5678,
        entrypoint="web",
        rate_limit=EdgeRate(40, 80),
    )
    assert labels["traefik.http.routers.rp9-acme.middlewares"] == "rp9-acme-rate"
    middleware = "traefik.http.middlewares.rp9-acme-rate.ratelimit"
    assert labels[f"{middleware}.average"] == "40"
    assert labels[f"{middleware}.burst"] == "80"
    assert labels[f"{middleware}.sourcecriterion.requesthost"] == "true"
    plain = traefik_labels(router="rp9-acme", hosts=["acme.rp9.io"], port=5678, entrypoint="web")
    assert not [k for k in plain if "middlewares" in k]
