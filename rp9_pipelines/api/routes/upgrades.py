"""Blue/green n8n upgrades: request one for a tenant (202 with its run), follow them (every
phase with its time and figures), go back within the window, and roll a version out to the
fleet in waves."""

import datetime as dt
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from rp9_pipelines import launches
from rp9_pipelines.api.deps import (
    DagsterDep,
    EngineDep,
    IdempotencyDep,
    TenantDep,
    UpgradesDep,
    require_caller,
)
from rp9_pipelines.api.errors import LAUNCH_ERRORS, ApiError, errors
from rp9_pipelines.api.idempotency import Idempotency
from rp9_pipelines.catalog import upgrades as catalog
from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.domain.upgrades import parse_version
from rp9_pipelines.services import upgrades as service

router = APIRouter(tags=["upgrades"], dependencies=[Depends(require_caller)], responses=errors(401))


class UpgradeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str = Field(
        description="the n8n version to upgrade to (one offered, on a tested path)"
    )


class UpgradeLaunched(BaseModel):
    tenant_id: str
    slug: str
    upgrade_id: str
    run_id: str


class UpgradePublic(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str
    from_version: str
    to_version: str
    status: str = Field(description="running, succeeded, rolled_back or failed")
    phase: str
    rollout: str | None
    run_id: str | None
    started_at: dt.datetime
    finished_at: dt.datetime | None
    switched_at: dt.datetime | None
    rollback_until: dt.datetime | None
    error: str | None
    steps: list[dict[str, Any]] = Field(description="each phase reached, with its time")
    figures: dict[str, Any] = Field(
        description="rehearsal and migration seconds, its checks, the hold's seconds, the"
        " snapshot, the watch, executions left behind by a rollback, …"
    )


class Upgrades(BaseModel):
    upgrades: list[UpgradePublic]


class Versions(BaseModel):
    versions: list[str]
    paths: list[dict[str, str]]


class RolloutRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: str
    waves: list[float] = Field(
        default=[100.0], description="cumulative percentages of the fleet, rising, up to 100"
    )
    canaries: list[str] = Field(default=[], description="slugs upgraded first, alone")
    tenants: list[str] = Field(
        default=[], description="slugs to roll out to; empty: every active tenant"
    )


class RolloutLaunched(BaseModel):
    rollout_id: str
    run_id: str


def _require_version(version: str) -> None:
    try:
        parse_version(version)
    except ValueError as error:
        raise ApiError(422, "invalid_version", str(error)) from None


def _launch(
    idempotency: Idempotency, tenant: Tenant, request: Callable[[], tuple[uuid.UUID, str]]
) -> JSONResponse:
    with idempotency.slot() as slot:
        if slot.replay is not None:
            return slot.replay
        upgrade_id, run_id = request()
        return slot.answer(
            UpgradeLaunched(
                tenant_id=str(tenant.id),
                slug=tenant.slug,
                upgrade_id=str(upgrade_id),
                run_id=run_id,
            )
        )


@router.post(
    "/tenants/{ref}/upgrade",
    status_code=202,
    response_model=UpgradeLaunched,
    responses=errors(404, 409, 422, *LAUNCH_ERRORS),
)
def upgrade_tenant(
    body: UpgradeRequest,
    tenant: TenantDep,
    upgrades: UpgradesDep,
    dagster: DagsterDep,
    idempotency: IdempotencyDep,
) -> JSONResponse:
    """Upgrade the tenant's n8n: rehearsed on a copy of its data, then switched with its
    requests held at the edge and watched. 409 `tenant_busy`, `invalid_state`,
    `already_on_version`, `version_not_offered`, `downgrade` or `path_not_tested`; 422
    `invalid_version`."""
    _require_version(body.version)
    return _launch(
        idempotency,
        tenant,
        lambda: service.request_upgrade(upgrades, dagster.launch, tenant, body.version),
    )


@router.get("/tenants/{ref}/upgrades", responses=errors(404, 422))
def list_upgrades(tenant: TenantDep, upgrades: UpgradesDep) -> Upgrades:
    """Every upgrade of the tenant, newest first, with its phases and figures."""
    return Upgrades(
        upgrades=[
            UpgradePublic(**{**row, "id": str(row["id"])}) for row in upgrades.of_tenant(tenant.id)
        ]
    )


@router.post(
    "/tenants/{ref}/upgrade/rollback",
    status_code=202,
    response_model=UpgradeLaunched,
    responses=errors(404, 409, 422, *LAUNCH_ERRORS),
)
def roll_back_upgrade(
    tenant: TenantDep, upgrades: UpgradesDep, dagster: DagsterDep, idempotency: IdempotencyDep
) -> JSONResponse:
    """Within the window: the snapshot taken before the last upgrade's switch and the version
    before it, back; the upgrade's figures then say how many executions made since the
    snapshot stay behind. 409 `no_upgrade`, `rollback_window_over` or `invalid_state`."""
    return _launch(
        idempotency,
        tenant,
        lambda: service.request_rollback(upgrades, dagster.launch, tenant, dt.datetime.now(dt.UTC)),
    )


@router.get("/upgrades/versions")
def versions(engine: EngineDep) -> Versions:
    """The n8n versions the platform offers and the upgrade paths it has tested."""
    with engine.connect() as connection:
        offer = catalog.offer(connection)
    return Versions(
        versions=sorted(offer.versions, key=parse_version),
        paths=[{"from": a, "to": b} for a, b in sorted(offer.paths)],
    )


@router.post(
    "/upgrades/rollout",
    status_code=202,
    response_model=RolloutLaunched,
    responses=errors(409, 422, *LAUNCH_ERRORS),
)
def roll_out(body: RolloutRequest, engine: EngineDep, dagster: DagsterDep) -> RolloutLaunched:
    """Roll a version out to the fleet: the canaries, then waves by percentage, one
    `upgrade_tenant` run per tenant tagged with the rollout, halted after the first wave with a
    failed rehearsal or a rollback. 409 `version_not_offered`; 422 for waves that do not rise
    within (0, 100]."""
    _require_version(body.version)
    if any(not 0 < p <= 100 for p in body.waves) or body.waves != sorted(body.waves):
        raise ApiError(422, "invalid_waves", "wave percentages must rise within (0, 100]")
    with engine.connect() as connection:
        offer = catalog.offer(connection)
    if body.version not in offer.versions:
        raise ApiError(409, "version_not_offered", f"n8n {body.version} is not offered")
    rollout_id = f"rollout-{uuid.uuid4().hex[:12]}"
    run_id = dagster.launch(launches.rollout(rollout_id, body.model_dump()))
    return RolloutLaunched(rollout_id=rollout_id, run_id=run_id)
