"""Automatic TLS, proven with a real ACME CA: a new tenant's own address and its custom domain
are served over HTTPS with certificates Traefik obtained for them, and a custom domain taken off
a tenant is no longer served.

The CA is Pebble (Debian's `pebble`), which validates every name for real: HTTP-01 against the
test's own Traefik (`testing/acme.py`), with `pebble-challtestsrv` as its DNS server answering
127.0.0.1 for every name. That Traefik reads the Docker engine with the live stack's constraint.
The live stack's Traefik sees the tenant's container too, and skips its router (with an error in
its log): it has no `websecure` entry point and no `pebble` resolver.

The tenant is made as the API makes one (`services.tenants.create_tenant`), and its runs are the
platform's own jobs executed in this process with the platform's settings for TLS:
`TRAEFIK_ENTRYPOINT=websecure`, `TRAEFIK_CERT_RESOLVER=pebble`, and `TRAEFIK_URL` the test
Traefik's `websecure` (as `https://localhost:<port>`, served with a certificate Pebble issued for
`localhost`), where provisioning waits for n8n to answer; `SSL_CERT_FILE` makes the platform
trust Pebble, as an operator of a private CA would.

The platform has no request that changes a tenant's custom domain yet: the catalog is the
tenant's desired state, so the test clears it there and runs `provision_tenant` again (the API's
repair), which converges the containers and their routing labels to it.
"""

import ssl
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import httpx
import pytest
import sqlalchemy as sa
from cryptography import x509

from rp9_pipelines.catalog import tenants as catalog
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.definitions import defs
from rp9_pipelines.domain.routing import edge_config
from rp9_pipelines.launches import Launch, tenant_job
from rp9_pipelines.services import tenants as service
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.conftest import BIN
from rp9_pipelines_tests.tenants.conftest import unique_slug
from rp9_pipelines_tests.waiting import wait_until
from testing import acme

pytestmark = pytest.mark.stack

CUSTOMER_DOMAIN = "customer-example.test"
# What the platform's readiness checks connect to: a name that resolves to 127.0.0.1 here.
PLATFORM_HOST = "localhost"
# Certificates come within seconds once a router exists; a tenant takes longer to start.
CERTIFICATE_TIMEOUT_S = 90
TRAEFIK_NOT_FOUND = "404 page not found\n"


@dataclass(frozen=True)
class Edge:
    """The test's Traefik, its CA, and what verifies the certificates it serves."""

    pebble: acme.Pebble
    traefik: acme.Traefik
    chain: Path
    intermediate: x509.Certificate

    def verify(self) -> ssl.SSLContext:
        """Trusts Pebble's issuing chain of this run, and nothing else."""
        return ssl.create_default_context(cafile=str(self.chain))

    def logs(self) -> str:
        tails = [acme.tail(log, 2000) for log in (*self.pebble.logs, self.traefik.log)]
        return "\n--- log ---\n".join(tails)


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Edge]:
    web, websecure = acme.free_port(), acme.free_port()
    with (
        acme.pebble(tmp_path / "pebble", http_port=web, tls_port=websecure) as pebble,
        acme.traefik(
            BIN / "traefik",
            tmp_path / "traefik",
            pebble,
            web=web,
            websecure=websecure,
            default_host=PLATFORM_HOST,
            # Tenant routers name the deployment's errors middleware.
            dynamic={"rp9-edge": edge_config()},
        ) as traefik,
    ):
        chain = tmp_path / "pebble-chain.pem"
        chain.write_text(pebble.issuing_chain())
        intermediate = x509.load_pem_x509_certificates(chain.read_bytes())[1]
        yield Edge(pebble, traefik, chain, intermediate)


@dataclass
class Runs:
    """Launches the platform's jobs in this process (a `services.tenants.Launcher`), with the
    platform's settings for TLS in the environment while each runs."""

    monkeypatch: pytest.MonkeyPatch
    env: dict[str, str]
    results: dict[str, dg.ExecuteInProcessResult] = field(default_factory=dict)

    def launch(self, run: Launch) -> str:
        with self.monkeypatch.context() as patch:
            for name, value in self.env.items():
                patch.setenv(name, value)
            result = (
                defs()
                .get_job_def(run.job)
                .execute_in_process(run_config=run.run_config, tags=run.tags, raise_on_error=False)
            )
        self.results[result.run_id] = result
        return result.run_id

    def require(self, run_id: str) -> None:
        result = self.results[run_id]
        failures = [
            f"{event.step_key}: {event.event_specific_data}"
            for event in result.all_events
            if event.is_step_failure
        ]
        assert result.success, f"{result.job_def.name} failed: {failures}"


