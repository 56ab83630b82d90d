"""Traefik routing for tenants, as Docker labels (Traefik's Docker provider) or the same as file
configuration (`file_route`: the Swarm runtime's tasks), and the fallback route that answers for a
tenant whose containers are not serving (file provider)."""

import copy
import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from rp9_pipelines.domain.enforcement import ENFORCEMENT

MANAGED_LABEL = "io.rp9.managed"
# Explicit priorities: a tenant's own router always beats the catch-all fallback, which only
# answers for hosts that no running container claims (a suspended tenant, an unknown host).
TENANT_ROUTER_PRIORITY = 1000
FALLBACK_ROUTER_PRIORITY = 1
# A held tenant's hosts go to the API's holder, above its own router (`hold_config`).
HOLD_ROUTER_PRIORITY = 5000
HOLD_PATH = "/_rp9/hold"
# Where the run that holds a tenant asks the holder how many requests it still has to send on.
HOLDING_PATH = "/_rp9/holding"
# Set on a request the holder sends on through Traefik: should it come back to a holder (the
# hold's router still in force), it is answered at once instead of looping.
HELD_HEADER = "X-Rp9-Held"
FALLBACK_PATH = "/_rp9/fallback"
# The deployment's own dynamic configuration (`edge_config`): Traefik has it from its first
# start, whether or not the API runs, so tenant routers can always name its middleware.
UNAVAILABLE_MIDDLEWARE = "rp9-unavailable"
# An entry point only Traefik itself reaches, where the fallback router also listens: the error
# pages of tenant routers are asked there, so they can never loop back into a tenant's router.
FALLBACK_ENTRYPOINT = "rp9-fallback"
FALLBACK_ENTRYPOINT_ADDRESS = "127.0.0.1:8087"
UPSTREAM_PARAM = "upstream"
# What Traefik answers itself when a tenant's n8n cannot take a request: too many in flight
# (the in-flight limit's 429), connection refused or reset (a main stopping, crashed,
# restarting) and a gateway timeout. n8n's own answers with these codes get the same page.
AT_CAPACITY = 429
UPSTREAM_FAILURES = (str(AT_CAPACITY), "502", "504")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def is_valid_hostname(host: str) -> bool:
    """A fully qualified DNS name in lowercase (custom domains; no wildcard, no port)."""
    return bool(_HOSTNAME.match(host))


def host_rule(hosts: list[str]) -> str:
    return " || ".join(f"Host(`{host}`)" for host in hosts)


@dataclass(frozen=True)
class EdgeRate:
    """What Traefik admits for one of a tenant's hosts: requests a second, and requests in
    flight at once."""

    average: int
    burst: int
    in_flight: int


# How long a webhook sender waits for an answer before it gives up (GitHub: 10 s).
SENDER_WAIT_S = 10


def edge_rate(concurrency: int) -> EdgeRate:
    """What a plan admits at the edge: twice its concurrency a second, at least 20 (a starter's
    single worker serves 15-30 short webhooks a second on two cores: `make bench-load`), with a
    one-second burst of twice that; and in flight, what arrives at that rate in
    `SENDER_WAIT_S`. A request waits behind the others about as long as its sender would, no
    longer: beyond that it is answered at once (503 and `Retry-After`) instead of running into
    its sender's timeout. The limit was 2.5 s of the rate (four times the concurrency, at least
    50): it shed requests whenever n8n answered slowly for a few seconds, as beside a backup of
    the tenant's 221 MB on two busy cores (96, 158 and 492 requests in three runs of
    `make bench-upgrade`, of 4,400-5,400, while n8n answered the others within 7 s)."""
    average = max(20, 2 * concurrency)
    return EdgeRate(average=average, burst=2 * average, in_flight=SENDER_WAIT_S * average)


