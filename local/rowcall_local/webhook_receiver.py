"""A webhook consumer on loopback that records every POST: on-done deliveries, run callbacks."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)
    """When it arrived (unix seconds)."""


class WebhookReceiver:
    def __init__(self, status: int = 200) -> None:
        self.got: list[Received] = []
        self.status = status
        got, receiver = self.got, self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                headers = {k.lower(): v for k, v in self.headers.items()}
                got.append(Received(self.path, headers, body, time.time()))
                self.send_response(receiver.status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def wait_for(self, condition: Callable[[list[Received]], bool], timeout_s: float = 15) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition(self.got):
                return list(self.got)
            time.sleep(0.02)
        raise AssertionError(f"condition not met within {timeout_s}s; got {len(self.got)} requests")

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