@dataclass
class TlsTenants:
    """Tenants made through the platform's service with `runs`; deleted (purged) afterwards."""

    settings: Settings
    engine: sa.Engine
    runs: Runs
    made: list[Tenant] = field(default_factory=list)

    @property
    def catalog(self) -> service.CatalogTenants:
        return service.CatalogTenants(self.engine)

    def get(self, tenant: Tenant) -> Tenant:
        current = self.catalog.get(str(tenant.id))
        assert current is not None
        return current

    def create(self, slug: str, custom_domain: str) -> Tenant:
        new = service.NewTenant(slug=slug, name="TLS Co", custom_domain=custom_domain)
        tenant, run_id = service.create_tenant(
            self.catalog,
            self.runs.launch,
            new,
            self.settings.base_domain,
            self.settings.n8n_version,
        )
        self.made.append(tenant)
        self.runs.require(run_id)
        return self.get(tenant)

    def remove_custom_domain(self, tenant: Tenant) -> Tenant:
        with self.engine.begin() as connection:
            catalog.update_tenant(connection, tenant.id, custom_domain=None)
        repair = tenant_job("provision_tenant", str(tenant.id), tenant.slug)
        self.runs.require(
            service.change_tenant(self.runs.launch, self.get(tenant), service.PROVISION, repair)
        )
        return self.get(tenant)

    def delete(self, tenant: Tenant) -> None:
        delete = tenant_job("delete_tenant", str(tenant.id), tenant.slug, purge=True)
        self.runs.require(
            service.change_tenant(self.runs.launch, self.get(tenant), service.DELETE, delete)
        )


@pytest.fixture
def tls_tenants(
    settings: Settings, edge: Edge, monkeypatch: pytest.MonkeyPatch
) -> Iterator[TlsTenants]:
    env = {
        "TRAEFIK_ENTRYPOINT": "websecure",
        "TRAEFIK_CERT_RESOLVER": acme.RESOLVER,
        "TRAEFIK_URL": f"https://{PLATFORM_HOST}:{edge.traefik.websecure_port}",
        "SSL_CERT_FILE": str(edge.chain),
    }
    engine = sa.create_engine(sqlalchemy_url(settings.database_url), poolclass=sa.NullPool)
    made = TlsTenants(settings, engine, Runs(monkeypatch, env))
    yield made
    try:
        for tenant in made.made:
            made.delete(tenant)
    finally:
        engine.dispose()


def served(edge: Edge, name: str) -> acme.Answer:
    """`https://<name>/healthz` answering 200 with a certificate for `name` that Pebble's chain
    verifies (until Traefik has one, it serves its default certificate, which is not)."""

    def answer() -> acme.Answer | None:
        got = edge.traefik.get(name, "/healthz", edge.verify())
        return got if got.status_code == 200 else None

    try:
        return wait_until(answer, timeout_s=CERTIFICATE_TIMEOUT_S, what=f"https://{name}/healthz")
    except AssertionError as error:
        raise AssertionError(f"{error}\n{edge.logs()}") from None


def not_routed(edge: Edge, name: str) -> bool:
    """Traefik's own 404 for `name` (its certificate is not checked: Traefik may well keep
    one for a name it no longer routes)."""
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    got = edge.traefik.get(name, "/healthz", unverified)
    return got.status_code == 404 and got.text == TRAEFIK_NOT_FOUND


def test_subdomain_and_custom_domain_get_certificates_and_a_removed_domain_is_not_served(
    settings: Settings, edge: Edge, tls_tenants: TlsTenants
) -> None:
    slug = unique_slug("tls")
    own, custom = f"{slug}.{settings.base_domain}", f"{slug}.{CUSTOMER_DOMAIN}"
    tenant = tls_tenants.create(slug, custom_domain=custom)
    assert tenant.status == "active"

    answers = {name: served(edge, name) for name in (own, custom)}
    for name, answer in answers.items():
        assert name in answer.names
        assert answer.certificate.issuer == edge.intermediate.subject
    # One certificate per address: the custom domain's does not name the slug.
    assert answers[own].names == [own]
    assert answers[custom].names == [custom]

    tenant = tls_tenants.remove_custom_domain(tenant)
    assert tenant.custom_domain is None
    wait_until(lambda: not_routed(edge, custom), timeout_s=15, what=f"{custom} to go")
    assert not any(custom in str(router.get("rule")) for router in edge.traefik.routers())
    answer = served(edge, own)
    assert own in answer.names
    assert answer.certificate.issuer == edge.intermediate.subject
    # The checks above are not vacuous: a name Traefik has no certificate for fails them.
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        edge.traefik.get(f"other-{slug}.{CUSTOMER_DOMAIN}", "/healthz", edge.verify())
