"""A FLORA-style technique-run provider on loopback, with injectable faults (contract section 5)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import heapq
import hmac
import itertools
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, cast
from urllib.parse import unquote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

log = logging.getLogger(__name__)

IDEMPOTENCY_TTL_S = 2 * 60 * 60
CALLBACK_BACKOFF_S = (0.2, 0.5, 1.0)
DUPLICATE_CALLBACK_GAP_S = 0.05
CALLBACK_WORKERS = 8
# Short enough that stop() stays bounded even when a callback receiver hangs.
CALLBACK_TIMEOUT = httpx.Timeout(5.0, connect=1.0)
STOP_TIMEOUT_S = 2.0
SERVER_POLL_S = 0.05
MAX_BODY_BYTES = 8 * 1024 * 1024
STAT_NAMES = (
    "creates",
    "unique_idempotency_keys",
    "duplicate_creates",
    "gets",
    "max_in_flight",
    "callbacks_sent",
    "callbacks_failed",
)


@dataclass(frozen=True)
class ProviderFaults:
    delay_ms: tuple[int, int] = (50, 250)
    fail_rate: float = 0.0
    rate_429: float = 0.0
    rate_5xx: float = 0.0
    duplicate_callback_rate: float = 0.0
    drop_callback_rate: float = 0.0
    credits: int | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        low, high = self.delay_ms
        if not 0 <= low <= high:
            raise ValueError(f"delay_ms must be 0 <= min <= max, got {self.delay_ms}")
        rates = ("fail_rate", "rate_429", "rate_5xx", "duplicate_callback_rate", "drop_callback_rate")
        for name in rates:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        if self.credits is not None and self.credits < 0:
            raise ValueError("credits must be >= 0")


NO_FAULTS = ProviderFaults()


class RunInput(BaseModel):
    model_config = ConfigDict(strict=True)

    id: str = Field(min_length=1)
    type: str = Field(min_length=1)
    value: str


class CreateRunRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    inputs: list[RunInput]
    mode: Literal["async"]
    callback_url: str
    idempotency_key: str = Field(min_length=1, max_length=255)

    @field_validator("callback_url")
    @classmethod
    def _absolute_http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("callback_url must be an absolute http(s) URL")
        return value


class RunOutput(BaseModel):
    output_id: str
    type: str
    url: str


class RunObject(BaseModel):
    run_id: str
    status: Literal["queued", "running", "completed", "failed"]
    progress: int
    created_at: str
    started_at: str | None
    completed_at: str | None
    outputs: list[RunOutput]
    error_code: str | None
    error_message: str | None
    charged_cost: int


class _CreditsRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    add: int = Field(ge=0)


@dataclass
class _RunRecord:
    technique_id: str
    callback_url: str
    run: RunObject


@dataclass(frozen=True)
class _Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> _Reply:
    return _Reply(status, {"error": {"code": code, "message": message}}, headers or {})


def _describe(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()[:5]]
    return "; ".join(parts)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _only(method: str, allowed: str, handler: Callable[[], _Reply]) -> _Reply:
    if method != allowed:
        return _error(405, "method_not_allowed", f"{method} is not allowed here; use {allowed}")
    return handler()


def _run_logged(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        log.exception("provider emulator task failed")


class _Scheduler:
    """One thread over a heap of due times; slow work (HTTP callbacks) goes to a small pool."""

    def __init__(self, workers: int) -> None:
        self._heap: list[tuple[float, int, bool, Callable[[], None]]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._stopped = False
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="provider-callback")
        self._pending: set[Future[None]] = set()
        self._thread = threading.Thread(target=self._loop, name="provider-scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def call_later(self, delay_s: float, fn: Callable[[], None], *, inline: bool = False) -> None:
        """Run fn after delay_s: on the scheduler thread if inline (must be quick), else in the pool."""
        with self._cond:
            if self._stopped:
                return
            heapq.heappush(self._heap, (time.monotonic() + delay_s, next(self._seq), inline, fn))
            self._cond.notify()

    def stop(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify_all()
        if self._thread.ident is not None:
            self._thread.join(timeout_s)
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._cond:
            running = list(self._pending)
        _, stuck = concurrent.futures.wait(running, timeout=max(0.0, deadline - time.monotonic()))
        if not stuck:
            self._pool.shutdown(wait=True)  # only idle workers are left, so this join is quick

    def _loop(self) -> None:
        while (task := self._next_due()) is not None:
            inline, fn = task
            if inline:
                _run_logged(fn)
            else:
                self._submit(fn)

    def _next_due(self) -> tuple[bool, Callable[[], None]] | None:
        with self._cond:
            while not self._stopped:
                if not self._heap:
                    self._cond.wait()
                    continue
                wait_s = self._heap[0][0] - time.monotonic()
                if wait_s <= 0:
                    _, _, inline, fn = heapq.heappop(self._heap)
                    return inline, fn
                self._cond.wait(wait_s)
        return None

    def _submit(self, fn: Callable[[], None]) -> None:
        try:
            future = self._pool.submit(_run_logged, fn)
        except RuntimeError:
            return  # the pool was shut down by stop(); the task is moot
        with self._cond:
            self._pending.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[None]) -> None:
        with self._cond:
            self._pending.discard(future)


class _Provider:
    """The provider's state and HTTP semantics, independent of the socket server."""

    def __init__(
        self, api_key: str, faults: ProviderFaults, scheduler: _Scheduler, client: httpx.Client
    ) -> None:
        self._api_key = api_key.encode()
        self._faults = faults
        self._scheduler = scheduler
        self._client = client
        self._lock = threading.Lock()
        self._rng = random.Random(faults.seed)
        self._runs: dict[str, _RunRecord] = {}
        # Insertion order is creation order, so the oldest keys are always at the front.
        self._keys: dict[str, tuple[str, float]] = {}
        self._credits = faults.credits
        self._in_flight = 0
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._stopping = threading.Event()

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def stop(self) -> None:
        self._stopping.set()

    def handle(self, method: str, target: str, authorization: str | None, body: bytes) -> _Reply:
        segments = [unquote(part) for part in urlsplit(target).path.split("/") if part]
        match segments:
            case ["techniques", technique_id, "runs"]:
                return _only(method, "POST", lambda: self._create(technique_id, authorization, body))
            case ["techniques", technique_id, "runs", run_id]:
                return _only(method, "GET", lambda: self._get(technique_id, run_id, authorization))
            case ["_stats"]:
                return _only(method, "GET", lambda: _Reply(200, dict(self.stats())))
            case ["_credits"]:
                return _only(method, "POST", lambda: self._add_credits(body))
            case _:
                return _error(404, "not_found", f"no route for {urlsplit(target).path}")

    def _authorized(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._api_key)

    def _create(self, technique_id: str, authorization: str | None, body: bytes) -> _Reply:
        if not self._authorized(authorization):
            return _error(401, "unauthorized", "missing or invalid bearer token")
        with self._lock:
            self._stats["creates"] += 1
        if technique_id.startswith("missing-"):
            return _error(404, "not_found", f"technique {technique_id} not found")
        try:
            request = CreateRunRequest.model_validate_json(body)
        except ValidationError as exc:
            return _error(422, "validation_error", _describe(exc))
        return self._injected_fault() or self._admit(technique_id, request)

    def _injected_fault(self) -> _Reply | None:
        with self._lock:
            if self._rng.random() < self._faults.rate_429:
                retry_after = self._rng.choice(("0", "1"))
                return _error(429, "rate_limited", "too many requests", {"Retry-After": retry_after})
            if self._rng.random() < self._faults.rate_5xx:
                return _error(503, "unavailable", "the provider is temporarily unavailable")
        return None

    def _admit(self, technique_id: str, request: CreateRunRequest) -> _Reply:
        now = time.monotonic()
        with self._lock:
            self._expire_keys_locked(now)
            existing = self._keys.get(request.idempotency_key)
            if existing is not None:
                self._stats["duplicate_creates"] += 1
                message = f"idempotency_key already used by run {existing[0]}"
                return _error(409, "idempotency_duplicate", message)
            if self._credits is not None and self._credits <= 0:
                return _error(402, "insufficient_credits", "the account has no credits left")
            run = self._record_run_locked(technique_id, request, now)
            delay_s = self._rng.randint(*self._faults.delay_ms) / 1000
        self._scheduler.call_later(delay_s, partial(self._finish, run.run_id), inline=True)
        return _Reply(201, run.model_dump(mode="json"))

    def _expire_keys_locked(self, now: float) -> None:
        cutoff = now - IDEMPOTENCY_TTL_S
        while self._keys:
            oldest = next(iter(self._keys))
            if self._keys[oldest][1] > cutoff:
                return
            del self._keys[oldest]

    def _record_run_locked(self, technique_id: str, request: CreateRunRequest, now: float) -> RunObject:
        run = RunObject(
            run_id=f"run_{self._rng.getrandbits(80):020x}",
            status="queued",
            progress=0,
            created_at=_utc_now(),
            started_at=None,
            completed_at=None,
            outputs=[],
            error_code=None,
            error_message=None,
            charged_cost=0,
        )
        self._runs[run.run_id] = _RunRecord(technique_id, request.callback_url, run)
        self._keys[request.idempotency_key] = (run.run_id, now)
        self._stats["unique_idempotency_keys"] += 1
        if self._credits is not None:
            self._credits -= 1
        self._in_flight += 1
        self._stats["max_in_flight"] = max(self._stats["max_in_flight"], self._in_flight)
        return run

    def _finish(self, run_id: str) -> None:
        with self._lock:
            record = self._runs[run_id]
            record.run = self._finished_locked(record.run)
            self._in_flight -= 1
            copies = self._callback_copies_locked()
            body = record.run.model_dump_json().encode()
        for copy in range(copies):
            send = partial(self._send_callback, record.callback_url, body, 0)
            self._scheduler.call_later(copy * DUPLICATE_CALLBACK_GAP_S, send)

    def _finished_locked(self, run: RunObject) -> RunObject:
        now = _utc_now()
        # The emulator starts work as soon as a run is queued.
        times = {"started_at": run.created_at, "completed_at": now}
        if self._rng.random() < self._faults.fail_rate:
            message = "the technique failed to generate an output (injected fault)"
            failure = {"status": "failed", "error_code": "generation_failed", "error_message": message}
            return run.model_copy(update={**times, **failure})
        output = RunOutput(
            output_id="output_0",
            type="imageUrl",
            url=f"https://cdn.provider.invalid/runs/{run.run_id}/output_0.png",
        )
        success = {"status": "completed", "progress": 100, "outputs": [output], "charged_cost": 1}
        return run.model_copy(update={**times, **success})

    def _callback_copies_locked(self) -> int:
        if self._rng.random() < self._faults.drop_callback_rate:
            return 0
        return 2 if self._rng.random() < self._faults.duplicate_callback_rate else 1

    def _send_callback(self, url: str, body: bytes, attempt: int) -> None:
        if self._stopping.is_set():
            return
        delivered = self._post(url, body)
        with self._lock:
            self._stats["callbacks_sent" if delivered else "callbacks_failed"] += 1
        if not delivered and attempt < len(CALLBACK_BACKOFF_S):
            retry = partial(self._send_callback, url, body, attempt + 1)
            self._scheduler.call_later(CALLBACK_BACKOFF_S[attempt], retry)

    def _post(self, url: str, body: bytes) -> bool:
        try:
            response = self._client.post(url, content=body, headers={"Content-Type": "application/json"})
        except httpx.HTTPError:
            return False
        return response.is_success

    def _get(self, technique_id: str, run_id: str, authorization: str | None) -> _Reply:
        if not self._authorized(authorization):
            return _error(401, "unauthorized", "missing or invalid bearer token")
        with self._lock:
            self._stats["gets"] += 1
            record = self._runs.get(run_id)
            run = record.run if record is not None and record.technique_id == technique_id else None
        if run is None:
            return _error(404, "not_found", f"run {run_id} not found")
        return _Reply(200, run.model_dump(mode="json"))

    def _add_credits(self, body: bytes) -> _Reply:
        try:
            request = _CreditsRequest.model_validate_json(body)
        except ValidationError as exc:
            return _error(422, "validation_error", _describe(exc))
        with self._lock:
            # Unlimited credits (None) stay unlimited.
            if self._credits is not None:
                self._credits += request.add
            remaining = self._credits
        return _Reply(200, {"credits": remaining})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], provider: _Provider) -> None:
        super().__init__(address, _Handler)
        self.provider = provider
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def track(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._connections_lock:
            self._connections.discard(connection)

    def close_connections(self) -> None:
        """Ends keep-alive connections, whose handler threads would otherwise go on serving."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Only socket errors get here (handler errors become 500s), e.g. a client gone mid-reply.
        log.debug("provider emulator connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    # Keep-alive, so a pipeline making many creates does not pay a TCP handshake each time.
    protocol_version = "HTTP/1.1"
    # Headers and body are separate writes; with Nagle on, keep-alive replies stall ~40 ms on delayed ACKs.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        cast(_Server, self.server).track(self.connection)

    def finish(self) -> None:
        cast(_Server, self.server).untrack(self.connection)
        super().finish()

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._reject_method()

    def do_PATCH(self) -> None:
        self._reject_method()

    def do_DELETE(self) -> None:
        self._reject_method()

    def do_HEAD(self) -> None:
        self._reject_method()

    def do_OPTIONS(self) -> None:
        self._reject_method()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("provider emulator: " + format, *args)

    def _reject_method(self) -> None:
        # The body must still be consumed, or it would be read as the next keep-alive request.
        body = self._read_body()
        if isinstance(body, _Reply):
            self._write(body)
            return
        self._write(_error(405, "method_not_allowed", f"{self.command} is not supported"))

    def _serve(self) -> None:
        body = self._read_body()
        if isinstance(body, _Reply):
            self._write(body)
            return
        provider = cast(_Server, self.server).provider
        try:
            reply = provider.handle(self.command, self.path, self.headers.get("Authorization"), body)
        except Exception:
            log.exception("provider emulator failed on %s %s", self.command, self.path)
            reply = _error(500, "internal", "the emulator failed")
        self._write(reply)

    def _read_body(self) -> bytes | _Reply:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            return _error(400, "bad_request", "invalid Content-Length")
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            return _error(413, "payload_too_large", f"body exceeds {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length)

    def _write(self, reply: _Reply) -> None:
        payload = json.dumps(reply.body).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


class ProviderEmulator:
    """Serves the provider on loopback until stop(); start once, stop any number of times."""

    def __init__(
        self, api_key: str, faults: ProviderFaults = NO_FAULTS, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._host = host
        self._port = port
        self._scheduler = _Scheduler(CALLBACK_WORKERS)
        self._client = httpx.Client(timeout=CALLBACK_TIMEOUT)
        self._provider = _Provider(api_key, faults, self._scheduler, self._client)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> str:
        if self._server is not None or self._stopped:
            raise RuntimeError("the provider emulator can only be started once")
        server = _Server((self._host, self._port), self._provider)
        self._scheduler.start()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": SERVER_POLL_S},
            name="provider-emulator-http",
            daemon=True,
        )
        self._thread.start()
        self._server = server
        return self.url

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.close_connections()
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
        self._provider.stop()
        self._scheduler.stop(STOP_TIMEOUT_S)
        self._client.close()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the provider emulator is not started")
        return f"http://{self._host}:{self._server.server_port}"

    def stats(self) -> dict[str, int]:
        return self._provider.stats()

    def __enter__(self) -> ProviderEmulator:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
