"""A run-webhook receiver on loopback for the emulator's tests: keeps each delivery's raw bytes
and headers (what a signature is checked over) and answers from a script of statuses."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEADLINE_S = 5.0


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    """Names lower-cased."""
    body: bytes


class CallbackReceiver:
    """Answers the n-th POST with `statuses[n]`, then with `status`."""

    def __init__(self, status: int = 200, statuses: Iterable[int] = ()) -> None:
        self.status = status
        self._script = list(statuses)
        self.deliveries: list[Delivery] = []
        self._cond = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/callbacks/b1/r1?token=t"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(DEADLINE_S)

    def wait_for(self, count: int, timeout: float = DEADLINE_S) -> list[Delivery]:
        """At least `count` deliveries, or an AssertionError at the deadline."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.deliveries) >= count, timeout):
                raise AssertionError(f"{len(self.deliveries)} deliveries within {timeout}s, wanted {count}")
            return list(self.deliveries)

    def received(self) -> list[Delivery]:
        with self._cond:
            return list(self.deliveries)

    def _answer(self, delivery: Delivery) -> int:
        with self._cond:
            self.deliveries.append(delivery)
            self._cond.notify_all()
            return self._script.pop(0) if self._script else self.status

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {name.lower(): value for name, value in self.headers.items()}
                status = receiver._answer(Delivery(self.path, headers, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler
