"""How a cutover reads the holder's count of a tenant's requests before it lifts the hold: a
holder too busy to answer in time still has them (lifting then sent the tenant's new requests
into its edge limits while its main worked through the released backlog: 503s), one that is
gone has none."""

import contextlib
import http.server
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from types import SimpleNamespace
from typing import cast

import pytest

from rp9_pipelines.catalog.tenants import Tenant
from rp9_pipelines.services import promotion

TENANT = cast(Tenant, SimpleNamespace(id=uuid.uuid4()))  # all the holder is asked by


@contextlib.contextmanager
def _serve(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _answering(state: dict[str, int]) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(state).encode()
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def busy_holder() -> Iterator[str]:
    """A holder that takes the connection and never answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


def _check(url: str, what: str, at_most: int) -> bool:
    return promotion._holder_has(url, TENANT, what, at_most)()


def test_a_holder_too_busy_to_answer_still_has_the_tenants_requests(
    busy_holder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(promotion, "HOLDING_TIMEOUT_S", 0.3)
    assert _check(busy_holder, "open", promotion.OPEN_TO_LIFT) is False
    assert _check(busy_holder, "unrouted", 0) is False


def test_a_holder_that_is_gone_has_none() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: nothing listens there
    assert _check(f"http://127.0.0.1:{port}", "open", promotion.OPEN_TO_LIFT) is True


@pytest.mark.parametrize(
    ("state", "what", "at_most", "lifts"),
    [
        ({"open": 11, "unrouted": 0}, "open", 10, False),
        ({"open": 10, "unrouted": 4}, "open", 10, True),
        ({"open": 10, "unrouted": 1}, "unrouted", 0, False),
        ({"open": 3, "unrouted": 0}, "unrouted", 0, True),
    ],
)
def test_an_answering_holder_is_taken_at_its_count(
    state: dict[str, int], what: str, at_most: int, lifts: bool
) -> None:
    with _serve(_answering(state)) as url:
        assert _check(url, what, at_most) is lifts
