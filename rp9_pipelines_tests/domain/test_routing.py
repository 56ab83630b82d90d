from pathlib import Path

import pytest
import yaml

from rp9_pipelines.domain.routing import (
    FALLBACK_ENTRYPOINT,
    FALLBACK_ENTRYPOINT_ADDRESS,
    HELD_HEADER,
    HOLD_PATH,
    ROUTED_PREFIX,
    TENANT_ROUTER_PRIORITY,
    UNAVAILABLE_MIDDLEWARE,
    EdgeRate,
    edge_config,
    edge_rate,
    file_route,
    hold_config,
    host_rule,
    is_valid_hostname,
    release_config,
    routed_files,
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


@pytest.mark.parametrize(
    ("concurrency", "average", "in_flight"),
    [(1, 20, 200), (5, 20, 200), (20, 40, 400), (200, 400, 4000)],
)
def test_a_plans_edge_rate_grows_with_its_concurrency(
    concurrency: int, average: int, in_flight: int
) -> None:
    assert edge_rate(concurrency) == EdgeRate(average, 2 * average, in_flight)


def test_a_rate_limited_route_sheds_per_host_with_a_named_middleware() -> None:
    labels = traefik_labels(
        router="rp9-acme",
        hosts=["acme.rp9.io"],
        port=5678,
        entrypoint="web",
        rate_limit=EdgeRate(40, 80, 80),
    )
    assert labels["traefik.http.routers.rp9-acme.middlewares"] == "rp9-acme-rate,rp9-acme-inflight"
    middleware = "traefik.http.middlewares.rp9-acme-rate.ratelimit"
    assert labels[f"{middleware}.average"] == "40"
    assert labels[f"{middleware}.burst"] == "80"
    assert labels[f"{middleware}.sourcecriterion.requesthost"] == "true"
    plain = traefik_labels(router="rp9-acme", hosts=["acme.rp9.io"], port=5678, entrypoint="web")
    assert not [k for k in plain if "middlewares" in k]


def test_a_tenant_route_answers_for_its_n8n_after_the_rate_limit() -> None:
    labels = traefik_labels(
        router="rp9-acme",
        hosts=["acme.rp9.io"],
        port=5678,
        entrypoint="web",
        rate_limit=EdgeRate(40, 80, 80),
        answer_unavailable=True,
    )
    # The rate limit answers its own 429 with Retry-After; the in-flight limit's 429 goes
    # through the fallback's page.
    assert labels["traefik.http.routers.rp9-acme.middlewares"] == (
        f"rp9-acme-rate,{UNAVAILABLE_MIDDLEWARE}@file,rp9-acme-inflight"
    )
    inflight = "traefik.http.middlewares.rp9-acme-inflight.inflightreq"
    assert labels[f"{inflight}.amount"] == "80"
    assert labels[f"{inflight}.sourcecriterion.requesthost"] == "true"


ROOT = Path(__file__).resolve().parents[2]


def test_the_deployments_edge_file_is_the_edge_config_and_its_entry_point_exists() -> None:
    """One file serves the local stack and production: it must say what the code expects, and
    both Traefiks must have the entry point its service calls."""
    edge = ROOT / "deploy/production/traefik/rp9-edge.yml"
    assert yaml.safe_load(edge.read_text()) == edge_config()
    errors = edge_config()["http"]["middlewares"][UNAVAILABLE_MIDDLEWARE]["errors"]
    assert errors["status"] == ["429", "502", "504"]
    assert set(errors["statusRewrites"].values()) == {503}
    static = yaml.safe_load((ROOT / "deploy/production/traefik/traefik.yml").read_text())
    assert static["entryPoints"][FALLBACK_ENTRYPOINT]["address"] == FALLBACK_ENTRYPOINT_ADDRESS
    stack = (ROOT / "deploy/local/stack.sh").read_text()
    port = FALLBACK_ENTRYPOINT_ADDRESS.rsplit(":", 1)[1]
    assert f"traefik_fallback_port={port}" in stack
    assert f"{FALLBACK_ENTRYPOINT}:" in stack


def test_a_hold_routes_every_host_of_the_tenant_above_its_own_router_to_the_holder() -> None:
    config = hold_config(
        slug="acme",
        hosts=["acme.rp9.test", "n8n.acme.com"],
        holder_url="http://127.0.0.1:8080",
        entrypoint="web",
    )
    router = config["http"]["routers"]["rp9-hold-acme"]
    assert router["rule"] == "Host(`acme.rp9.test`) || Host(`n8n.acme.com`)"
    assert router["priority"] > TENANT_ROUTER_PRIORITY
    assert router["entryPoints"] == ["web"]
    assert "tls" not in router
    middleware = config["http"]["middlewares"][router["middlewares"][0]]
    assert middleware == {"addPrefix": {"prefix": HOLD_PATH}}
    service = config["http"]["services"][router["service"]]
    assert service["loadBalancer"]["servers"] == [{"url": "http://127.0.0.1:8080"}]
    with_tls = hold_config(
        slug="acme",
        hosts=["acme.rp9.test"],
        holder_url="http://h",
        entrypoint="websecure",
        tls=True,
    )
    assert with_tls["http"]["routers"]["rp9-hold-acme"]["tls"] == {}
    with pytest.raises(ValueError, match="at least one host"):
        hold_config(slug="acme", hosts=[], holder_url="http://h", entrypoint="web")


def test_a_release_route_takes_only_the_holds_token_above_the_hold_to_a_service_or_a_main() -> None:
    hold = hold_config(
        slug="acme", hosts=["acme.rp9.test"], holder_url="http://h", entrypoint="web"
    )
    to_service = release_config(
        slug="acme", hosts=["acme.rp9.test"], token="t0k", entrypoint="web", service="t-acme@docker"
    )
    router = to_service["http"]["routers"]["rp9-release-acme"]
    assert router["rule"] == f"(Host(`acme.rp9.test`)) && Header(`{HELD_HEADER}`, `t0k`)"
    assert router["priority"] > hold["http"]["routers"]["rp9-hold-acme"]["priority"]
    assert router["service"] == "t-acme@docker"
    assert "services" not in to_service["http"]
    # A main booted for a cutover, before Traefik's docker provider routes it: by its address.
    to_main = release_config(
        slug="acme",
        hosts=["acme.rp9.test"],
        token="t0k",
        entrypoint="web",
        url="http://10.0.0.7:5678",
    )
    router = to_main["http"]["routers"]["rp9-release-acme"]
    servers = to_main["http"]["services"][router["service"]]["loadBalancer"]["servers"]
    assert servers == [{"url": "http://10.0.0.7:5678"}]
    with pytest.raises(ValueError, match="a service or to a URL"):
        release_config(slug="acme", hosts=["a.b"], token="t", entrypoint="web")
    with pytest.raises(ValueError, match="a service or to a URL"):
        release_config(
            slug="acme", hosts=["a.b"], token="t", entrypoint="web", service="s", url="http://u"
        )


def test_a_file_route_declares_what_the_labels_declare_served_at_a_url() -> None:
    labels = traefik_labels(
        router="t-acme",
        hosts=["acme.localhost", "shop.example.com"],
        port=5678,
        entrypoint="web",
        network="rp9-acme",
        cert_resolver="le",
        rate_limit=EdgeRate(average=20, burst=40, in_flight=50),
        answer_unavailable=True,
    )
    assert file_route(labels, "http://10.96.0.11:33333") == {
        "http": {
            "routers": {
                "t-acme": {
                    "rule": "Host(`acme.localhost`) || Host(`shop.example.com`)",
                    "entryPoints": ["web"],
                    "service": "t-acme",
                    "priority": TENANT_ROUTER_PRIORITY,
                    "middlewares": ["t-acme-rate", "rp9-unavailable@file", "t-acme-inflight"],
                    "tls": {
                        "certResolver": "le",
                        "domains": [{"main": "acme.localhost"}, {"main": "shop.example.com"}],
                    },
                }
            },
            "services": {
                "t-acme": {"loadBalancer": {"servers": [{"url": "http://10.96.0.11:33333"}]}}
            },
            "middlewares": {
                "t-acme-rate": {
                    "rateLimit": {
                        "average": 20,
                        "burst": 40,
                        "period": "1s",
                        "sourceCriterion": {"requestHost": True},
                    }
                },
                "t-acme-inflight": {
                    "inFlightReq": {"amount": 50, "sourceCriterion": {"requestHost": True}}
                },
            },
        }
    }


def test_a_plain_route_has_no_middlewares_and_no_tls() -> None:
    labels = traefik_labels(router="t-a", hosts=["a.localhost"], port=5678, entrypoint="web")
    route = file_route(labels, "http://10.96.0.12:40000")
    assert route["http"].keys() == {"routers", "services"}
    assert "tls" not in route["http"]["routers"]["t-a"]


def test_a_label_without_a_file_equivalent_is_refused() -> None:
    labels = traefik_labels(router="t-a", hosts=["a.localhost"], port=5678, entrypoint="web")
    with pytest.raises(ValueError, match="headers"):
        file_route({**labels, "traefik.http.middlewares.x.headers.foo": "1"}, "http://h:1")
    with pytest.raises(ValueError, match="observability"):
        file_route({**labels, "traefik.http.routers.t-a.observability.tracing": "1"}, "http://h:1")


def test_routed_files_are_the_serving_containers_that_ask_for_a_route() -> None:
    routed = traefik_labels(router="t-a", hosts=["a.localhost"], port=5678, entrypoint="web")
    files = routed_files(
        [
            ("rp9-a-blue-main", routed, "http://10.96.0.11:40000"),
            ("rp9-a-blue-worker-1", {"io.rp9.managed": "true"}, "http://10.96.0.12:40001"),
        ]
    )
    assert list(files) == [f"{ROUTED_PREFIX}t-a"]


def test_two_mains_of_one_router_are_one_file_balancing_over_both() -> None:
    """A cutover's two mains (blue and green, one router) both serving for a moment: one file
    with both servers, as the docker provider merges them (two files would be refused); a
    container declaring the router otherwise does not join it."""
    a = traefik_labels(router="t-a", hosts=["a.localhost"], port=5678, entrypoint="web")
    other = traefik_labels(router="t-a", hosts=["evil.localhost"], port=5678, entrypoint="web")
    b = traefik_labels(router="t-b", hosts=["b.localhost"], port=5678, entrypoint="web")
    files = routed_files(
        [
            ("rp9-a-green-main", a, "http://10.96.0.12:40002"),
            ("rp9-a-blue-main", a, "http://10.96.0.11:40000"),
            ("rp9-a-zz-main", other, "http://10.96.0.13:40009"),
            ("rp9-b-blue-main", b, "http://10.96.0.13:40003"),
        ]
    )
    assert sorted(files) == [f"{ROUTED_PREFIX}t-a", f"{ROUTED_PREFIX}t-b"]
    a_file = files[f"{ROUTED_PREFIX}t-a"]["http"]
    assert a_file["services"]["t-a"]["loadBalancer"]["servers"] == [
        {"url": "http://10.96.0.11:40000"},
        {"url": "http://10.96.0.12:40002"},
    ]
    assert a_file["routers"] == file_route(a, "http://x")["http"]["routers"]
    assert files[f"{ROUTED_PREFIX}t-b"] == file_route(b, "http://10.96.0.13:40003")
