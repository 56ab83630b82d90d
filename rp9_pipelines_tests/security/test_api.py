"""The internal API against a hostile caller, on the real stack: a captured signature cannot be
replayed, nor used for another request; a body over the limit is refused unread; one
Idempotency-Key cannot turn `DELETE` into `DELETE ?purge=true`; a custom domain's public answer
gives no slug away."""

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import hypothesis
import pytest
import requests
import schemathesis
import sqlalchemy as sa
from schemathesis.core.result import Ok
from schemathesis.python.asgi import ASGIClient

from rp9_pipelines.api.auth import signature_headers
from rp9_pipelines.api.deps import current_settings
from rp9_pipelines.api.limits import MAX_BODY_BYTES
from rp9_pipelines.api.main import create_app
from rp9_pipelines.catalog.api import SIGNATURES, CatalogKeyStore, CatalogSignatures
from rp9_pipelines.catalog.tables import idempotency_keys, tenants
from rp9_pipelines.domain.routing import FALLBACK_PATH
from rp9_pipelines.launches import TENANT_TAG
from rp9_pipelines.settings import Settings, sqlalchemy_url
from rp9_pipelines_tests.api_client import Api
from rp9_pipelines_tests.conftest import Served
from rp9_pipelines_tests.security.conftest import unique_slug

pytestmark = pytest.mark.stack

