"""What routes depend on, as `Annotated` aliases; the contract tests override the providers."""

from functools import lru_cache
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, Header, Path, Request

from rp9_pipelines.api.auth import authenticate
from rp9_pipelines.api.dagster_client import DagsterClient
from rp9_pipelines.api.errors import ApiError
from rp9_pipelines.api.idempotency import CatalogKeyStore, Idempotency, KeyStore
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.resources.docker_runtime import DockerRuntimeResource
from rp9_pipelines.resources.n8n_data import N8nDataResource
from rp9_pipelines.resources.redis_queue import RedisResource
from rp9_pipelines.services.tenants import CatalogTenants, Tenants
from rp9_pipelines.settings import Settings, get_settings, sqlalchemy_url

SettingsDep = Annotated[Settings, Depends(get_settings)]


@lru_cache(maxsize=1)
def _engine(database_url: str) -> sa.Engine:
    return sa.create_engine(
        sqlalchemy_url(database_url), pool_pre_ping=True, connect_args={"connect_timeout": 5}
    )


def get_engine(settings: SettingsDep) -> sa.Engine:
    return _engine(settings.database_url)


EngineDep = Annotated[sa.Engine, Depends(get_engine)]


def get_dagster(settings: SettingsDep) -> DagsterClient:
    return DagsterClient(settings.dagster_graphql_url)


def get_tenants(engine: EngineDep) -> Tenants:
    return CatalogTenants(engine)


def get_key_store(engine: EngineDep) -> KeyStore:
    return CatalogKeyStore(engine)


async def raw_body(request: Request) -> bytes:
    """The request's bytes as sent: what an idempotency key or a signature is checked against."""
    return await request.body()


RawBodyDep = Annotated[bytes, Depends(raw_body)]
DagsterDep = Annotated[DagsterClient, Depends(get_dagster)]
TenantsDep = Annotated[Tenants, Depends(get_tenants)]


async def require_caller(request: Request, settings: SettingsDep) -> None:
    await authenticate(request, settings)


def tenant_by_ref(
    ref: Annotated[str, Path(description="the tenant's id or slug")], tenants: TenantsDep
) -> Tenant:
    tenant = tenants.get(ref)
    if tenant is None:
        raise ApiError(404, "tenant_not_found", f"no tenant {ref!r}")
    return tenant


def idempotency(
    raw: RawBodyDep,
    store: Annotated[KeyStore, Depends(get_key_store)],
    key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            description="a replay (same key, same body) gets the first answer, not a new run",
        ),
    ] = None,
) -> Idempotency:
    return Idempotency(store, key, raw)


@lru_cache(maxsize=1)
def _docker(docker_host: str) -> DockerRuntimeResource:
    return DockerRuntimeResource(docker_host=docker_host)


def get_docker(settings: SettingsDep) -> DockerRuntimeResource:
    return _docker(settings.docker_host)


def get_redis(settings: SettingsDep) -> RedisResource:
    return RedisResource(redis_url=settings.redis_url)


def get_n8n_data(settings: SettingsDep) -> N8nDataResource:
    return N8nDataResource(admin_url=settings.database_url)


# A route with `{ref}` in its path takes the tenant it names, or answers 404 tenant_not_found.
TenantDep = Annotated[Tenant, Depends(tenant_by_ref)]
IdempotencyDep = Annotated[Idempotency, Depends(idempotency)]
DockerDep = Annotated[DockerRuntimeResource, Depends(get_docker)]
RedisDep = Annotated[RedisResource, Depends(get_redis)]
N8nDataDep = Annotated[N8nDataResource, Depends(get_n8n_data)]
