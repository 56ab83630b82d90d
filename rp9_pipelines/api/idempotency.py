"""`Idempotency-Key` on POSTs: the first request with a key does the work and its response is
kept; a replay with the same body gets the same response (and the same run), never a second
launch."""

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from fastapi.responses import JSONResponse
from sqlalchemy.dialects.postgresql import insert

from rp9_pipelines.api.errors import ApiError
from rp9_pipelines.catalog.tables import idempotency_keys

IN_PROGRESS = 0


@dataclass
class Slot:
    replay: tuple[int, dict[str, Any]] | None = None
    stored: tuple[int, dict[str, Any]] | None = field(default=None)

    def store(self, status_code: int, body: dict[str, Any]) -> None:
        self.stored = (status_code, body)


def replayed(replay: tuple[int, dict[str, Any]]) -> JSONResponse:
    """The response kept for the key, marked as a replay."""
    status_code, body = replay
    return JSONResponse(body, status_code=status_code, headers={"Idempotent-Replayed": "true"})


@contextmanager
def idempotent(engine: sa.Engine, key: str | None, route: str, body: bytes) -> Iterator[Slot]:
    slot = Slot()
    if not key:
        yield slot
        return
    if len(key) > 200:
        raise ApiError(422, "invalid_idempotency_key", "Idempotency-Key is at most 200 characters")
    digest = hashlib.sha256(body).hexdigest()
    with engine.begin() as connection:
        claimed = connection.execute(
            insert(idempotency_keys)
            .values(
                key=key, route=route, request_sha256=digest, status_code=IN_PROGRESS, response={}
            )
            .on_conflict_do_nothing()
            .returning(idempotency_keys.c.key)
        ).first()
        if claimed is None:
            row = connection.execute(
                sa.select(idempotency_keys).where(
                    idempotency_keys.c.key == key, idempotency_keys.c.route == route
                )
            ).one()
    if claimed is None:
        if row.request_sha256 != digest:
            raise ApiError(
                422, "idempotency_key_reused", "this Idempotency-Key was used with another body"
            )
        if row.status_code == IN_PROGRESS:
            raise ApiError(409, "request_in_progress", "a request with this key is in progress")
        slot.replay = (row.status_code, row.response)
        yield slot
        return
    try:
        yield slot
    except BaseException:
        # Nothing was done: free the key so the caller can retry with it.
        with engine.begin() as connection:
            connection.execute(
                sa.delete(idempotency_keys).where(
                    idempotency_keys.c.key == key, idempotency_keys.c.route == route
                )
            )
        raise
    if slot.stored is not None:
        status_code, response = slot.stored
        with engine.begin() as connection:
            connection.execute(
                sa.update(idempotency_keys)
                .where(idempotency_keys.c.key == key, idempotency_keys.c.route == route)
                .values(status_code=status_code, response=response)
            )
