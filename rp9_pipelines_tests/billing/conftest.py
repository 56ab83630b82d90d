"""Billing against the real catalog (Postgres) and the project's Stripe-compatible server,
driven through the real `stripe` SDK. The server is the stack's (`STRIPE_API_BASE`); tests
share it, so every tenant and customer they make is their own."""

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import stripe

from rp9_pipelines.catalog import tenants as tenant_catalog
from rp9_pipelines.catalog.tables import usage, usage_reports
from rp9_pipelines.resources.stripe import make_client
from rp9_pipelines.settings import Settings, sqlalchemy_url

STRIPE_ENV = ("STRIPE_SECRET_KEY", "STRIPE_API_BASE", "STRIPE_WEBHOOK_SECRET")


@dataclass(frozen=True)
class StripeDouble:
    api_base: str
    api_key: str
    webhook_secret: str

    def client(self, retries: int = 2) -> stripe.StripeClient:
        return make_client(self.api_key, self.api_base, max_network_retries=retries, timeout_s=10)

    def control(self, verb: str, path: str, body: dict[str, object] | None = None) -> Any:
        response = httpx.request(verb, f"{self.api_base}/_double/{path}", json=body, timeout=10)
        response.raise_for_status()
        return response.json()

    def fault(self, method: str, path: str, status: int, count: int = 1, **more: object) -> None:
        body = {"method": method, "path": path, "status": status, "count": count, **more}
        self.control("POST", "faults", body)


@pytest.fixture(scope="session")
def stripe_double(settings: Settings) -> StripeDouble:
    missing = [name for name in STRIPE_ENV if not os.environ.get(name)]
    if missing:
        pytest.fail(f"the stack's Stripe-compatible server is not configured: {missing} unset")
    double = StripeDouble(
        os.environ["STRIPE_API_BASE"],
        settings.stripe_secret_key.get_secret_value(),
        os.environ["STRIPE_WEBHOOK_SECRET"],
    )
    health = httpx.get(f"{double.api_base}/_double/health", timeout=5)
    assert health.status_code == 200, health.text
    return double


@pytest.fixture(scope="session")
def catalog_engine(settings: Settings) -> Iterator[sa.Engine]:
    engine = sa.create_engine(sqlalchemy_url(settings.database_url), pool_pre_ping=True)
    yield engine
    engine.dispose()


def forget(engine: sa.Engine, tenant_id: uuid.UUID) -> None:
    with engine.begin() as connection:
        for table in (usage_reports, usage):
            connection.execute(sa.delete(table).where(table.c.tenant_id == tenant_id))
        tenant_catalog.forget_tenant(connection, tenant_id)


def catalog_tenant(engine: sa.Engine) -> tenant_catalog.Tenant:
    """A new catalog tenant on the starter plan (no containers: billing reads only the
    catalog); `forget` removes it."""
    slug = f"bill-{uuid.uuid4().hex[:8]}"
    with engine.begin() as connection:
        tenant_id = tenant_catalog.insert_tenant(
            connection,
            {
                "slug": slug,
                "name": f"Billing {slug}",
                "plan": "starter",
                "status": "active",
                "n8n_version": "2.20.12",
            },
        )
        plan = tenant_catalog.plan_limits(connection, "starter")
        assert plan is not None
        tenant_catalog.set_quota(connection, tenant_id, "plan", plan)
        tenant = tenant_catalog.get_tenant(connection, tenant_id)
    assert tenant is not None
    return tenant


@pytest.fixture
def billing_tenant(catalog_engine: sa.Engine) -> Iterator[tenant_catalog.Tenant]:
    """A catalog tenant, removed afterwards with its usage, ledger and quotas."""
    tenant = catalog_tenant(catalog_engine)
    yield tenant
    forget(catalog_engine, tenant.id)
