import pytest

from rp9_pipelines.api.auth import check_bearer, check_signature, sign
from rp9_pipelines.api.errors import ApiError

SECRET, NOW = "s3cret", 1_800_000_000.0


def test_a_good_signature_passes() -> None:
    check_signature(SECRET, str(int(NOW)), sign(SECRET, str(int(NOW)), b"{}"), b"{}", NOW)


@pytest.mark.parametrize(
    ("timestamp", "body_signed", "body_sent", "code"),
    [
        (str(int(NOW)), b"{}", b'{"x":1}', "invalid_signature"),
        (str(int(NOW) - 301), b"{}", b"{}", "stale_timestamp"),
        (str(int(NOW) + 301), b"{}", b"{}", "stale_timestamp"),
        ("yesterday", b"{}", b"{}", "invalid_timestamp"),
    ],
)
def test_bad_signatures_are_refused(
    timestamp: str, body_signed: bytes, body_sent: bytes, code: str
) -> None:
    signature = sign(SECRET, timestamp, body_signed)
    with pytest.raises(ApiError) as error:
        check_signature(SECRET, timestamp, signature, body_sent, NOW)
    assert (error.value.status_code, error.value.code) == (401, code)


def test_missing_signature_headers() -> None:
    with pytest.raises(ApiError, match="required"):
        check_signature(SECRET, None, None, b"", NOW)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer nope", "Basic token", "token"])
def test_bearer_must_match(header: str | None) -> None:
    with pytest.raises(ApiError) as error:
        check_bearer(header, "token")
    assert error.value.code == "unauthorized"


def test_bearer_accepts_the_token() -> None:
    check_bearer("Bearer token", "token")
