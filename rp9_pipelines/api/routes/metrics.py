from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from rp9_pipelines.api.deps import DockerDep, N8nDataDep, RedisDep, TenantDep, require_caller
from rp9_pipelines.api.errors import ApiError, errors
from rp9_pipelines.resources.postgres_admin import UnsafeRelation

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_caller)], responses=errors(401))


class Container(BaseModel):
    name: str
    role: str
    cpu_percent: float
    memory_bytes: int
    memory_limit_bytes: int


class Queue(BaseModel):
    """The tenant's Bull queue in Redis right now."""

    waiting: int
    active: int
    delayed: int


class Executions(BaseModel):
    """What the tenant's n8n recorded over the window."""

    window_s: int
    total: int
    failed: int
    per_minute: float
    error_rate: float
    latency_p95_ms: float | None
    queue_wait_p95_ms: float | None


class TenantMetrics(BaseModel):
    tenant_id: str
    slug: str
    status: str
    workers: int = Field(description="worker containers running")
    containers: list[Container]
    cpu_percent: float
    memory_bytes: int
    queue: Queue
    executions: Executions


@router.get("/metrics/tenant/{ref}", responses=errors(404, 409, 422))
def tenant_metrics(
    tenant: TenantDep,
    docker_runtime: DockerDep,
    redis: RedisDep,
    n8n_data: N8nDataDep,
    window_s: Annotated[int, Query(ge=60, le=86_400)] = 900,
) -> TenantMetrics:
    """Operational KPIs: CPU and memory of the containers, the queue in Redis, and executions
    per minute, latency p95, queue wait p95 and error rate from the tenant's n8n data."""
    names = tenant.names
    stats = docker_runtime.stats(tenant.slug)
    queue = redis.queue_counts(names.bull_prefix)
    try:
        executions = n8n_data.execution_window(names, window_s)
    except UnsafeRelation as error:
        # The tenant changed its n8n tables so that reading them would run its code: the
        # platform does not read them (see the README's security model).
        raise ApiError(409, "tenant_data_unreadable", str(error)) from None
    return TenantMetrics(
        tenant_id=str(tenant.id),
        slug=tenant.slug,
        status=tenant.status,
        workers=sum(1 for s in stats if s.role == "worker"),
        containers=[Container(**s.__dict__) for s in stats],
        cpu_percent=round(sum(s.cpu_percent for s in stats), 2),
        memory_bytes=sum(s.memory_bytes for s in stats),
        queue=Queue(**queue.__dict__),
        executions=Executions(
            window_s=executions.window_s,
            total=executions.total,
            failed=executions.failed,
            per_minute=executions.per_minute,
            error_rate=round(executions.failed / executions.total, 4) if executions.total else 0.0,
            latency_p95_ms=executions.latency_p95_ms,
            queue_wait_p95_ms=executions.queue_wait_p95_ms,
        ),
    )
