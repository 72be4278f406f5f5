"""Every request the embedded AWS answers, counted by service and operation, with the server's CPU time.

Installed in the moto server process (moto_process.py). Cheaper than moto's request recorder (which
writes each request with its body to a file): a counter per operation under one lock. `GET
/_rowcall/requests` on the moto endpoint returns the counts, the seconds since the last reset and the
CPU seconds the server process spent in that time; `POST /_rowcall/requests/reset` starts again. The
benchmarks read from it the AWS operations per row and the rate moto sustains (requests per second of
wall time, and per second of its own CPU: what one core of moto can serve).
"""

from __future__ import annotations

import io
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs

CONTROL_PATH = "/_rowcall/requests"
RESET_PATH = CONTROL_PATH + "/reset"

_SERVICE = re.compile(r"Credential=[^/,\s]+/[^/]+/[^/]+/([^/]+)/aws4_request")
_FORM = "application/x-www-form-urlencoded"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def operation_of(environ: dict[str, Any]) -> str:
    """`service:Operation` of one request, from its signature scope and its target or Action.

    JSON protocols (DynamoDB, SQS, SSM) name the operation in X-Amz-Target; query protocols (SNS, STS)
    in the form body's Action, which is read and put back for moto; S3 is named by its method.
    """
    found = _SERVICE.search(environ.get("HTTP_AUTHORIZATION", ""))
    service = found.group(1) if found else "unsigned"
    target = environ.get("HTTP_X_AMZ_TARGET")
    if target:
        return f"{service}:{target.rpartition('.')[2]}"
    if environ.get("CONTENT_TYPE", "").startswith(_FORM):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        environ["wsgi.input"] = io.BytesIO(body)
        action = parse_qs(body.decode(errors="replace")).get("Action", [""])[0]
        if action:
            return f"{service}:{action}"
    return f"{service}:{environ.get('REQUEST_METHOD', '?')}"


class RequestMeter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self._counts: Counter[str] = Counter()
            self._since = time.monotonic()
            self._cpu_since = time.process_time()

    def count(self, operation: str) -> None:
        with self._lock:
            self._counts[operation] += 1

    def report(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": sum(self._counts.values()),
                "by_operation": dict(self._counts.most_common()),
                "seconds": time.monotonic() - self._since,
                "cpu_seconds": time.process_time() - self._cpu_since,
            }


METER = RequestMeter()


def _json(start_response: StartResponse, body: Mapping[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def install() -> None:
    """Count every request moto's server answers (before it starts); serves the control endpoint."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    call = DomainDispatcherApplication.__call__

    def __call__(self: Any, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:  # noqa: N807
        path = environ.get("PATH_INFO")
        if path == CONTROL_PATH:
            return _json(start_response, METER.report())
        if path == RESET_PATH and environ.get("REQUEST_METHOD") == "POST":
            METER.reset()
            return _json(start_response, {"reset": True})
        if not str(path).startswith(("/_rowcall/", "/moto-api/")):
            METER.count(operation_of(environ))
        answered: Iterable[bytes] = call(self, environ, start_response)
        return answered

    setattr(DomainDispatcherApplication, "__call__", __call__)  # noqa: B010 - moto's WSGI entry
