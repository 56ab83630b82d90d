"""Every error the API answers is `ErrorBody`: `{"error": {"code", "message"}}`, the code stable
and machine-readable. Routes declare theirs with `responses=errors(404, 409, ...)`."""

from typing import Any

import sqlalchemy as sa
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from rp9_pipelines.domain.tenants import InvalidRequest
from rp9_pipelines.services.tenants import Conflict


class ApiError(Exception):
    """An error answered as JSON with a stable, machine-readable code."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.code = code
        self.message = message


class ErrorDetail(BaseModel):
    code: str = Field(description="stable and machine-readable, e.g. `tenant_not_found`")
    message: str = Field(description="for people")


class ErrorBody(BaseModel):
    error: ErrorDetail


# What each status means here; the codes under it are the stable part.
MEANINGS = {
    400: "Bad request (`signature_required`, `invalid_signature`, `stale_timestamp`, …)",
    401: "Missing or invalid credentials (`unauthorized`, `signature_required`, "
    "`invalid_signature`, `invalid_timestamp`, `stale_timestamp`, `replayed_signature`)",
    404: "Not found (`tenant_not_found`, `run_not_found`, `backup_not_found`)",
    409: "Conflicts with the current state (`invalid_state`, `slug_taken`, `domain_taken`, "
    "`request_in_progress`, …)",
    413: "The body is over the API's limit (`payload_too_large`)",
    422: "Invalid request (`invalid_request`, `invalid_slug`, `unknown_plan`, "
    "`workers_out_of_range`, `idempotency_key_reused`, …)",
    502: "Dagster refused the run (`dagster_error`, `launch_failed`)",
    503: "A dependency is unreachable (`dagster_unavailable`, …)",
}
# Every route that launches a run can answer these (the Dagster client's errors).
LAUNCH_ERRORS = (502, 503)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """A route's `responses=`: `ErrorBody` under each status it can answer with."""
    return {status: {"model": ErrorBody, "description": MEANINGS[status]} for status in statuses}


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    return {"error": {"code": code, "message": message}}


async def api_error_handler(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, ApiError)
    return JSONResponse(error_body(error.code, error.message), status_code=error.status_code)


async def refused_handler(_: Request, error: Exception) -> JSONResponse:
    """The services' refusals: an invalid request is 422, a conflict with the catalog 409."""
    assert isinstance(error, InvalidRequest | Conflict)
    status_code = 409 if isinstance(error, Conflict) else 422
    return JSONResponse(error_body(error.code, str(error)), status_code=status_code)


async def data_error_handler(_: Request, error: Exception) -> JSONResponse:
    """A value the catalog refuses (a NUL character, a number out of its range) came from the
    request: the routes refuse what they can see first; this is the net under them."""
    assert isinstance(error, sa.exc.DataError)
    message = "the request holds a value the catalog cannot store"
    return JSONResponse(error_body("invalid_request", message), status_code=422)


async def internal_error_handler(_: Request, error: Exception) -> JSONResponse:
    """Even a bug answers JSON with a stable code (Starlette still logs its traceback)."""
    return JSONResponse(error_body("internal_error", "internal error"), status_code=500)


async def http_error_handler(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
    return JSONResponse(error_body(code, str(error.detail)), status_code=error.status_code)


async def validation_error_handler(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    first = error.errors()[0] if error.errors() else {}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body")
    message = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
    return JSONResponse(error_body("invalid_request", message), status_code=422)
