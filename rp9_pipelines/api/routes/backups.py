"""A tenant's backups: read them.

(`POST /tenants/{id}/backup` is a tenant action, beside scale and suspend, in `tenants.py`;
restore drills are in `restore_drills.py`.)
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from rp9_pipelines.api.deps import EngineDep, TenantDep, require_caller
from rp9_pipelines.api.errors import errors
from rp9_pipelines.catalog import backups as catalog

router = APIRouter(tags=["backups"], dependencies=[Depends(require_caller)], responses=errors(401))


class Backup(BaseModel):
    id: str
    tenant_id: str
    kind: str = Field(description="daily, weekly, on_demand, pre_promotion, pre_upgrade")
    status: str = Field(description="running, ok, failed, expired")
    bucket: str
    key: str
    size_bytes: int | None
    sha256: str | None
    manifest: Any
    run_id: str | None
    started_at: str | None
    finished_at: str | None
    expires_at: str | None
    error: str | None


class Backups(BaseModel):
    tenant_id: str
    backups: list[Backup]


@router.get("/tenants/{ref}/backups", responses=errors(404, 422))
def list_backups(
    tenant: TenantDep, engine: EngineDep, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> Backups:
    """The tenant's backups, newest first: kind, status, object, size, sha256, manifest."""
    with engine.connect() as connection:
        rows = catalog.list_backups(connection, tenant.id, limit)
    return Backups(
        tenant_id=str(tenant.id), backups=[Backup(**catalog.public_backup(r)) for r in rows]
    )
