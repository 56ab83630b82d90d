"""Caller authentication: a Bearer token and, when ORCH_HMAC_SECRET is set, a signature that
binds the whole request and is accepted once:

    X-Timestamp: unix seconds (a fraction of up to 6 digits allowed)
    X-Signature: sha256=<hex HMAC-SHA256(secret,
                 "<timestamp>\\n<METHOD>\\n<path>?<query>\\n<hex sha256(raw body)>")>

The path and query are as sent (percent-encoded, the query empty when there is none; the `?` is
always there). A signature is refused when its timestamp is more than 300 s away from now, and
when it was already accepted: the catalog keeps accepted signatures for as long as their
timestamp could pass (`catalog/api.py`), so no API process accepts one twice.
"""

import hashlib
import hmac
import re
import time
from typing import Protocol

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from rp9_pipelines.api.errors import ApiError
from rp9_pipelines.settings import Settings

MAX_SKEW_S = 300
TIMESTAMP = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,6})?")


class SignatureLedger(Protocol):
    """Where accepted signatures are kept (`catalog.api.CatalogSignatures`; a set in the
    API's contract tests)."""

    def accept(self, signature: str, fingerprint: str) -> bool:
        """Record an accepted signature; False if it was accepted before."""


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def canonical(timestamp: str, method: str, path: str, query: str, body: bytes) -> bytes:
    """The string a request's signature is computed over."""
    return f"{timestamp}\n{method.upper()}\n{path}?{query}\n{body_sha256(body)}".encode()


def sign(secret: str, timestamp: str, method: str, path: str, query: str, body: bytes) -> str:
    digest = hmac.new(
        secret.encode(), canonical(timestamp, method, path, query, body), hashlib.sha256
    )
    return "sha256=" + digest.hexdigest()


def signature_headers(
    secret: str, method: str, target: str, body: bytes, timestamp: str | None = None
) -> dict[str, str]:
    """What a caller sends: `target` is the path with its query, exactly as it goes on the wire."""
    path, _, query = target.partition("?")
    stamp = timestamp if timestamp is not None else f"{time.time():.6f}"
    return {"X-Timestamp": stamp, "X-Signature": sign(secret, stamp, method, path, query, body)}


def request_target(request: Request) -> tuple[str, str]:
    """The request's path and query as the client sent them (percent-encoded)."""
    raw_path = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else request.url.path
    return path, request.scope.get("query_string", b"").decode("latin-1")


def fingerprint(method: str, path: str, query: str, body: bytes) -> str:
    """What identifies a request, its timestamp aside: an idempotency key is bound to it."""
    return hashlib.sha256(canonical("", method, path, query, body)).hexdigest()


def check_bearer(authorization: str | None, token: str) -> None:
    scheme, _, presented = (authorization or "").partition(" ")
    if (
        not token  # a server without a token authenticates nobody, not everybody
        or scheme.lower() != "bearer"
        or not hmac.compare_digest(presented.encode(), token.encode())
    ):
        raise ApiError(401, "unauthorized", "missing or invalid bearer token")


def check_signature(
    secret: str,
    timestamp: str | None,
    signature: str | None,
    method: str,
    path: str,
    query: str,
    body: bytes,
    now: float,
) -> None:
    if not timestamp or not signature:
        raise ApiError(401, "signature_required", "X-Timestamp and X-Signature are required")
    if not TIMESTAMP.fullmatch(timestamp):
        raise ApiError(401, "invalid_timestamp", "X-Timestamp must be unix seconds")
    skew = abs(now - float(timestamp))
    if skew > MAX_SKEW_S:
        raise ApiError(401, "stale_timestamp", f"X-Timestamp is {int(skew)} s away from now")
    expected = sign(secret, timestamp, method, path, query, body)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise ApiError(401, "invalid_signature", "X-Signature does not match the request")


async def authenticate(request: Request, settings: Settings, ledger: SignatureLedger) -> None:
    check_bearer(request.headers.get("authorization"), settings.orch_token.get_secret_value())
    secret = settings.orch_hmac_secret.get_secret_value() if settings.orch_hmac_secret else ""
    if not secret:
        return
    path, query = request_target(request)
    body = await request.body()
    signature = request.headers.get("x-signature")
    check_signature(
        secret,
        request.headers.get("x-timestamp"),
        signature,
        request.method,
        path,
        query,
        body,
        time.time(),
    )
    assert signature is not None  # checked above
    digest = signature.removeprefix("sha256=")
    seen = fingerprint(request.method, path, query, body)
    if not await run_in_threadpool(ledger.accept, digest, seen):
        raise ApiError(401, "replayed_signature", "this X-Signature was already accepted")
