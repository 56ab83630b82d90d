"""What the API refuses before any route sees the request, as JSON with a stable code:

- a body over `MAX_BODY_BYTES`: 413 `payload_too_large`, by its Content-Length before a byte is
  read, or, for a body sent without one, as soon as what was read passes the limit; a body is
  never parsed (nor a signature computed over it) unless it is within the limit;
- a path or query holding a control character (a NUL above all, which Postgres refuses in a
  parameter): 422 `invalid_request`, so no route and no catalog query sees one from there.
"""

import re
from urllib.parse import unquote_plus

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rp9_pipelines.api.errors import error_body

MAX_BODY_BYTES = 1024 * 1024
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _refusal(status_code: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status_code)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class RequestLimits:
    """ASGI middleware; `exempt` paths (the public tenant fallback, which reads no body) and
    paths under `exempt_prefixes` (held tenant requests, which the holder bounds itself and
    sends on as they came) pass untouched."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int = MAX_BODY_BYTES,
        exempt: frozenset[str] = frozenset(),
        exempt_prefixes: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.exempt = exempt
        self.exempt_prefixes = exempt_prefixes

    def _too_large(self) -> JSONResponse:
        return _refusal(413, "payload_too_large", f"the body is over {self.max_body_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.exempt or path.startswith(self.exempt_prefixes):
            await self.app(scope, receive, send)
            return
        query = unquote_plus(scope.get("query_string", b"").decode("latin-1"))
        if CONTROL.search(scope["path"]) or CONTROL.search(query):
            refusal = _refusal(
                422, "invalid_request", "the path or query holds a control character"
            )
            await refusal(scope, receive, send)
            return
        length = _content_length(scope)
        if length is not None and length > self.max_body_bytes:
            await self._too_large()(scope, receive, send)
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await self._too_large()(scope, receive, send)
                return
            more = message.get("more_body", False)
        await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read already, then whatever the connection says next (a disconnect)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
