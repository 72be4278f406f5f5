"""A stand-in for the X-Ray daemon Lambda runs beside a traced function, and Lambda's own part of a trace.

On AWS, `Tracing: Active` makes Lambda decide per invocation whether it is sampled, hand the
function a trace header (`_X_AMZN_TRACE_ID`: `Root=...;Parent=...;Sampled=0|1`), record the
function's segment itself (the `Parent` id), and run a daemon the X-Ray SDK streams its
subsegments to over UDP (`AWS_XRAY_DAEMON_ADDRESS`). The local runtime does the same
(function_runtime.serve), so the handlers run with tracing on as they do on AWS, and what they
send is kept for tests to check: one JSON line per datagram in `path`, `{"header", "segment"}`,
or `{"problem", "raw"}` for a datagram that is not a header line and one JSON document.

Sampling: Lambda's default rule is the first request each second and 5% of the others; here the
reservoir is per execution environment (Lambda's is per function), and a test may sample all.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEADER = {"format": "json", "version": 1}
TRACE_HEADER_ENV = "_X_AMZN_TRACE_ID"
XRAY_SEGMENTS_FILE = "xray.jsonl"
"""Under the stack's logs/: every datagram the functions sent the daemon stand-in."""
DEFAULT_FIXED_RATE = 0.05  # X-Ray's default sampling rule: 1 a second, then 5%
_MAX_DATAGRAM = 64 * 1024


class XRayDaemon:
    """UDP on 127.0.0.1 (port chosen by the OS); every datagram received is appended to `path`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, name="xray-daemon", daemon=True)
        self.received = 0

    @property
    def address(self) -> str:
        host, port = self._socket.getsockname()
        return f"{host}:{port}"

    def start(self) -> str:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self.address

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._socket.close()

    def _receive(self) -> None:
        with self.path.open("a", encoding="utf-8") as out:
            while not self._stop.is_set():
                try:
                    data = self._socket.recv(_MAX_DATAGRAM)
                except TimeoutError:
                    continue
                except OSError:
                    return
                self.received += 1
                out.write(json.dumps(parse_datagram(data)) + "\n")
                out.flush()


def parse_datagram(data: bytes) -> dict[str, Any]:
    """What the daemon's protocol is: a JSON header line, a newline, one segment document."""
    head, newline, body = data.partition(b"\n")
    try:
        header = json.loads(head)
        segment = json.loads(body)
    except ValueError as exc:
        return {"problem": f"not JSON: {exc}", "raw": data.decode(errors="replace")}
    if not newline or not isinstance(segment, dict):
        return {"problem": "no segment document after the header line", "raw": data.decode(errors="replace")}
    return {"header": header, "segment": segment}


@dataclass(frozen=True)
class TraceContext:
    """One invocation's trace header, as Lambda sets it in `_X_AMZN_TRACE_ID`."""

    trace_id: str
    parent_id: str
    sampled: bool

    @classmethod
    def new(cls, sampled: bool, now: float | None = None) -> TraceContext:
        epoch = int(time.time() if now is None else now)
        return cls(f"1-{epoch:08x}-{secrets.token_hex(12)}", secrets.token_hex(8), sampled)

    @property
    def header(self) -> str:
        return f"Root={self.trace_id};Parent={self.parent_id};Sampled={int(self.sampled)}"


class Sampler:
    """Lambda's default sampling (a reservoir of 1 a second, then 5%), or a fixed rate for tests."""

    def __init__(self, rate: float | None = None) -> None:
        self._rate = rate
        self._reservoir_second = -1

    def sampled(self, now: float | None = None) -> bool:
        if self._rate is not None:
            return random.random() < self._rate
        second = int(time.time() if now is None else now)
        if second != self._reservoir_second:
            self._reservoir_second = second
            return True
        return random.random() < DEFAULT_FIXED_RATE


def send_function_segment(
    trace: TraceContext, name: str, request_id: str, start: float, end: float, error: bool
) -> None:
    """The segment Lambda records for the invocation: the parent of the SDK's subsegments."""
    address = os.environ.get("AWS_XRAY_DAEMON_ADDRESS")
    if not trace.sampled or not address:
        return
    host, _, port = address.rpartition(":")
    segment: dict[str, Any] = {
        "trace_id": trace.trace_id,
        "id": trace.parent_id,
        "name": name,
        "start_time": start,
        "end_time": end,
        "origin": "AWS::Lambda::Function",
        "aws": {"request_id": request_id},
    }
    if error:
        segment["error"] = True
    datagram = (json.dumps(HEADER) + "\n" + json.dumps(segment)).encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(datagram, (host, int(port)))
