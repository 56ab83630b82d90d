"""`Idempotency-Key` on POSTs and DELETEs, bound to the request it came with: method, path,
query and body (their fingerprint).

The first request with a key does the work and its response is kept; the same request again
gets the same response (and the same run), never a second launch; another request with that
key is refused (`idempotency_key_reused`), so `DELETE /tenants/x` is never answered with the run
of `DELETE /tenants/x?purge=true`. While the first is at work, the key answers
`request_in_progress`; a request that died holding it stops holding it after
`IN_PROGRESS_TTL_S`, and the next same request carries on. Every launch of a keyed request is
tagged with its `request_id` (`api/dagster_client.py`), so the one that carries on finds the run
of the one that died, if it launched one, instead of launching a second.
"""

import datetime as dt
import hashlib
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi.responses import JSONResponse
from pydantic import BaseModel

from rp9_pipelines.api.errors import ApiError
from rp9_pipelines.catalog.api import IN_PROGRESS, Kept

__all__ = ["IN_PROGRESS", "Idempotency", "Kept", "KeyStore", "Slot"]

MAX_KEY_LENGTH = 200
KEY = re.compile(rf"[\x21-\x7e]{{1,{MAX_KEY_LENGTH}}}")
# Longer than a request can take: the Dagster client's timeout and its look-up after one.
IN_PROGRESS_TTL_S = 120.0


class KeyStore(Protocol):
    """Where keys are kept (`catalog.api.CatalogKeyStore`; a dict in the API's contract tests)."""

    def claim(self, key: str, fingerprint: str) -> Kept | None:
        """Take the key for this request: None if it was free, else what it holds."""

    def take_over(self, key: str, started_at: dt.datetime) -> bool:
        """Hold a key whose request died (in progress since `started_at`); False if another
        request took it first."""

    def keep(self, key: str, status_code: int, response: dict[str, Any]) -> None: ...

    def release(self, key: str) -> None: ...


def request_id(key: str | None, fingerprint: str) -> str | None:
    """What a keyed request's launches are tagged with: the same for every retry of the
    request, and for no other request; None without a key."""
    if not key:
        return None
    return hashlib.sha256(f"{key}\n{fingerprint}".encode()).hexdigest()[:32]


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
    """A request's key (if it sent one) and fingerprint, and where keys are kept."""

    store: KeyStore
    key: str | None
    fingerprint: str

    @property
    def request_id(self) -> str | None:
        return request_id(self.key, self.fingerprint)

    @contextmanager
    def slot(self) -> Iterator[Slot]:
        """The key's slot (a fresh one when the request sent no key), bound to the request's
        own method, path, query and body."""
        slot = Slot()
        if not self.key:
            yield slot
            return
        if not KEY.fullmatch(self.key):
            raise ApiError(
                422,
                "invalid_idempotency_key",
                f"Idempotency-Key is 1 to {MAX_KEY_LENGTH} visible ASCII characters",
            )
        kept = self.store.claim(self.key, self.fingerprint)
        if kept is not None:
            if kept.request_sha256 != self.fingerprint:
                raise ApiError(
                    422,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used with another request "
                    "(method, path, query or body)",
                )
            if kept.status_code != IN_PROGRESS:
                slot.replay = replayed(kept.status_code, kept.response)
                yield slot
                return
            if (
                kept.started_at is None
                or kept.age_s <= IN_PROGRESS_TTL_S  # its request may still be at work
                or not self.store.take_over(self.key, kept.started_at)
            ):
                raise ApiError(409, "request_in_progress", "a request with this key is in progress")
        try:
            yield slot
        except BaseException:
            # Nothing was kept: free the key so the caller can retry with it (a retry finds any
            # run this request launched by its request id).
            self.store.release(self.key)
            raise
        if slot.stored is not None:
            self.store.keep(self.key, *slot.stored)
