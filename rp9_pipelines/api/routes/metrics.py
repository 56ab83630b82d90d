from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from rp9_pipelines.api.deps import DockerDep, EngineDep, RedisDep, TenantDbDep, require_caller
from rp9_pipelines.api.errors import ApiError
from rp9_pipelines.catalog import tenants as catalog

router = APIRouter(tags=["metrics"], dependencies=[Depends(require_caller)])


@router.get("/metrics/tenant/{ref}")
def tenant_metrics(
    ref: str,
    engine: EngineDep,
    docker_runtime: DockerDep,
    redis: RedisDep,
    tenant_db: TenantDbDep,
    window_s: Annotated[int, Query(ge=60, le=86_400)] = 900,
) -> dict[str, Any]:
    """Operational KPIs: CPU and memory of the containers, the queue in Redis, and executions
    per minute, latency p95, queue wait p95 and error rate from the tenant's n8n data."""
    with engine.connect() as connection:
        tenant = catalog.get_tenant(connection, ref)
    if tenant is None:
        raise ApiError(404, "tenant_not_found", f"no tenant {ref!r}")
    names = tenant.names
    stats = docker_runtime.stats(tenant.slug)
    queue = redis.queue_counts(names.bull_prefix)
    executions = tenant_db.execution_window(names, window_s)
    return {
        "tenant_id": str(tenant.id),
        "slug": tenant.slug,
        "status": tenant.status,
        "workers": sum(1 for s in stats if s.role == "worker"),
        "containers": [s.__dict__ for s in stats],
        "cpu_percent": round(sum(s.cpu_percent for s in stats), 2),
        "memory_bytes": sum(s.memory_bytes for s in stats),
        "queue": queue.__dict__,
        "executions": {
            "window_s": executions.window_s,
            "total": executions.total,
            "failed": executions.failed,
            "per_minute": executions.per_minute,
            "error_rate": round(executions.failed / executions.total, 4)
            if executions.total
            else 0.0,
            "latency_p95_ms": executions.latency_p95_ms,
            "queue_wait_p95_ms": executions.queue_wait_p95_ms,
        },
    }
