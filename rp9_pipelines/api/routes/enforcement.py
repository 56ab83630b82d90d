"""Plan enforcement on demand: `POST /enforcement/run` launches the `enforce_limits` job (the
same the 5-minute schedule runs), for every tenant or for the ones named."""

import uuid
from collections.abc import Sequence
from typing import Annotated, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from rp9_pipelines import launches
from rp9_pipelines.api.deps import DagsterDep, EngineDep, IdempotencyDep, require_caller
from rp9_pipelines.api.errors import LAUNCH_ERRORS, ApiError, errors
from rp9_pipelines.catalog import enforcement as catalog

router = APIRouter(
    tags=["enforcement"], dependencies=[Depends(require_caller)], responses=errors(401)
)

MAX_TENANTS = 1000
# A tenant named in a body or a query: a slug or a UUID. Nothing else reaches the catalog (a NUL
# character, which Postgres refuses in a parameter, is a 422 here, not a 500 there).
TENANT_REF = (
    r"^(?:[a-z0-9][a-z0-9-]{1,38}[a-z0-9]"
    r"|[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12})$"
)
TenantRef = Annotated[str, StringConstraints(pattern=TENANT_REF)]


class RunEnforcement(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenants: list[TenantRef] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_TENANTS,
        description="tenant ids or slugs; default: every tenant",
    )


class EnforcementStarted(BaseModel):
    run_id: str
    tenants: list[str] | Literal["all"] = Field(description="the tenants' ids, or every tenant")


class EnforcementEvent(BaseModel):
    id: str
    tenant_id: str
    slug: str
    period: str = Field(description="YYYY-MM")
    metric: str
    value: float
    limit: float
    threshold: int = Field(description="percent of the limit: 80, 100")
    action: str = Field(description="warn, suspend, overage, resume")
    run_id: str | None
    created_at: str
    notified_at: str | None = Field(description="when the warnings webhook acknowledged it")
    notify_error: str | None


class EnforcementEvents(BaseModel):
    events: list[EnforcementEvent]


def _resolve(connection: sa.Connection, refs: Sequence[str]) -> list[str]:
    """The tenants' ids, in the order given, once each; 404 naming every one not found."""
    ids, missing = catalog.resolve_tenants(connection, refs)
    if missing:
        raise ApiError(404, "tenant_not_found", f"no tenant {', '.join(map(repr, missing))}")
    return ids


@router.post(
    "/enforcement/run",
    status_code=202,
    response_model=EnforcementStarted,
    responses=errors(404, 409, 422, *LAUNCH_ERRORS),
)
def run_enforcement(
    body: RunEnforcement, engine: EngineDep, dagster: DagsterDep, idempotency: IdempotencyDep
) -> JSONResponse:
    """Apply plan limits now (warn at 80 % and 100 %, suspend or allow overage, resume) → 202
    with the run id; events land in `enforcement_events` and go to the warnings webhook."""
    with idempotency.slot() as slot:
        if slot.replay is not None:
            return slot.replay
        scope: list[str] = []
        if body.tenants is not None:
            with engine.connect() as connection:
                scope = _resolve(connection, body.tenants)
        run_id = dagster.launch(launches.enforcement(scope, launches.API))
        return slot.answer(EnforcementStarted(run_id=run_id, tenants=scope or "all"))


@router.get("/enforcement/events", responses=errors(404, 422))
def list_events(
    engine: EngineDep,
    tenant: Annotated[
        str | None, Query(pattern=TENANT_REF, description="a tenant id or slug")
    ] = None,
    period: Annotated[str | None, Query(pattern=r"^[0-9]{4}-[0-9]{2}$")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> EnforcementEvents:
    """Enforcement events, newest first: threshold, action, usage against the limit, and
    whether the warnings webhook acknowledged each."""
    tenant_id: uuid.UUID | None = None
    with engine.connect() as connection:
        if tenant is not None:
            (found,) = _resolve(connection, [tenant])
            tenant_id = uuid.UUID(found)
        rows = catalog.list_events(connection, tenant_id=tenant_id, period=period, limit=limit)
    return EnforcementEvents(
        events=[
            EnforcementEvent(
                id=str(row["id"]),
                tenant_id=str(row["tenant_id"]),
                slug=row["slug"],
                period=row["period"],
                metric=row["metric"],
                value=row["value"],
                limit=row["limit_value"],
                threshold=row["threshold"],
                action=row["action"],
                run_id=row["run_id"],
                created_at=row["created_at"].isoformat(),
                notified_at=row["notified_at"].isoformat() if row["notified_at"] else None,
                notify_error=row["notify_error"],
            )
            for row in rows
        ]
    )
