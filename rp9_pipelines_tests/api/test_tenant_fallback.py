"""The public fallback answer: it names no slug for a custom domain, and a flood of it cannot
starve the admin API (a few look-up threads of its own, the rest shed with a 503)."""

import threading
import time
from collections import namedtuple
from typing import Any

import anyio
import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from rp9_pipelines.api.routes import tenant_fallback
from rp9_pipelines.domain.routing import FALLBACK_PATH
from rp9_pipelines_tests.api.conftest import BASE_DOMAIN
from rp9_pipelines_tests.api_client import Api

Row = namedtuple("Row", "slug status suspension_reason")
CATALOG = {
    f"acme.{BASE_DOMAIN}": Row("acme", "suspended", "operator"),
    "shop.acme.org": Row("acme", "suspended", "enforcement"),
    "new.example.org": Row("acme", "provisioning", None),
}


@pytest.fixture
def catalog(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The catalog as the fallback reads it; the hosts it was asked about."""
    asked: list[str] = []

    def find(_: sa.Engine, host: str, base_domain: str) -> Any:
        asked.append(host)
        return CATALOG.get(host)

    monkeypatch.setattr(tenant_fallback, "_find", find)
    return asked


def ask(api: Api, host: str, accept: str = "application/json") -> httpx.Response:
    return api.http.get(FALLBACK_PATH, headers={"Host": host, "Accept": accept})


def test_a_tenants_own_host_names_it(api: Api, catalog: list[str]) -> None:
    answer = ask(api, f"acme.{BASE_DOMAIN}")
    assert (answer.status_code, answer.json()["error"]["code"]) == (503, "tenant_suspended")
    assert answer.json()["error"]["message"] == "acme is suspended by its operator"


@pytest.mark.parametrize("host", ["shop.acme.org", "new.example.org"])
@pytest.mark.parametrize("accept", ["application/json", "text/html"])
def test_a_custom_domain_gives_no_slug_away(
    api: Api, catalog: list[str], host: str, accept: str
) -> None:
    answer = ask(api, host, accept)
    assert answer.status_code == 503
    assert "acme" not in answer.text.replace(host, "")


@pytest.mark.parametrize("host", ["a\u0001b.org", "-x.org", "x" * 300, "[::1]", "a b", "x_y.org"])
def test_a_host_that_is_no_dns_name_is_404_without_asking(
    api: Api, catalog: list[str], host: str
) -> None:
    response = api.http.get(FALLBACK_PATH, headers={"Host": host})
    assert (response.status_code, response.json()["error"]["code"]) == (404, "tenant_not_found")
    assert catalog == []


def test_a_flood_of_the_fallback_does_not_starve_the_admin_api(
    app: FastAPI, api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tenant_fallback, "MAX_WAITING", 12)
    release = threading.Event()
    running = 0
    most = 0
    lock = threading.Lock()

    def slow_find(_: sa.Engine, host: str, base_domain: str) -> Any:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(10)
        with lock:
            running -= 1
        return None

    monkeypatch.setattr(tenant_fallback, "_find", slow_find)
    statuses: list[int] = []

    async def flood() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:

            async def visitor(n: int) -> None:
                host = {"Host": f"unknown-{n}.example.org"}
                statuses.append((await client.get(FALLBACK_PATH, headers=host)).status_code)

            async with anyio.create_task_group() as visitors:
                for n in range(40):
                    visitors.start_soon(visitor, n)
                await anyio.sleep(0.3)
                # Every look-up thread is held and 28 visitors were turned away; an admin
                # route (blocking work in the threads routes run in) still answers at once.
                started = time.monotonic()
                signed = api.signed("GET", "/runs/nope")
                answer = await client.get("/runs/nope", headers=signed)
                assert (answer.status_code, time.monotonic() - started < 2) == (404, True)
                release.set()

    anyio.run(flood)
    assert most == tenant_fallback.LOOKUP_THREADS
    assert sorted(set(statuses)) == [404, 503]
    assert statuses.count(503) == 40 - 12