def traefik_labels(
    *,
    router: str,
    hosts: list[str],
    port: int,
    entrypoint: str,
    network: str | None = None,
    cert_resolver: str = "",
    priority: int = TENANT_ROUTER_PRIORITY,
    rate_limit: EdgeRate | None = None,
    answer_unavailable: bool = False,
) -> dict[str, str]:
    """Labels that route `hosts` on `entrypoint` to the container's `port`.

    With `rate_limit`, Traefik admits at most `average` requests a second per host (bursts up
    to `burst`) and answers the rest at once with 429 and `Retry-After`, and at most
    `in_flight` at once: an overloaded tenant sheds load at the edge, quickly and visibly,
    instead of queueing callers for tens of seconds (or looking missing).

    With a certificate resolver the router terminates TLS with ACME certificates, one per host;
    without one it serves plain HTTP (development). One certificate per host, not one for the
    whole rule: an ACME order fails as a whole when one of its names fails validation, so a
    custom domain whose DNS does not point at the platform yet would leave the tenant's own
    address without a certificate too; and a certificate shared by both would name the slug to
    every visitor of the custom domain.

    With `answer_unavailable`, an answer Traefik makes itself because n8n could not take the
    request (the in-flight limit's 429; 502, 504: a main stopping or restarting) becomes the
    fallback's 503 with `Retry-After` for that tenant (`edge_config`'s middleware, between the
    rate and in-flight limits): a sender retries later instead of giving up.
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
        f"{prefix}.priority": str(priority),
        f"traefik.http.services.{router}.loadbalancer.server.port": str(port),
    }
    if network:
        labels["traefik.docker.network"] = network
    middlewares = []
    if rate_limit is not None:
        middleware = f"traefik.http.middlewares.{router}-rate.ratelimit"
        labels |= {
            f"{middleware}.average": str(rate_limit.average),
            f"{middleware}.burst": str(rate_limit.burst),
            f"{middleware}.period": "1s",
            f"{middleware}.sourcecriterion.requesthost": "true",
        }
        middlewares.append(f"{router}-rate")
    if answer_unavailable:
        middlewares.append(f"{UNAVAILABLE_MIDDLEWARE}@file")
    if rate_limit is not None:
        middleware = f"traefik.http.middlewares.{router}-inflight.inflightreq"
        labels |= {
            f"{middleware}.amount": str(rate_limit.in_flight),
            f"{middleware}.sourcecriterion.requesthost": "true",
        }
        middlewares.append(f"{router}-inflight")
    if middlewares:
        labels[f"{prefix}.middlewares"] = ",".join(middlewares)
    if cert_resolver:
        labels[f"{prefix}.tls"] = "true"
        labels[f"{prefix}.tls.certresolver"] = cert_resolver
        for index, host in enumerate(hosts):
            labels[f"{prefix}.tls.domains[{index}].main"] = host
    return labels


def file_route(labels: dict[str, str], url: str) -> dict[str, Any]:
    """The file provider's configuration for a container routed by `traefik_labels`, served at
    `url`: for a runtime whose containers Traefik cannot discover (a Swarm task on another
    node, reached at that node's published port). Every router, middleware and service the
    labels declare, with the same names; a label `traefik_labels` does not make is refused."""
    routers: dict[str, dict[str, Any]] = {}
    middlewares: dict[str, dict[str, Any]] = {}
    services: dict[str, dict[str, Any]] = {}
    for key, value in sorted(labels.items()):
        if key in (MANAGED_LABEL, "traefik.enable", "traefik.docker.network"):
            continue
        if not key.startswith("traefik.http."):
            continue
        kind, name, field = key.removeprefix("traefik.http.").split(".", 2)
        if kind == "routers":
            _router_field(routers.setdefault(name, {}), field, value)
        elif kind == "middlewares":
            _middleware_field(middlewares.setdefault(name, {}), field, value)
        elif kind == "services" and field == "loadbalancer.server.port":
            services[name] = {"loadBalancer": {"servers": [{"url": url}]}}
        else:
            raise ValueError(f"no file-provider equivalent for the label {key}")
    http: dict[str, Any] = {"routers": routers, "services": services}
    if middlewares:
        http["middlewares"] = middlewares
    return {"http": http}


# The file provider's files of routes that follow a runtime's tasks (`routed_files`).
ROUTED_PREFIX = "routed-"


def routed_files(serving: list[tuple[str, dict[str, str], str]]) -> dict[str, dict[str, Any]]:
    """The route files for containers Traefik cannot discover: for each router the serving
    containers that ask to be routed (`traefik.enable`) declare, `routed-<router>`, its service
    load-balancing over every such container's URL. As Traefik's docker provider does with two
    containers of one router (a cutover's two mains, both up for a moment), and one file per
    router because the file provider refuses a router two files define. Where two containers
    declare one router differently, the first by name wins."""
    files: dict[str, dict[str, Any]] = {}
    for _, labels, url in sorted(serving):
        if labels.get("traefik.enable") != "true":
            continue
        route = file_route(labels, url)["http"]
        name = ROUTED_PREFIX + "+".join(sorted(route["routers"]))
        merged = files.setdefault(name, {"http": {}})["http"]
        if not merged:
            merged.update(copy.deepcopy(route))
        elif (merged["routers"], merged.get("middlewares")) == (
            route["routers"],
            route.get("middlewares"),
        ):
            for service, config in route["services"].items():
                servers = merged["services"].setdefault(service, {"loadBalancer": {"servers": []}})
                servers["loadBalancer"]["servers"] += config["loadBalancer"]["servers"]
    return files


_DOMAIN = re.compile(r"^tls\.domains\[(\d+)\]\.main$")


def _router_field(router: dict[str, Any], field: str, value: str) -> None:
    if field in ("rule", "service"):
        router[field] = value
    elif field == "entrypoints":
        router["entryPoints"] = value.split(",")
    elif field == "priority":
        router["priority"] = int(value)
    elif field == "middlewares":
        router["middlewares"] = value.split(",")
    elif field == "tls":
        router.setdefault("tls", {})
    elif field == "tls.certresolver":
        router.setdefault("tls", {})["certResolver"] = value
    elif match := _DOMAIN.match(field):
        domains = router.setdefault("tls", {}).setdefault("domains", [])
        index = int(match.group(1))
        domains.extend({} for _ in range(index + 1 - len(domains)))
        domains[index]["main"] = value
    else:
        raise ValueError(f"no file-provider equivalent for the router field {field}")


_MIDDLEWARE_FIELDS = {
    "ratelimit.average": ("rateLimit", "average", int),
    "ratelimit.burst": ("rateLimit", "burst", int),
    "ratelimit.period": ("rateLimit", "period", str),
    "ratelimit.sourcecriterion.requesthost": ("rateLimit", "sourceCriterion", None),
    "inflightreq.amount": ("inFlightReq", "amount", int),
    "inflightreq.sourcecriterion.requesthost": ("inFlightReq", "sourceCriterion", None),
}


def _middleware_field(middleware: dict[str, Any], field: str, value: str) -> None:
    if field not in _MIDDLEWARE_FIELDS:
        raise ValueError(f"no file-provider equivalent for the middleware field {field}")
    kind, key, cast = _MIDDLEWARE_FIELDS[field]
    section = middleware.setdefault(kind, {})
    section[key] = {"requestHost": value == "true"} if cast is None else cast(value)


def edge_config() -> dict[str, Any]:
    """The deployment's dynamic configuration for every tenant router (a file beside Traefik's
    static configuration, written before Traefik starts: `deploy/traefik/rp9-edge.yml`).

    `UNAVAILABLE_MIDDLEWARE` turns Traefik's own 429/502/504 for a tenant into 503 with the page
    and headers (`Retry-After`) the fallback route gives for that host, asked through
    `FALLBACK_ENTRYPOINT` with the visitor's `Host`. Without a running API there is no fallback
    router: the visitor still gets a 503, with Traefik's plain body.
    """
    return {
        "http": {
            "middlewares": {
                UNAVAILABLE_MIDDLEWARE: {
                    "errors": {
                        "status": list(UPSTREAM_FAILURES),
                        "statusRewrites": {status: 503 for status in UPSTREAM_FAILURES},
                        "service": UNAVAILABLE_MIDDLEWARE,
                        "query": f"{FALLBACK_PATH}?{UPSTREAM_PARAM}={{originalStatus}}",
                    }
                }
            },
            "services": {
                UNAVAILABLE_MIDDLEWARE: {
                    "loadBalancer": {"servers": [{"url": f"http://{FALLBACK_ENTRYPOINT_ADDRESS}"}]}
                }
            },
        }
    }


def fallback_config(*, name: str, url: str, entrypoint: str, tls: bool = False) -> dict[str, Any]:
    """Traefik dynamic configuration (file provider) of the catch-all route to the control
    plane's fallback endpoint at `url`, on the tenants' entry point and on
    `FALLBACK_ENTRYPOINT` (where `edge_config`'s middleware asks it).

    Every path is rewritten to `FALLBACK_PATH` (the query stays), so nothing but that one public
    endpoint of the control plane is reachable through a tenant's host. Traefik passes the
    original `Host`.
    """
    router: dict[str, Any] = {
        "rule": "PathPrefix(`/`)",
        "entryPoints": [entrypoint, FALLBACK_ENTRYPOINT],
        "priority": FALLBACK_ROUTER_PRIORITY,
        "service": name,
        "middlewares": [name],
    }
    if tls:
        # No resolver: a catch-all rule names no domain to get a certificate for; the tenant's
        # own certificate (still in Traefik's store) or the default one is served.
        router["tls"] = {}
    return {
        "http": {
            "routers": {name: router},
            "middlewares": {name: {"replacePath": {"path": FALLBACK_PATH}}},
            "services": {name: {"loadBalancer": {"servers": [{"url": url}]}}},
        }
    }


def service_url(config: dict[str, Any], name: str) -> str:
    """The first server's URL of service `name` in a file-provider configuration ("" if none):
    where a published fallback or hold route sends its requests."""
    service = config.get("http", {}).get("services", {}).get(name, {})
    servers = service.get("loadBalancer", {}).get("servers") or [{}]
    return str(servers[0].get("url", ""))


def hold_name(slug: str) -> str:
    return f"rp9-hold-{slug}"


def hold_config(
    *, slug: str, hosts: list[str], holder_url: str, entrypoint: str, tls: bool = False
) -> dict[str, Any]:
    """Traefik dynamic configuration (file provider) that holds a tenant's requests: its hosts,
    above its own router, to the control plane's holder at `holder_url`, every path prefixed
    with `HOLD_PATH` (the holder sends each one on, unprefixed, once the hold is released)."""
    if not hosts:
        raise ValueError("a hold needs at least one host")
    name = hold_name(slug)
    router: dict[str, Any] = {
        "rule": host_rule(hosts),
        "entryPoints": [entrypoint],
        "priority": HOLD_ROUTER_PRIORITY,
        "service": name,
        "middlewares": [name],
    }
    if tls:
        router["tls"] = {}  # the hosts' certificates are in Traefik's store already
    return {
        "http": {
            "routers": {name: router},
            "middlewares": {name: {"addPrefix": {"prefix": HOLD_PATH}}},
            "services": {name: {"loadBalancer": {"servers": [{"url": holder_url}]}}},
        }
    }


def release_name(slug: str) -> str:
    return f"rp9-release-{slug}"


def release_config(
    *,
    slug: str,
    hosts: list[str],
    token: str,
    entrypoint: str,
    service: str | None = None,
    url: str | None = None,
    tls: bool = False,
) -> dict[str, Any]:
    """The route the holder's released requests take (file provider): the tenant's hosts with
    `HELD_HEADER` set to the hold's `token`, above the hold's router, straight to the tenant's
    own `service`, or to its main at `url` (one booted for a cutover, before Traefik's docker
    provider routes it), without its edge limits (a backlog released at once is not a burst of
    new traffic to shed). Nobody else knows the token; the route goes after the cutover."""
    if (service is None) == (url is None):
        raise ValueError("a release route goes to a service or to a URL")
    name = release_name(slug)
    router: dict[str, Any] = {
        "rule": f"({host_rule(hosts)}) && Header(`{HELD_HEADER}`, `{token}`)",
        "entryPoints": [entrypoint],
        "priority": HOLD_ROUTER_PRIORITY + 1,
        "service": service or name,
    }
    if tls:
        router["tls"] = {}
    config: dict[str, Any] = {"http": {"routers": {name: router}}}
    if url is not None:
        config["http"]["services"] = {name: {"loadBalancer": {"servers": [{"url": url}]}}}
    return config


# A tenant's states while the platform changes it, and how long a sender should wait then.
TRANSITIONS = {"provisioning": 30, "upgrading": 30, "promoting": 30}


@dataclass(frozen=True)
class Unavailable:
    """What the fallback answers for a host whose tenant is not serving."""

    status_code: int
    code: str
    message: str
    retry_after_s: int | None


def unavailable(
    slug: str | None,
    status: str | None,
    suspension_reason: str | None,
    now: dt.datetime,
    resumes_at: dt.datetime | None,
    upstream: int | None = None,
) -> Unavailable:
    """The answer for a host: unknown or deleted → 404; suspended → 503 `tenant_suspended`
    (Retry-After: when enforcement resumes it, the next period, if it was enforcement); being
    created or changed, or not answering → 503 `tenant_unavailable`. `upstream`: the status
    Traefik had for a routed tenant (`edge_config`), which is never a 404: a known tenant is at
    capacity or restarting, an unknown one unavailable."""
    if upstream is not None and status != "suspended":
        what = slug or "this address"
        # A tenant being changed (upgraded, promoted) is still routed: say what Traefik saw.
        during = f" ({status})" if status in TRANSITIONS else ""
        if upstream == AT_CAPACITY:
            return Unavailable(503, "tenant_busy", f"{what} is at capacity{during}", 2)
        message = f"{what} is restarting or not answering{during}"
        return Unavailable(503, "tenant_unavailable", message, 5)
    if slug is None or status in (None, "deleted", "deleting"):
        return Unavailable(404, "tenant_not_found", "no n8n is served at this address", None)
    if status == "suspended":
        if suspension_reason == ENFORCEMENT and resumes_at is not None:
            wait = max(60, int((resumes_at - now).total_seconds()))
            why = "it reached its plan's execution limit for this month"
            return Unavailable(503, "tenant_suspended", f"{slug} is suspended: {why}", wait)
        return Unavailable(503, "tenant_suspended", f"{slug} is suspended by its operator", 3600)
    if status == "active":
        # Its main is (re)starting: Docker does not call it healthy yet, so Traefik routes it
        # here until it is.
        return Unavailable(503, "tenant_unavailable", f"{slug} is starting", 10)
    retry = TRANSITIONS.get(status or "", 10)
    return Unavailable(
        503, "tenant_unavailable", f"{slug} is temporarily unavailable ({status})", retry
    )
