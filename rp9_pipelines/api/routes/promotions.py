"""Promotions from the shared tier to a dedicated database: request one (202 with its run),
follow them (every phase with its time and figures), and go back within the rollback window."""

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from rp9_pipelines.api.deps import (
    DagsterDep,
    IdempotencyDep,
    PromotionsDep,
    TenantDep,
    require_caller,
)
from rp9_pipelines.api.errors import LAUNCH_ERRORS, errors
from rp9_pipelines.api.idempotency import Idempotency
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.services import promotion as service

router = APIRouter(
    tags=["promotions"], dependencies=[Depends(require_caller)], responses=errors(401)
)


class PromotionLaunched(BaseModel):
    tenant_id: str
    slug: str
    promotion_id: str
    run_id: str


class PromotionPublic(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    trigger: str
    status: str = Field(description="running, succeeded, rolled_back or failed")
    phase: str
    run_id: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None
    switched_at: dt.datetime | None
    rollback_until: dt.datetime | None
    shared_removed_at: dt.datetime | None
    error: str | None
    steps: list[dict[str, Any]] = Field(description="each phase reached, with its time")
    figures: dict[str, Any] = Field(
        description="rows copied and compared, digests, the hold's seconds, executions left"
        " behind by a rollback, …"
    )


class Promotions(BaseModel):
    promotions: list[PromotionPublic]


def _public(row: dict[str, Any]) -> PromotionPublic:
    figures = {k: v for k, v in row["figures"].items() if k != "foreign_keys"}
    return PromotionPublic(**{**row, "id": str(row["id"]), "figures": figures})


def _launch(
    idempotency: Idempotency, tenant: Tenant, request: Callable[[], tuple[uuid.UUID, str]]
) -> JSONResponse:
    """The request, once per Idempotency-Key: 202 with the promotion and its run."""
    with idempotency.slot() as slot:
        if slot.replay is not None:
            return slot.replay
        promotion_id, run_id = request()
        launched = PromotionLaunched(
            tenant_id=str(tenant.id),
            slug=tenant.slug,
            promotion_id=str(promotion_id),
            run_id=run_id,
        )
        return slot.answer(launched)


@router.post(
    "/tenants/{ref}/promote",
    status_code=202,
    response_model=PromotionLaunched,
    responses=errors(404, 409, 422, *LAUNCH_ERRORS),
)
def promote_tenant(
    tenant: TenantDep, promotions: PromotionsDep, dagster: DagsterDep, idempotency: IdempotencyDep
) -> JSONResponse:
    """Promote a shared tenant to a dedicated database, live (copy, then a held cutover). 409
    `already_dedicated`, `promotion_in_progress` or `invalid_state` (suspended, deleted, …)."""
    return _launch(
        idempotency, tenant, lambda: service.request_promotion(promotions, dagster.launch, tenant)
    )


@router.get("/tenants/{ref}/promotions", responses=errors(404, 422))
def list_promotions(tenant: TenantDep, promotions: PromotionsDep) -> Promotions:
    """Every promotion of the tenant, newest first, with its phases and figures."""
    return Promotions(promotions=[_public(row) for row in promotions.of_tenant(tenant.id)])


@router.post(
    "/tenants/{ref}/promotion/rollback",
    status_code=202,
    response_model=PromotionLaunched,
    responses=errors(404, 409, 422, *LAUNCH_ERRORS),
)
def roll_back_promotion(
    tenant: TenantDep, promotions: PromotionsDep, dagster: DagsterDep, idempotency: IdempotencyDep
) -> JSONResponse:
    """Within the rollback window, return the tenant to its shared schema; the promotion's
    figures then say how many executions made on the dedicated side stay behind. 409
    `no_promotion`, `rollback_window_over` or `invalid_state`."""
    return _launch(
        idempotency,
        tenant,
        lambda: service.request_rollback(
            promotions, dagster.launch, tenant, dt.datetime.now(dt.UTC)
        ),
    )
