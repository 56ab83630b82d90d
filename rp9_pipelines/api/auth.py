"""Caller authentication: a Bearer token, and when ORCH_HMAC_SECRET is set, an HMAC-SHA256
signature over "<timestamp>.<raw body>" with at most 300 s of clock skew."""

import hashlib
import hmac
import time

from fastapi import Request

from rp9_pipelines.api.errors import ApiError
from rp9_pipelines.settings import Settings

MAX_SKEW_S = 300


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def check_bearer(authorization: str | None, token: str) -> None:
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(presented.encode(), token.encode()):
        raise ApiError(401, "unauthorized", "missing or invalid bearer token")


def check_signature(
    secret: str, timestamp: str | None, signature: str | None, body: bytes, now: float
) -> None:
    if not timestamp or not signature:
        raise ApiError(401, "signature_required", "X-Timestamp and X-Signature are required")
    try:
        skew = abs(now - int(timestamp))
    except ValueError:
        raise ApiError(401, "invalid_timestamp", "X-Timestamp must be unix seconds") from None
    if skew > MAX_SKEW_S:
        raise ApiError(401, "stale_timestamp", f"X-Timestamp is {int(skew)} s away from now")
    if not hmac.compare_digest(sign(secret, timestamp, body).encode(), signature.encode()):
        raise ApiError(401, "invalid_signature", "X-Signature does not match the request")


async def authenticate(request: Request, settings: Settings) -> None:
    check_bearer(request.headers.get("authorization"), settings.orch_token.get_secret_value())
    if settings.orch_hmac_secret and settings.orch_hmac_secret.get_secret_value():
        check_signature(
            settings.orch_hmac_secret.get_secret_value(),
            request.headers.get("x-timestamp"),
            request.headers.get("x-signature"),
            await request.body(),
            time.time(),
        )
