"""Stripe's signature scheme as the webhook checks it, with the SDK's own verifier: the stable
codes for each way a request can fail to be Stripe's."""

import hashlib
import hmac
import json
import time
from collections.abc import Callable

import pytest

from rp9_pipelines.api.errors import ApiError
from rp9_pipelines.api.routes.billing import verify

SECRET = "whsec_" + "a1b2c3d4" * 4
BODY = json.dumps(
    {"id": "evt_1", "object": "event", "type": "invoice.paid", "data": {"object": {}}}
).encode()


def signature(body: bytes, secret: str = SECRET, at: int | None = None) -> str:
    t = int(time.time()) if at is None else at
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def test_a_genuine_signature_gives_the_event() -> None:
    event = verify(BODY, signature(BODY), SECRET, 300)
    assert event.id == "evt_1"
    # Stripe may sign with several secrets during a rotation: any matching v1 passes.
    rotated = f"{signature(BODY, 'whsec_' + 'f' * 32)},v1={signature(BODY).split('v1=')[1]}"
    assert verify(BODY, rotated, SECRET, 300).id == "evt_1"


# Each header is made when its test runs (a signature made at collection would be stale by the
# time a long session reaches it).
@pytest.mark.parametrize(
    ("header", "body", "secret", "status", "code"),
    [
        (lambda: None, BODY, SECRET, 400, "signature_required"),
        (lambda: "", BODY, SECRET, 400, "signature_required"),
        (lambda: signature(BODY, "whsec_" + "0" * 32), BODY, SECRET, 400, "invalid_signature"),
        (
            lambda: signature(BODY),
            BODY.replace(b"evt_1", b"evt_2"),
            SECRET,
            400,
            "invalid_signature",
        ),
        (
            lambda: signature(BODY, at=int(time.time()) - 301),
            BODY,
            SECRET,
            400,
            "stale_timestamp",
        ),
        (lambda: "v1=deadbeef", BODY, SECRET, 400, "invalid_signature"),
        (lambda: signature(b"not json"), b"not json", SECRET, 400, "invalid_payload"),
        (lambda: signature(BODY, ""), BODY, "", 503, "webhook_not_configured"),
        (lambda: signature(BODY, "whsec_xxx"), BODY, "whsec_xxx", 503, "webhook_not_configured"),
    ],
    ids=[
        "missing",
        "empty",
        "wrong-secret",
        "altered-body",
        "stale",
        "no-timestamp",
        "not-json",
        "no-secret",
        "placeholder-secret",
    ],
)
def test_anything_else_is_refused_with_a_stable_code(
    header: Callable[[], str | None], body: bytes, secret: str, status: int, code: str
) -> None:
    with pytest.raises(ApiError) as refused:
        verify(body, header(), secret, 300)
    assert (refused.value.status_code, refused.value.code) == (status, code)
