"""The API's once-only ledger: what a request may do a single time, shared by every API process.

It lives in `idempotency_keys`, whose primary key (key, route) is the unique constraint that
makes several processes agree, one namespace per use in `route`:

- `Idempotency-Key`: a caller's key, with the fingerprint of the request it came with
  (`request_sha256`), and once done, its response; `created_at` is when the request holding it
  started (a request that died is taken over, and the time reset, by the next same request).
- `X-Signature`: a signature the API accepted, kept until it could no longer pass the skew check.

(`POST /stripe/webhook` keeps Stripe's event ids there too, under its own route.)
"""

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert

from rp9_pipelines.catalog.tables import idempotency_keys

KEYS = "Idempotency-Key"
SIGNATURES = "X-Signature"
IN_PROGRESS = 0


@dataclass(frozen=True)
class Kept:
    """What a key holds: the fingerprint of its request and, once done, the response."""

    request_sha256: str
    status_code: int  # IN_PROGRESS until the response is kept
    response: dict[str, Any]
    started_at: dt.datetime | None = None
    age_s: float = 0.0  # since started_at, by the catalog's clock


def _key(key: str) -> sa.ColumnElement[bool]:
    return sa.and_(idempotency_keys.c.key == key, idempotency_keys.c.route == KEYS)


@dataclass(frozen=True)
class CatalogKeyStore:
    """Idempotency keys (`api.idempotency.KeyStore`)."""

    engine: sa.Engine

    def claim(self, key: str, fingerprint: str) -> Kept | None:
        with self.engine.begin() as connection:
            claimed = connection.execute(
                insert(idempotency_keys)
                .values(
                    key=key,
                    route=KEYS,
                    request_sha256=fingerprint,
                    status_code=IN_PROGRESS,
                    response={},
                )
                .on_conflict_do_nothing()
                .returning(idempotency_keys.c.key)
            ).first()
            if claimed is not None:
                return None
            age = sa.extract("epoch", sa.func.now() - idempotency_keys.c.created_at)
            row = connection.execute(
                sa.select(idempotency_keys, age.label("age_s")).where(_key(key))
            ).one()
        return Kept(
            row.request_sha256, row.status_code, row.response, row.created_at, float(row.age_s)
        )

    def take_over(self, key: str, started_at: dt.datetime) -> bool:
        """Hold a key still in progress since `started_at`; False if another request did first."""
        with self.engine.begin() as connection:
            taken = connection.execute(
                sa.update(idempotency_keys)
                .where(
                    _key(key),
                    idempotency_keys.c.status_code == IN_PROGRESS,
                    idempotency_keys.c.created_at == started_at,
                )
                .values(created_at=sa.func.now())
                .returning(idempotency_keys.c.key)
            ).first()
        return taken is not None

    def keep(self, key: str, status_code: int, response: dict[str, Any]) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                sa.update(idempotency_keys)
                .where(_key(key))
                .values(status_code=status_code, response=response)
            )

    def release(self, key: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(sa.delete(idempotency_keys).where(_key(key)))


@dataclass
class CatalogSignatures:
    """Accepted signatures (`api.auth.SignatureLedger`). One per process (`api/deps.py`): it
    remembers when it last pruned, so the pruning runs once a minute, not per request."""

    engine: sa.Engine
    # A signature stays refusable while its timestamp could still pass the skew check (up to
    # twice the skew after it was accepted), plus a margin for the API hosts' clocks.
    keep_s: int
    prune_every_s: float = 60.0
    _pruned_at: float = field(default=float("-inf"), init=False)

    def accept(self, signature: str, fingerprint: str) -> bool:
        """Record the signature; False if it was accepted before."""
        with self.engine.begin() as connection:
            accepted = connection.execute(
                insert(idempotency_keys)
                .values(
                    key=signature,
                    route=SIGNATURES,
                    request_sha256=fingerprint,
                    status_code=0,  # no response is kept for a signature
                    response={},
                )
                .on_conflict_do_nothing()
                .returning(idempotency_keys.c.key)
            ).first()
            if time.monotonic() - self._pruned_at >= self.prune_every_s:
                self._pruned_at = time.monotonic()
                connection.execute(
                    sa.delete(idempotency_keys).where(
                        idempotency_keys.c.route == SIGNATURES,
                        idempotency_keys.c.created_at
                        < sa.func.now()
                        - sa.literal(dt.timedelta(seconds=self.keep_s), sa.Interval),
                    )
                )
        return accepted is not None
