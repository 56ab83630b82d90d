from functools import lru_cache
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, Request

from rp9_pipelines.api.auth import authenticate
from rp9_pipelines.api.dagster_client import DagsterClient
from rp9_pipelines.resources.docker_runtime import DockerRuntimeResource
from rp9_pipelines.resources.redis_queue import RedisResource
from rp9_pipelines.resources.tenant_db import TenantDatabaseResource
from rp9_pipelines.settings import Settings, get_settings, sqlalchemy_url

SettingsDep = Annotated[Settings, Depends(get_settings)]


@lru_cache(maxsize=1)
def _engine(database_url: str) -> sa.Engine:
    return sa.create_engine(
        sqlalchemy_url(database_url), pool_pre_ping=True, connect_args={"connect_timeout": 5}
    )


def get_engine(settings: SettingsDep) -> sa.Engine:
    return _engine(settings.database_url)


def get_dagster(settings: SettingsDep) -> DagsterClient:
    return DagsterClient(settings.dagster_graphql_url)


async def raw_body(request: Request) -> bytes:
    """The request's bytes as sent: what an idempotency key or a signature is checked against."""
    return await request.body()


async def require_caller(request: Request, settings: SettingsDep) -> None:
    await authenticate(request, settings)


@lru_cache(maxsize=1)
def _docker(docker_host: str) -> DockerRuntimeResource:
    return DockerRuntimeResource(docker_host=docker_host)


def get_docker(settings: SettingsDep) -> DockerRuntimeResource:
    return _docker(settings.docker_host)


def get_redis(settings: SettingsDep) -> RedisResource:
    return RedisResource(redis_url=settings.redis_url)


def get_tenant_db(settings: SettingsDep) -> TenantDatabaseResource:
    return TenantDatabaseResource(admin_url=settings.database_url)


RawBodyDep = Annotated[bytes, Depends(raw_body)]
EngineDep = Annotated[sa.Engine, Depends(get_engine)]
DagsterDep = Annotated[DagsterClient, Depends(get_dagster)]
DockerDep = Annotated[DockerRuntimeResource, Depends(get_docker)]
RedisDep = Annotated[RedisResource, Depends(get_redis)]
TenantDbDep = Annotated[TenantDatabaseResource, Depends(get_tenant_db)]
