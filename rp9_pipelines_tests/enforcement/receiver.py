"""A real HTTP receiver for the warnings webhook, on 127.0.0.1, recording what it gets."""

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

Mode = Literal["ok", "fail", "hang"]


@dataclass
class Receiver:
    url: str
    mode: Mode = "ok"
    received: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    refused: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def bodies(self, action: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [b for b in self.received if action is None or b.get("action") == action]


@contextmanager
def receiving(port: int = 0, mode: Mode = "ok") -> Iterator[Receiver]:
    receiver = Receiver(url="", mode=mode)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if receiver.mode == "hang":
                time.sleep(30)
                return
            if receiver.mode == "fail":
                with receiver.lock:
                    receiver.refused += 1
                self.send_response(500)
                self.end_headers()
                self.wfile.write(b"receiver failing on purpose")
                return
            with receiver.lock:
                receiver.received.append(json.loads(body))
                receiver.headers.append(dict(self.headers.items()))
                receiver.raw.append(body)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    receiver.url = f"http://127.0.0.1:{server.server_address[1]}/enforcement"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
