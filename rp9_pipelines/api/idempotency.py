"""`Idempotency-Key` on POSTs: the first request with a key does the work and its response is
kept; a replay with the same body gets the same response (and the same run), never a second
launch."""

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import sqlalchemy as sa
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy.dialects.postgresql import insert

from rp9_pipelines.api.errors import ApiError
from rp9_pipelines.catalog.tables import idempotency_keys

IN_PROGRESS = 0
MAX_KEY_LENGTH = 200


@dataclass(frozen=True)
class Kept:
    """What a key holds: the request it came with and, once done, the response."""

    request_sha256: str
    status_code: int  # IN_PROGRESS until the response is kept
    response: dict[str, Any]


class KeyStore(Protocol):
    """Where keys are kept (`CatalogKeyStore`; a dict in the API's contract tests)."""

    def claim(self, key: str, route: str, request_sha256: str) -> Kept | None:
        """Take the key for this request: None if it was free, else what it holds."""

    def keep(self, key: str, route: str, status_code: int, response: dict[str, Any]) -> None: ...

    def release(self, key: str, route: str) -> None: ...


@dataclass(frozen=True)
class CatalogKeyStore:
    engine: sa.Engine

    def _this(self, key: str, route: str) -> sa.ColumnElement[bool]:
        return sa.and_(idempotency_keys.c.key == key, idempotency_keys.c.route == route)

    def claim(self, key: str, route: str, request_sha256: str) -> Kept | None:
        with self.engine.begin() as connection:
            claimed = connection.execute(
                insert(idempotency_keys)
                .values(
                    key=key,
                    route=route,
                    request_sha256=request_sha256,
                    status_code=IN_PROGRESS,
                    response={},
                )
                .on_conflict_do_nothing()
                .returning(idempotency_keys.c.key)
            ).first()
            if claimed is not None:
                return None
            row = connection.execute(
                sa.select(idempotency_keys).where(self._this(key, route))
            ).one()
        return Kept(row.request_sha256, row.status_code, row.response)

    def keep(self, key: str, route: str, status_code: int, response: dict[str, Any]) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                sa.update(idempotency_keys)
                .where(self._this(key, route))
                .values(status_code=status_code, response=response)
            )

    def release(self, key: str, route: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(sa.delete(idempotency_keys).where(self._this(key, route)))


def replayed(status_code: int, body: dict[str, Any]) -> JSONResponse:
    """The response kept for the key, marked as a replay."""
    return JSONResponse(body, status_code=status_code, headers={"Idempotent-Replayed": "true"})


@dataclass
class Slot:
    """Inside `Idempotency.slot`: `replay` is the kept answer if the work was done already;
    otherwise do it and return `answer(...)`, which keeps it."""

    replay: JSONResponse | None = None
    stored: tuple[int, dict[str, Any]] | None = None

    def answer(self, body: BaseModel, status_code: int = 202) -> JSONResponse:
        content = body.model_dump(mode="json")
        self.stored = (status_code, content)
        return JSONResponse(content, status_code=status_code)


@dataclass(frozen=True)
class Idempotency:
    """A request's key (if it sent one) and body, and where keys are kept."""

    store: KeyStore
    key: str | None
    body: bytes

    @contextmanager
    def slot(self, route: str) -> Iterator[Slot]:
        """The key's slot on `route` (a fresh one when the request sent no key)."""
        slot = Slot()
        if not self.key:
            yield slot
            return
        if len(self.key) > MAX_KEY_LENGTH:
            raise ApiError(
                422,
                "invalid_idempotency_key",
                f"Idempotency-Key is at most {MAX_KEY_LENGTH} characters",
            )
        digest = hashlib.sha256(self.body).hexdigest()
        kept = self.store.claim(self.key, route, digest)
        if kept is not None:
            if kept.request_sha256 != digest:
                raise ApiError(
                    422, "idempotency_key_reused", "this Idempotency-Key was used with another body"
                )
            if kept.status_code == IN_PROGRESS:
                raise ApiError(409, "request_in_progress", "a request with this key is in progress")
            slot.replay = replayed(kept.status_code, kept.response)
            yield slot
            return
        try:
            yield slot
        except BaseException:
            # Nothing was done: free the key so the caller can retry with it.
            self.store.release(self.key, route)
            raise
        if slot.stored is not None:
            self.store.keep(self.key, route, *slot.stored)
