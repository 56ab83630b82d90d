"""What routes depend on, as `Annotated` aliases; the contract tests override the providers."""

import re
import uuid
from functools import lru_cache
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, Header, Path, Request

from rp9_pipelines.api.auth import (
    MAX_SKEW_S,
    SignatureLedger,
    authenticate,
    fingerprint,
    request_target,
)
from rp9_pipelines.api.dagster_client import DagsterClient
from rp9_pipelines.api.errors import ApiError
from rp9_pipelines.api.idempotency import Idempotency, KeyStore, request_id
from rp9_pipelines.catalog.api import CatalogKeyStore, CatalogSignatures
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.resources.docker_runtime import DockerRuntimeResource
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.resources.redis_queue import RedisResource
from rp9_pipelines.resources.tenant_runtime import runtime_from_settings
from rp9_pipelines.services.promotion import CatalogPromotions, Promotions
from rp9_pipelines.services.tenants import CatalogTenants, Queues, RedisQueues, Tenants
from rp9_pipelines.services.upgrades import CatalogUpgrades, Upgrades
from rp9_pipelines.settings import Settings, get_settings, sqlalchemy_url


async def current_settings() -> Settings:
    """`get_settings()` (read once per process). The providers that do no I/O are coroutines,
    so resolving them takes none of the threads the routes' blocking work runs in."""
    return get_settings()


SettingsDep = Annotated[Settings, Depends(current_settings)]


@lru_cache(maxsize=1)
def _engine(database_url: str) -> sa.Engine:
    return sa.create_engine(
        sqlalchemy_url(database_url), pool_pre_ping=True, connect_args={"connect_timeout": 5}
    )


async def get_engine(settings: SettingsDep) -> sa.Engine:
    return _engine(settings.database_url)


EngineDep = Annotated[sa.Engine, Depends(get_engine)]


def get_tenants(engine: EngineDep) -> Tenants:
    return CatalogTenants(engine)


def get_promotions(engine: EngineDep) -> Promotions:
    return CatalogPromotions(engine)


def get_upgrades(engine: EngineDep) -> Upgrades:
    return CatalogUpgrades(engine)


def get_key_store(engine: EngineDep) -> KeyStore:
    return CatalogKeyStore(engine)


@lru_cache(maxsize=4)
def _signatures(engine: sa.Engine) -> CatalogSignatures:
    # Refusable for as long as the timestamp could pass (up to 2 x the skew after it was
    # accepted), and a minute more for the clocks of several API hosts.
    return CatalogSignatures(engine, keep_s=2 * MAX_SKEW_S + 60)


def get_signatures(engine: EngineDep) -> SignatureLedger:
    return _signatures(engine)


async def raw_body(request: Request) -> bytes:
    """The request's bytes as sent: what an idempotency key or a signature is checked against."""
    return await request.body()


RawBodyDep = Annotated[bytes, Depends(raw_body)]
TenantsDep = Annotated[Tenants, Depends(get_tenants)]
PromotionsDep = Annotated[Promotions, Depends(get_promotions)]
UpgradesDep = Annotated[Upgrades, Depends(get_upgrades)]


async def require_caller(
    request: Request,
    settings: SettingsDep,
    signatures: Annotated[SignatureLedger, Depends(get_signatures)],
) -> None:
    await authenticate(request, settings, signatures)


# What can name a tenant: its UUID, or a slug's shape (the catalog is not asked about others).
SLUG_SHAPE = re.compile(r"[a-z0-9-]{1,63}")


def _is_uuid(ref: str) -> bool:
    try:
        uuid.UUID(ref)
    except ValueError:
        return False
    return True


def tenant_by_ref(
    ref: Annotated[str, Path(description="the tenant's id or slug")], tenants: TenantsDep
) -> Tenant:
    tenant = tenants.get(ref) if SLUG_SHAPE.fullmatch(ref) or _is_uuid(ref) else None
    if tenant is None:
        raise ApiError(404, "tenant_not_found", f"no tenant {ref!r}")
    return tenant


def idempotency(
    request: Request,
    raw: RawBodyDep,
    store: Annotated[KeyStore, Depends(get_key_store)],
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="the same request again (method, path, query, body) gets the first "
            "answer, not a new run; another request with the key is refused",
        ),
    ] = None,
) -> Idempotency:
    path, query = request_target(request)
    return Idempotency(store, key, fingerprint(request.method, path, query, raw))


IdempotencyDep = Annotated[Idempotency, Depends(idempotency)]


def get_dagster(settings: SettingsDep, request: Request, raw: RawBodyDep) -> DagsterClient:
    """Its launches carry the request's id: a keyed request's retries find its run. (The key is
    read here, not declared: routes that take one declare it through `IdempotencyDep`.)"""
    path, query = request_target(request)
    key = request.headers.get("idempotency-key")
    identity = request_id(key, fingerprint(request.method, path, query, raw))
    return DagsterClient(settings.dagster_graphql_url, request_id=identity)


DagsterDep = Annotated[DagsterClient, Depends(get_dagster)]


@lru_cache(maxsize=1)
def _runtime(settings: Settings) -> DockerRuntimeResource:
    return runtime_from_settings(settings)


def get_docker(settings: SettingsDep) -> DockerRuntimeResource:
    """The tenant runtime (`TENANT_RUNTIME`: this engine or a Swarm), one per process."""
    return _runtime(settings)


def get_redis(settings: SettingsDep) -> RedisResource:
    return RedisResource(redis_url=settings.redis_url)


def get_queues(engine: EngineDep, settings: SettingsDep) -> Queues:
    return RedisQueues(engine, RedisResource(redis_url=settings.redis_url))


def get_n8n_data(settings: SettingsDep) -> N8nDataResource:
    return N8nDataResource(admin_url=settings.tenant_admin_url)


# A route with `{ref}` in its path takes the tenant it names, or answers 404 tenant_not_found.
TenantDep = Annotated[Tenant, Depends(tenant_by_ref)]
DockerDep = Annotated[DockerRuntimeResource, Depends(get_docker)]
RedisDep = Annotated[RedisResource, Depends(get_redis)]
QueuesDep = Annotated[Queues, Depends(get_queues)]
N8nDataDep = Annotated[N8nDataResource, Depends(get_n8n_data)]
