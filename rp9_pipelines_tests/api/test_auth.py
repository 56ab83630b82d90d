"""The signature contract, as pure functions: what is signed, and what a signature refuses."""

import hashlib
import hmac

import pytest

from rp9_pipelines.api.auth import check_bearer, check_signature, sign, signature_headers
from rp9_pipelines.api.errors import ApiError

SECRET, NOW = "s3cret", 1_800_000_000.0
STAMP = str(int(NOW))


def test_the_signed_string_is_the_documented_one() -> None:
    body = b'{"slug": "acme"}'
    signed = f"{STAMP}\nDELETE\n/tenants/acme?purge=true\n{hashlib.sha256(body).hexdigest()}"
    expected = hmac.new(SECRET.encode(), signed.encode(), hashlib.sha256).hexdigest()
    assert (
        sign(SECRET, STAMP, "DELETE", "/tenants/acme", "purge=true", body) == f"sha256={expected}"
    )
    # No query: the "?" stays, followed by nothing.
    bare = f"{STAMP}\nGET\n/tenants?\n{hashlib.sha256(b'').hexdigest()}"
    bare_mac = hmac.new(SECRET.encode(), bare.encode(), hashlib.sha256).hexdigest()
    assert signature_headers(SECRET, "GET", "/tenants", b"", STAMP) == {
        "X-Timestamp": STAMP,
        "X-Signature": f"sha256={bare_mac}",
    }


def check(signature: str, method: str, path: str, query: str, body: bytes, stamp: str) -> None:
    check_signature(SECRET, stamp, signature, method, path, query, body, NOW)


@pytest.mark.parametrize("stamp", [STAMP, f"{NOW - 299.5:.6f}", f"{NOW + 12.25}"])
def test_a_good_signature_passes(stamp: str) -> None:
    check(sign(SECRET, stamp, "POST", "/tenants", "", b"{}"), "POST", "/tenants", "", b"{}", stamp)


SIGNED = ("GET", "/tenants", "", b"")


@pytest.mark.parametrize(
    ("sent", "code"),
    [
        (("GET", "/enforcement/events", "", b""), "invalid_signature"),
        (("DELETE", "/tenants", "", b""), "invalid_signature"),
        (("GET", "/tenants", "include_deleted=true", b""), "invalid_signature"),
        (("GET", "/tenants", "", b"{}"), "invalid_signature"),
        (("GET", "/Tenants", "", b""), "invalid_signature"),
        (("GET", "/tenants/", "", b""), "invalid_signature"),
    ],
    ids=["other path", "other method", "other query", "other body", "path case", "slash"],
)
def test_a_signature_binds_method_path_query_and_body(
    sent: tuple[str, str, str, bytes], code: str
) -> None:
    with pytest.raises(ApiError) as error:
        check(sign(SECRET, STAMP, *SIGNED), *sent, STAMP)
    assert (error.value.status_code, error.value.code) == (401, code)


@pytest.mark.parametrize(
    ("stamp", "code"),
    [
        (str(int(NOW) - 301), "stale_timestamp"),
        (str(int(NOW) + 301), "stale_timestamp"),
        ("yesterday", "invalid_timestamp"),
        ("1e9", "invalid_timestamp"),
        ("nan", "invalid_timestamp"),
        ("-5", "invalid_timestamp"),
        (f" {STAMP}", "invalid_timestamp"),
        (f"{STAMP}.1234567", "invalid_timestamp"),
    ],
)
def test_timestamps_are_unix_seconds_within_300_s(stamp: str, code: str) -> None:
    with pytest.raises(ApiError) as error:
        check(sign(SECRET, stamp, *SIGNED), *SIGNED, stamp)
    assert (error.value.status_code, error.value.code) == (401, code)


def test_missing_signature_headers() -> None:
    with pytest.raises(ApiError, match="required"):
        check_signature(SECRET, None, None, *SIGNED, NOW)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer nope", "Basic token", "token"])
def test_bearer_must_match(header: str | None) -> None:
    with pytest.raises(ApiError) as error:
        check_bearer(header, "token")
    assert error.value.code == "unauthorized"


def test_bearer_accepts_the_token() -> None:
    check_bearer("Bearer token", "token")


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "bearer  "])
def test_an_empty_token_authenticates_nobody(header: str | None) -> None:
    with pytest.raises(ApiError) as error:
        check_bearer(header, "")
    assert error.value.code == "unauthorized"