RUNS_OF = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) { ... on Runs { results { runId tags { key value } } } }
}
"""


@pytest.fixture(scope="module")
def catalog(settings: Settings) -> Iterator[sa.Engine]:
    engine = sa.create_engine(sqlalchemy_url(settings.database_url), poolclass=sa.NullPool)
    yield engine
    engine.dispose()


def error_code(response: httpx.Response) -> tuple[int, str]:
    return response.status_code, response.json()["error"]["code"]


def test_a_captured_signed_request_is_refused_when_sent_again(api: Api) -> None:
    assert api.hmac, "the local stack sets ORCH_HMAC_SECRET"
    captured = api.signed("GET", "/tenants")
    assert api.http.get("/tenants", headers=captured).status_code == 200
    assert error_code(api.http.get("/tenants", headers=captured)) == (401, "replayed_signature")


def test_a_signature_is_good_for_its_own_request_only(api: Api) -> None:
    slug = unique_slug("nobody")
    listing = api.signed("GET", "/tenants")
    for method, target in [
        ("GET", "/enforcement/events"),
        ("GET", "/tenants?include_deleted=true"),
        ("DELETE", f"/tenants/{slug}"),
        ("DELETE", f"/tenants/{slug}?purge=true"),
    ]:
        response = api.http.request(method, target, headers=listing)
        assert error_code(response) == (401, "invalid_signature"), (method, target)
    delete = api.signed("DELETE", f"/tenants/{slug}")
    purge = api.http.request("DELETE", f"/tenants/{slug}?purge=true", headers=delete)
    assert error_code(purge) == (401, "invalid_signature")


def test_api_processes_agree_on_accepted_signatures(catalog: sa.Engine) -> None:
    """Two API processes (two ledgers, two connection pools) on one catalog."""
    signature = uuid.uuid4().hex * 2
    one = CatalogSignatures(catalog, keep_s=660)
    other = CatalogSignatures(
        sa.create_engine(catalog.url, poolclass=sa.NullPool), keep_s=660, prune_every_s=0
    )
    assert one.accept(signature, "fingerprint")
    assert not other.accept(signature, "fingerprint")
    # Pruned once it could no longer pass the skew check, not before.
    old = uuid.uuid4().hex * 2
    with catalog.begin() as connection:
        connection.execute(
            sa.insert(idempotency_keys).values(
                key=old,
                route=SIGNATURES,
                request_sha256="fingerprint",
                status_code=0,
                response={},
                created_at=sa.func.now() - sa.text("interval '11 minutes'"),
            )
        )
    assert other.accept(uuid.uuid4().hex * 2, "fingerprint")
    with catalog.connect() as connection:
        left = set(
            connection.execute(
                sa.select(idempotency_keys.c.key).where(
                    idempotency_keys.c.key.in_([old, signature])
                )
            ).scalars()
        )
    assert left == {signature}


def test_a_body_over_the_limit_is_413_unread(api: Api) -> None:
    body = b"{" + b" " * MAX_BODY_BYTES + b"}"
    response = api.http.post("/enforcement/run", content=body, headers=api.headers())
    assert error_code(response) == (413, "payload_too_large")

    def chunks() -> Iterator[bytes]:
        for _ in range(2 * MAX_BODY_BYTES // 65536):
            yield b" " * 65536

    # Sent without a Content-Length: refused once what arrived passes the limit.
    streamed = httpx.post(
        f"{api.base_url}/enforcement/run", content=chunks(), headers=api.headers(), timeout=30
    )
    assert error_code(streamed) == (413, "payload_too_large")


def runs_of(dagster_webserver: Served, slug: str) -> list[dict[str, str]]:
    filter_ = {"tags": [{"key": TENANT_TAG, "value": slug}]}
    response = httpx.post(
        f"{dagster_webserver.url}/graphql",
        json={"query": RUNS_OF, "variables": {"filter": filter_}},
        timeout=30,
    )
    results = response.json()["data"]["runsOrError"]["results"]
    return [{t["key"]: t["value"] for t in run["tags"]} for run in results]


def test_one_key_cannot_turn_a_delete_into_a_purge(
    api: Api, dagster_webserver: Served, catalog: sa.Engine
) -> None:
    slug = unique_slug("idem")
    created = api.post("/tenants", {"slug": slug, "name": "Idem Co", "plan": "starter"})
    assert created.status_code == 202, created.text
    key = {"Idempotency-Key": f"remove-{slug}"}
    keep_data = api.request("DELETE", f"/tenants/{slug}", **key)
    assert keep_data.status_code == 202, keep_data.text
    runs = len(runs_of(dagster_webserver, slug))
    purge = api.request("DELETE", f"/tenants/{slug}?purge=true", **key)
    assert error_code(purge) == (422, "idempotency_key_reused")
    again = api.request("DELETE", f"/tenants/{slug}", **key)
    assert (again.json(), again.headers["Idempotent-Replayed"]) == (keep_data.json(), "true")
    # As if the first request had died after its launch, before keeping its answer: the key is
    # free again, and the same request sent again finds that run by its request id.
    CatalogKeyStore(catalog).release(key["Idempotency-Key"])
    retried = api.request("DELETE", f"/tenants/{slug}", **key)
    assert retried.status_code == 202, retried.text
    assert retried.json()["run_id"] == keep_data.json()["run_id"]
    assert len(runs_of(dagster_webserver, slug)) == runs
    run_ids = [created.json()["run_id"], keep_data.json()["run_id"]]
    # Clean up: the purge, under a key of its own.
    purged = api.request("DELETE", f"/tenants/{slug}?purge=true", **{"Idempotency-Key": slug})
    assert purged.status_code == 202, purged.text
    for run_id in [*run_ids, purged.json()["run_id"]]:
        assert api.wait_run(run_id)["status"] == "SUCCESS", run_id


@pytest.fixture
def suspended_on_a_custom_domain(catalog: sa.Engine, settings: Settings) -> Iterator[str]:
    slug = unique_slug("hidden")
    domain = f"shop-{uuid.uuid4().hex[:8]}.example.org"
    values = {
        "slug": slug,
        "name": "Hidden Co",
        "plan": "starter",
        "n8n_version": settings.n8n_version,
        "custom_domain": domain,
        "status": "suspended",
        "suspension_reason": "operator",
    }
    with catalog.begin() as connection:
        connection.execute(sa.insert(tenants).values(**values))
    yield domain
    with catalog.begin() as connection:
        connection.execute(sa.delete(tenants).where(tenants.c.slug == slug))


def test_a_custom_domains_public_answer_names_no_slug(
    api_server: Served, suspended_on_a_custom_domain: str
) -> None:
    domain = suspended_on_a_custom_domain
    for accept in ("application/json", "text/html"):
        answer = httpx.get(
            f"{api_server.url}{FALLBACK_PATH}",
            headers={"Host": domain, "Accept": accept},
            timeout=10,
        )
        assert answer.status_code == 503
        assert "hidden-" not in answer.text


# The fuzzing run: schemathesis generates requests from the served OpenAPI (valid ones, and
# invalid ones: wrong types, missing fields, arbitrary text with NUL and control characters),
# each signed as a real caller signs it, against the API in-process on the real catalog with
# Dagster absent (so nothing it generates can launch a run). Bounded and deterministic.
FUZZ_EXAMPLES = 40
FUZZ_SEED = 20261130
NO_DAGSTER = "http://127.0.0.1:1/graphql"
FuzzCase = schemathesis.Case[Any]
HOSTILE_TEXT = [
    "a\x00b",
    "\x00",
    "acme\n",
    "\x1b[2J",
    "\x7f",
    "\u202eemca",
    "' OR 1=1 --",
    "../../etc/passwd",
    "%00",
    "x" * 4096,
]


class SignedRequests(requests.auth.AuthBase):
    """The Bearer token and the signature, over the request exactly as it is sent."""

    def __init__(self, token: str, secret: str) -> None:
        self.token, self.secret = token, secret
        self.sent = 0

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        raw = body.encode() if isinstance(body, str) else body
        assert isinstance(raw, bytes), f"a streamed body: {type(raw)}"
        request.headers["Authorization"] = f"Bearer {self.token}"
        request.headers.update(
            signature_headers(self.secret, request.method or "GET", request.path_url, raw)
        )
        self.sent += 1
        return request


@dataclass
class FuzzFigures:
    operations: int = 0
    requests: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)


def judge(case: FuzzCase, response: schemathesis.Response) -> str | None:
    """What is wrong with an answer, if anything: a 5xx other than 503 dagster_unavailable, an
    error that is not the JSON error body, or a signed request refused as unauthenticated."""
    what = f"{case.method} {case.formatted_path} → {response.status_code}"
    if response.status_code < 400:
        return None
    try:
        error = response.json()["error"]
        code, message = error["code"], error["message"]
    except (ValueError, KeyError, TypeError):
        code = message = None
    if not (isinstance(code, str) and isinstance(message, str)):
        return f"{what}: not an error body: {response.text[:200]!r}"
    if response.status_code >= 500 and (response.status_code, code) != (503, "dagster_unavailable"):
        return f"{what} {code}: {message[:200]}"
    if response.status_code == 401 and case.path != "/stripe/webhook":
        return f"{what} {code}: a signed request was refused"
    return None


def call(case: FuzzCase, client: ASGIClient, figures: FuzzFigures) -> None:
    try:
        response = case.call(session=client)
    except Exception as error:  # the app raised: Starlette answered a 500 and re-raised it
        figures.statuses[500] += 1
        figures.failures.append(f"{case.method} {case.formatted_path} raised {error!r:.300}")
        return
    figures.statuses[response.status_code] += 1
    wrong = judge(case, response)
    if wrong is not None:
        figures.failures.append(wrong)


def test_fuzzing_the_api_finds_no_server_error(settings: Settings) -> None:
    assert settings.orch_hmac_secret, "the local stack sets ORCH_HMAC_SECRET"
    app = create_app()
    app.dependency_overrides[current_settings] = lambda: settings.model_copy(
        update={"dagster_graphql_url": NO_DAGSTER, "traefik_dynamic_dir": ""}
    )
    schema = schemathesis.openapi.from_dict(app.openapi())
    # Not entered: no lifespan, so no Traefik file is written. (Its annotation wants plain
    # dicts where Starlette's says MutableMapping.)
    client = ASGIClient(app)  # type: ignore[arg-type]
    client.auth = signer = SignedRequests(
        settings.orch_token.get_secret_value(), settings.orch_hmac_secret.get_secret_value()
    )
    figures = FuzzFigures()
    started = time.monotonic()
    results = list(schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "the served OpenAPI has an invalid operation"
    for operation in operations:
        figures.operations += 1
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @hypothesis.seed(FUZZ_SEED)
            @hypothesis.settings(
                max_examples=FUZZ_EXAMPLES,
                deadline=None,
                database=None,
                phases=[hypothesis.Phase.generate],
                suppress_health_check=list(hypothesis.HealthCheck),
            )
            @hypothesis.given(operation.as_strategy(generation_mode=mode))
            def send(case: FuzzCase) -> None:
                call(case, client, figures)

            try:
                send()
            except hypothesis.errors.Unsatisfiable:
                assert mode is schemathesis.GenerationMode.NEGATIVE  # nothing to make invalid
        # And every path and query parameter set to hostile text, which random generation
        # reaches rarely (schemathesis never puts a NUL in a path).
        for text in HOSTILE_TEXT:
            if not (operation.path_parameters or operation.query):
                break
            path = {p.name: quote(text, safe="") for p in operation.path_parameters}
            query = {p.name: text for p in operation.query}
            if operation.body:
                case = operation.Case(
                    path_parameters=path, query=query, body={}, media_type="application/json"
                )
            else:
                case = operation.Case(path_parameters=path, query=query)
            call(case, client, figures)
    figures.requests = signer.sent
    elapsed = time.monotonic() - started
    print(
        f"\nfuzz: {figures.operations} operations, {figures.requests} requests, "
        f"{len(figures.failures)} failures in {elapsed:.0f} s; "
        f"statuses {dict(sorted(figures.statuses.items()))}"
    )
    assert figures.operations >= 18
    assert figures.requests >= figures.operations * FUZZ_EXAMPLES
    assert figures.failures == [], "\n".join(figures.failures[:20])
