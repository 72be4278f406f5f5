"""A FLORA-style technique-run provider on loopback, with injectable faults (contract section 5).

It speaks what `@flora-ai/flora` 0.11 types and verifies: runs with unix-ms timestamps and
optional fields omitted when unset, a newest-first cursor-paged run list, and signed webhook
envelopes (`Flora-Signature`) that carry no outputs, retried with backoff until given up.
tests/unit/test_flora_sdk.py holds it to the SDK itself.
"""

from __future__ import annotations

import base64
import binascii
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import heapq
import hmac
import ipaddress
import itertools
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Protocol, Self, cast
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rowcall.flora_signature import EVENT_HEADER, SIGNATURE_HEADER, WEBHOOK_ID_HEADER, signature_header
from rowcall_local.emulated_media import Media, MediaRef
from rowcall_local.technique_catalog import DEFAULT_RUN_COST_USD, Catalog, Technique, input_problems

log = logging.getLogger(__name__)

IDEMPOTENCY_TTL_S = 2 * 60 * 60
# FLORA's two readings of an idempotency key (facts.md "FLORA idempotency"): the SDK's, a repeat
# within two hours is 409 `idempotency_duplicate`; the idempotency page's, a repeat within 24 hours
# replays the original response and the same key with another body is 422 `idempotency_conflict`.
IdempotencyMode = Literal["duplicate", "replay"]
IDEMPOTENCY_MODES: tuple[IdempotencyMode, ...] = ("duplicate", "replay")
REPLAY_TTL_S = 24 * 60 * 60
# FLORA retries a delivery up to 3 times with exponential backoff; its real delays are not
# published, and short ones keep local runs and tests quick.
CALLBACK_BACKOFF_S = (0.2, 0.5, 1.0)
DUPLICATE_CALLBACK_GAP_S = 0.05
CALLBACK_WORKERS = 8
# Short enough that stop() stays bounded even when a callback receiver hangs.
CALLBACK_TIMEOUT = httpx.Timeout(5.0, connect=1.0)
STOP_TIMEOUT_S = 2.0
SERVER_POLL_S = 0.05
MAX_BODY_BYTES = 8 * 1024 * 1024
WEBHOOK_API_VERSION = "2026-06-11"
LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 100
RUN_COST_USD = DEFAULT_RUN_COST_USD
# Charges are summed in whole micro-USD, so the total is exact whatever the count of runs.
MICRO_USD = 1_000_000
# What `GET /_stats?technique_id=T` counts of one technique's runs.
TECHNIQUE_STAT_NAMES = (
    "creates",
    "duplicate_creates",
    "gets",
    "polls",
    "technique_gets",
    "completed",
    "failed",
)
STAT_NAMES = (
    "creates",
    "unique_idempotency_keys",
    "duplicate_creates",
    "gets",
    "lists",
    "polls",
    "max_in_flight",
    "callbacks_sent",
    "callbacks_failed",
    "deliveries_given_up",
    "last_callback_sent_at_ms",
    "technique_gets",
    "media_gets",
)

RunStatus = Literal["pending", "running", "completed", "failed"]
TERMINAL_STATUSES = frozenset({"completed", "failed"})


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
    output_bytes: int = 16384
    """Size of each output the emulator serves at its `url` (`--provider-output-bytes`)."""
    output_ttl_s: float | None = None
    """Outputs 404 this long after their run finished (`--provider-output-ttl-s`); None: never."""
    # The technique catalog (--provider-techniques) and the open techniques' price (--provider-run-cost).
    techniques: tuple[Technique, ...] = ()
    run_cost_usd: float = DEFAULT_RUN_COST_USD
    idempotency: IdempotencyMode = "duplicate"

    def __post_init__(self) -> None:
        if self.idempotency not in IDEMPOTENCY_MODES:
            raise ValueError(f"idempotency must be one of {', '.join(IDEMPOTENCY_MODES)}")
        low, high = self.delay_ms
        if not 0 <= low <= high:
            raise ValueError(f"delay_ms must be 0 <= min <= max, got {self.delay_ms}")
        rates = ("fail_rate", "rate_429", "rate_5xx", "duplicate_callback_rate", "drop_callback_rate")
        for name in rates:
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within 0..1")
        if self.credits is not None and self.credits < 0:
            raise ValueError("credits must be >= 0")
        if self.output_bytes < 0:
            raise ValueError("output_bytes must be >= 0")
        if self.output_ttl_s is not None and self.output_ttl_s <= 0:
            raise ValueError("output_ttl_s must be > 0")
        if not self.run_cost_usd >= 0:
            raise ValueError("run_cost_usd must be >= 0")

    # The draws every emulated provider makes, in one place so each provider injects the same faults.

    def create_fault(self, rng: random.Random) -> tuple[int, dict[str, str]] | None:
        """The status (and headers) a create is refused with, or None: 429 with Retry-After, or 503."""
        if rng.random() < self.rate_429:
            return 429, {"Retry-After": rng.choice(("0", "1"))}
        if rng.random() < self.rate_5xx:
            return 503, {}
        return None

    def run_seconds(self, rng: random.Random) -> float:
        return rng.randint(*self.delay_ms) / 1000

    def run_fails(self, rng: random.Random) -> bool:
        return rng.random() < self.fail_rate

    def callback_copies(self, rng: random.Random) -> int:
        """How many times a finished run's callback is sent: 0 (dropped), 1, or 2 (duplicated)."""
        if rng.random() < self.drop_callback_rate:
            return 0
        return 2 if rng.random() < self.duplicate_callback_rate else 1

    def output_expired(self, completed_at_ms: int | None, now_ms: int) -> bool:
        ttl = self.output_ttl_s
        return ttl is not None and completed_at_ms is not None and now_ms > completed_at_ms + ttl * 1000


NO_FAULTS = ProviderFaults()


class RunInput(BaseModel):
    model_config = ConfigDict(strict=True)

    id: str = Field(min_length=1)
    type: str = Field(min_length=1)
    value: str


class CreateRunRequest(BaseModel):
    """The body of `POST /techniques/{id}/runs` (the SDK's RunCreateParams, async mode only)."""

    model_config = ConfigDict(strict=True)

    inputs: list[RunInput]
    mode: Literal["async"]
    callback_url: str | None = None
    idempotency_key: str | None = Field(default=None, min_length=1, max_length=255)


class RunOutput(BaseModel):
    output_id: str
    type: Literal["imageUrl", "videoUrl", "audioUrl", "text", "documentUrl"]
    url: str


class RunObject(BaseModel):
    """The SDK's RunCreateResponse / RunRetrieveResponse. Timestamps are unix milliseconds;
    the SDK types optional fields as `?: T`, not nullable, so None means "omit" on the wire."""

    run_id: str
    status: RunStatus
    progress: int
    created_at: int
    started_at: int | None = None
    completed_at: int | None = None
    outputs: list[RunOutput] = Field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    charged_cost: float | None = None
    poll_url: str

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def wire(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


class TechniqueRef(BaseModel):
    name: str
    technique_id: str


class ListedRun(RunObject):
    """One item of `GET /technique-runs` (the SDK's RunListResponse, plus `technique_id`)."""

    technique_id: str
    technique: TechniqueRef
    technique_run_id: str
    workspace_id: str
    project_id: str


class ListQuery(BaseModel):
    """The query of `GET /technique-runs`; query values arrive as text, so not strict."""

    technique_id: str | None = None
    status: RunStatus | None = None
    workspace_id: str | None = None
    project_id: str | None = None
    limit: int = Field(default=LIST_LIMIT_DEFAULT, ge=1, le=LIST_LIMIT_MAX)
    cursor: str | None = None


class WebhookRunData(BaseModel):
    run_id: str
    run_type: Literal["technique"] = "technique"
    workspace_id: str
    status: Literal["completed", "failed"]
    error_code: str | None = None
    error_message: str | None = None


class WebhookEvent(BaseModel):
    """The envelope FLORA posts to `callback_url` (the SDK's WebhookEvent): no outputs."""

    id: str
    type: Literal["run.completed", "run.failed"]
    api_version: str = WEBHOOK_API_VERSION
    created_at: int
    data: WebhookRunData


@dataclass(frozen=True)
class WebhookDelivery:
    """One event bound for one URL. Every attempt re-signs the same bytes with a fresh `t`."""

    url: str
    event_id: str
    event_type: str
    body: bytes

    @classmethod
    def of(cls, url: str, event: WebhookEvent) -> WebhookDelivery:
        return cls(url, event.id, event.type, event.model_dump_json(exclude_none=True).encode())

    def signed_headers(self, secrets: Sequence[str], timestamp: int) -> dict[str, str]:
        return {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: signature_header(secrets, timestamp, self.body),
            WEBHOOK_ID_HEADER: self.event_id,
            EVENT_HEADER: self.event_type,
        }


class _CreditsRequest(BaseModel):
    model_config = ConfigDict(strict=True)

    add: int = Field(ge=0)


@dataclass
class _RunRecord:
    seq: int
    """Creation order; the list's cursors are made of it."""
    technique_id: str
    callback_url: str | None
    run: RunObject


@dataclass(frozen=True)
class _Request:
    method: str
    target: str
    authorization: str | None
    idempotency_key: str | None
    body: bytes


@dataclass(frozen=True)
class _Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def _error(
    status: int,
    code: str,
    message: str,
    headers: dict[str, str] | None = None,
    fields: dict[str, str] | None = None,
) -> _Reply:
    error: dict[str, Any] = {"code": code, "message": message}
    if fields:
        error["fields"] = fields
    return _Reply(status, {"error": error}, headers or {})


def _describe(exc: ValidationError) -> str:
    parts = [f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()[:5]]
    return "; ".join(parts)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _only(method: str, allowed: str, handler: Callable[[], _Reply]) -> _Reply:
    if method != allowed:
        return _error(405, "method_not_allowed", f"{method} is not allowed here; use {allowed}")
    return handler()


def _run_logged(fn: Callable[[], None]) -> None:
    try:
        fn()
    except Exception:
        log.exception("provider emulator task failed")


def _stable_id(prefix: str, seed: str) -> str:
    """Ids that stay the same for one API key across restarts, as a real workspace's would."""
    return f"{prefix}_{hashlib.sha256(seed.encode()).hexdigest()[:16]}"


def _is_loopback_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    address = _ip_address(host)
    return address is not None and address.is_loopback


def _ip_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_internal_host(host: str) -> bool:
    """Private, loopback, link-local and other non-public addresses. Host names are not
    resolved here (FLORA resolves them; a loopback emulator must not depend on DNS)."""
    if _is_loopback_host(host):
        return True
    address = _ip_address(host)
    return address is not None and not address.is_global


def callback_url_problem(url: str, *, allow_loopback: bool) -> str | None:
    """Why FLORA would refuse this callback_url, or None: it must be https and must not point
    at an internal host. `allow_loopback` lets the local stack receive on 127.0.0.1 over http."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises on a malformed port
    except ValueError:
        return "callback_url is not a valid URL"
    if parts.scheme not in ("http", "https") or not host:
        return "callback_url must be an absolute https URL"
    if allow_loopback and _is_loopback_host(host):
        return None
    if parts.scheme != "https":
        return "callback_url must use https"
    if _is_internal_host(host):
        return "callback_url must not point to a private, loopback or link-local host"
    return None


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"run-seq:{seq}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int | None:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    prefix, _, number = text.partition(":")
    if prefix != "run-seq" or not number.isdigit():
        return None
    return int(number)


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


class InFlightMeter:
    """Runs started and not yet finished: now, at most, and time-averaged since a window's start
    (how full a cap was kept, seen from the provider). Its owner calls it under its own lock."""

    def __init__(self) -> None:
        self.now = 0
        self.most = 0
        self._window_start = self._area_at = time.monotonic()
        self._area = 0.0

    def change(self, by: int) -> None:
        at = time.monotonic()
        self._area += self.now * (at - self._area_at)
        self._area_at = at
        self.now += by
        self.most = max(self.most, self.now)

    def average(self) -> float:
        at = time.monotonic()
        area = self._area + self.now * (at - self._area_at)
        elapsed = at - self._window_start
        return round(area / elapsed, 4) if elapsed > 0 else float(self.now)

    def reset_window(self) -> None:
        self._window_start = self._area_at = time.monotonic()
        self._area = 0.0


class CallbackSender:
    """Posts a finished run's webhook, retried after each of `backoff_s` until answered 2xx, then
    given up; counts every attempt in `stats` (under `lock`). Each attempt is signed afresh by
    `headers(unix seconds)`, so a retry carries a current timestamp."""

    def __init__(
        self,
        scheduler: _Scheduler,
        client: httpx.Client,
        backoff_s: Sequence[float],
        lock: threading.Lock,
        stats: dict[str, int],
        stopping: threading.Event,
    ) -> None:
        self._scheduler = scheduler
        self._client = client
        self._backoff_s = tuple(backoff_s)
        self._lock = lock
        self._stats = stats
        self._stopping = stopping

    def send_copies(
        self, copies: int, url: str, body: bytes, headers: Callable[[int], dict[str, str]]
    ) -> None:
        """A duplicated delivery is the same delivery (same id) sent twice, as a retry race would."""
        for copy in range(copies):
            self._scheduler.call_later(
                copy * DUPLICATE_CALLBACK_GAP_S, partial(self._send, url, body, headers, 0)
            )

    def _send(self, url: str, body: bytes, headers: Callable[[int], dict[str, str]], attempt: int) -> None:
        if self._stopping.is_set():
            return
        signed = headers(int(time.time()))
        sent_at_ms = int(time.time() * 1000)
        delivered = self._post(url, body, signed)
        retry = not delivered and attempt < len(self._backoff_s)
        with self._lock:
            self._stats["callbacks_sent"] += 1
            if delivered:  # when the last accepted delivery was sent: the start of a batch's on-done wait
                last = self._stats["last_callback_sent_at_ms"]
                self._stats["last_callback_sent_at_ms"] = max(last, sent_at_ms)
            if not delivered:
                self._stats["callbacks_failed"] += 1
                if not retry:
                    self._stats["deliveries_given_up"] += 1
        if retry:
            self._scheduler.call_later(
                self._backoff_s[attempt], partial(self._send, url, body, headers, attempt + 1)
            )

    def _post(self, url: str, body: bytes, headers: dict[str, str]) -> bool:
        try:
            response = self._client.post(url, content=body, headers=headers)
        except (httpx.HTTPError, httpx.InvalidURL):
            return False
        return response.is_success


class _Provider:
    """The provider's state and HTTP semantics, independent of the socket server."""

    def __init__(
        self,
        api_key: str,
        faults: ProviderFaults,
        scheduler: _Scheduler,
        client: httpx.Client,
        *,
        webhook_secret: str,
        allow_loopback_callbacks: bool,
    ) -> None:
        self._api_key = api_key.encode()
        self._faults = faults
        self._scheduler = scheduler
        self._webhook_secrets = (webhook_secret,)
        self._allow_loopback = allow_loopback_callbacks
        self.workspace_id = _stable_id("ws", api_key)
        self.project_id = _stable_id("proj", api_key)
        self.base_url = ""
        """Where the provider is served; poll_url is built from it. Set before serving."""
        self._lock = threading.Lock()
        self._rng = random.Random(faults.seed)
        self._runs: dict[str, _RunRecord] = {}
        self._by_seq: list[_RunRecord] = []
        # Insertion order is creation order, so the oldest keys are always at the front.
        # key -> (run id, when, the create's body as parsed, the original reply's body)
        self._keys: dict[str, tuple[str, float, str, dict[str, Any]]] = {}
        self._credits = faults.credits
        self._in_flight = InFlightMeter()
        self._stats = dict.fromkeys(STAT_NAMES, 0)
        self._catalog = Catalog(faults.techniques, faults.run_cost_usd)
        self._charged_micro = 0
        self._by_technique: dict[str, dict[str, int]] = {}
        self._stopping = threading.Event()
        self._sender = CallbackSender(
            scheduler, client, CALLBACK_BACKOFF_S, self._lock, self._stats, self._stopping
        )

    def stats(self) -> dict[str, int | float]:
        with self._lock:
            return {
                **self._stats,
                "charged_cost_usd": self._charged_micro / MICRO_USD,
                "in_flight": self._in_flight.now,
                "in_flight_avg": self._in_flight.average(),
            }

    def set_delay_ms(self, delay_ms: tuple[int, int]) -> None:
        """Runs created from now on last this long (benchmarks of slow and fast runs, one stack)."""
        with self._lock:
            self._faults = dataclasses.replace(self._faults, delay_ms=delay_ms)

    def reset_window(self) -> None:
        """`POST /_stats/reset`: in_flight_avg is measured from now (the counts are kept)."""
        with self._lock:
            self._in_flight.reset_window()

    def technique_stats(self, technique_id: str) -> dict[str, Any]:
        """One technique's runs alone (`GET /_stats?technique_id=T`)."""
        with self._lock:
            counts = dict(self._by_technique.get(technique_id) or dict.fromkeys(TECHNIQUE_STAT_NAMES, 0))
        charged = counts.pop("charged_micro", 0)
        return {"technique_id": technique_id, **counts, "charged_cost_usd": charged / MICRO_USD}

    def _count_locked(self, technique_id: str, name: str, by: int = 1) -> None:
        counts = self._by_technique.get(technique_id)
        if counts is None:
            counts = self._by_technique[technique_id] = dict.fromkeys(TECHNIQUE_STAT_NAMES, 0)
        counts[name] = counts.get(name, 0) + by

    def finished_runs(self) -> list[tuple[str | None, int]]:
        """(callback URL, completed_at in unix ms) of every finished run."""
        with self._lock:
            return [
                (r.callback_url, r.run.completed_at)
                for r in self._by_seq
                if r.run.terminal and r.run.completed_at is not None
            ]

    def stop(self) -> None:
        self._stopping.set()

    def error_reply(self, status: int, code: str, message: str) -> _Reply:
        return _error(status, code, message)

    def handle(self, request: _Request) -> _Reply:
        parts = urlsplit(request.target)
        segments = [unquote(part) for part in parts.path.split("/") if part]
        method = request.method
        match segments:
            case ["techniques", technique_id]:
                return _only(method, "GET", lambda: self._technique(technique_id, request.authorization))
            case ["techniques", technique_id, "runs"]:
                return _only(method, "POST", lambda: self._create(technique_id, request))
            case ["techniques", technique_id, "runs", run_id]:
                return _only(method, "GET", lambda: self._get(technique_id, run_id, request.authorization))
            case ["technique-runs"]:
                return _only(method, "GET", lambda: self._list(parts.query, request.authorization))
            case ["_stats"]:
                return _only(method, "GET", lambda: self._stats_reply(parts.query))
            case ["_stats", "reset"]:
                return _only(method, "POST", self._reset_stats_window)
            case ["_credits"]:
                return _only(method, "POST", lambda: self._add_credits(request.body))
            case _:
                return _error(404, "not_found", f"no route for {parts.path}")

    def media_url(self, run_id: str, output_id: str, output_type: str) -> str:
        """Where an output is served: by the emulator itself, no auth (contract section 5)."""
        return self.base_url + MediaRef(run_id, output_type, output_id).path

    def media(self, path: str) -> Media | _Reply:
        """The output a `/_media/...` path names, while its run's outputs are still served."""
        ref = MediaRef.parse(path)
        with self._lock:
            self._stats["media_gets"] += 1
            record = self._runs.get(ref.run_id) if ref is not None else None
            run = record.run if record is not None else None
            if (
                ref is None
                or run is None
                or run.status != "completed"
                or all(o.output_id != ref.output_id for o in run.outputs)
            ):
                return _error(404, "not_found", "no such output")
            if self._faults.output_expired(run.completed_at, _now_ms()):
                return _error(404, "not_found", "the output has expired")
        return ref.media(self._faults.output_bytes)

    def _reset_stats_window(self) -> _Reply:
        self.reset_window()
        return _Reply(200, dict(self.stats()))

    def _stats_reply(self, query_string: str) -> _Reply:
        technique_id = (parse_qs(query_string).get("technique_id") or [""])[-1]
        if technique_id:
            return _Reply(200, dict(self.technique_stats(technique_id)))
        return _Reply(200, dict(self.stats()))

    def _technique(self, technique_id: str, authorization: str | None) -> _Reply:
        """`GET /techniques/{id}`, as the SDK's `techniques.retrieve` types it."""
        if not self._authorized(authorization):
            return _error(401, "unauthorized", "missing or invalid bearer token")
        with self._lock:
            self._stats["technique_gets"] += 1
            self._count_locked(technique_id, "technique_gets")
        technique = self._catalog.find(technique_id)
        if technique is None:
            return _error(404, "not_found", f"technique {technique_id} not found")
        return _Reply(200, technique.wire())

    def _authorized(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._api_key)

    # -- create ------------------------------------------------------------------------------

    def _create(self, technique_id: str, request: _Request) -> _Reply:
        if not self._authorized(request.authorization):
            return _error(401, "unauthorized", "missing or invalid bearer token")
        with self._lock:
            self._stats["creates"] += 1
            self._count_locked(technique_id, "creates")
        if technique_id.startswith("missing-"):
            return _error(404, "not_found", f"technique {technique_id} not found")
        try:
            body = CreateRunRequest.model_validate_json(request.body)
        except ValidationError as exc:
            return _error(422, "validation_error", _describe(exc))
        declared = self._catalog.declared(technique_id)
        if declared is not None:
            problems = input_problems(declared, [(i.id, i.type, i.value) for i in body.inputs])
            if problems:
                message = f"the inputs do not fit technique {technique_id}"
                return _error(400, "input_validation_error", message, fields=problems)
        key = _idempotency_key(body.idempotency_key, request.idempotency_key)
        if isinstance(key, _Reply):
            return key
        if body.callback_url is not None:
            problem = callback_url_problem(body.callback_url, allow_loopback=self._allow_loopback)
            if problem is not None:
                return _error(422, "invalid_callback_url", problem)
        fingerprint = body.model_dump_json(exclude={"idempotency_key"})
        return self._injected_fault() or self._admit(technique_id, body.callback_url, key, fingerprint)

    def _injected_fault(self) -> _Reply | None:
        with self._lock:
            fault = self._faults.create_fault(self._rng)
        if fault is None:
            return None
        status, headers = fault
        if status == 429:
            return _error(429, "rate_limited", "too many requests", headers)
        return _error(503, "unavailable", "the provider is temporarily unavailable")

    def _admit(
        self, technique_id: str, callback_url: str | None, key: str | None, fingerprint: str
    ) -> _Reply:
        now = time.monotonic()
        with self._lock:
            self._expire_keys_locked(now)
            existing = self._keys.get(key) if key is not None else None
            if existing is not None:
                self._stats["duplicate_creates"] += 1
                self._count_locked(technique_id, "duplicate_creates")
                run_id, _, first_fingerprint, first_reply = existing
                if self._faults.idempotency == "duplicate":
                    message = f"idempotency_key already used by run {run_id}"
                    return _error(409, "idempotency_duplicate", message)
                if fingerprint != first_fingerprint:
                    message = f"idempotency_key was used by run {run_id} with a different request body"
                    return _error(422, "idempotency_conflict", message)
                return _Reply(201, dict(first_reply))
            if self._credits is not None and self._credits <= 0:
                return _error(402, "insufficient_credits", "the account has no credits left")
            run = self._record_run_locked(technique_id, callback_url, key, now, fingerprint)
            delay_s = self._faults.run_seconds(self._rng)
        # The emulator picks a run up at once; it then runs for delay_s.
        self._scheduler.call_later(0, partial(self._start, run.run_id), inline=True)
        self._scheduler.call_later(delay_s, partial(self._finish, run.run_id), inline=True)
        return _Reply(201, run.wire())

    def _expire_keys_locked(self, now: float) -> None:
        ttl = REPLAY_TTL_S if self._faults.idempotency == "replay" else IDEMPOTENCY_TTL_S
        cutoff = now - ttl
        while self._keys:
            oldest = next(iter(self._keys))
            if self._keys[oldest][1] > cutoff:
                return
            del self._keys[oldest]

    def _record_run_locked(
        self, technique_id: str, callback_url: str | None, key: str | None, now: float, fingerprint: str
    ) -> RunObject:
        run_id = f"run_{self._rng.getrandbits(80):020x}"
        run = RunObject(
            run_id=run_id,
            status="pending",
            progress=0,
            created_at=_now_ms(),
            poll_url=f"{self.base_url}/techniques/{technique_id}/runs/{run_id}",
        )
        record = _RunRecord(len(self._by_seq), technique_id, callback_url, run)
        self._runs[run_id] = record
        self._by_seq.append(record)
        if key is not None:
            self._keys[key] = (run_id, now, fingerprint, run.wire())
            self._stats["unique_idempotency_keys"] += 1
        if self._credits is not None:
            self._credits -= 1
        self._in_flight.change(+1)
        self._stats["max_in_flight"] = self._in_flight.most
        return run

    # -- run lifecycle -----------------------------------------------------------------------

    def _start(self, run_id: str) -> None:
        with self._lock:
            record = self._runs[run_id]
            if record.run.status == "pending":
                record.run = record.run.model_copy(update={"status": "running", "started_at": _now_ms()})

    def _finish(self, run_id: str) -> None:
        with self._lock:
            record = self._runs[run_id]
            record.run = self._finished_locked(record.run, record.technique_id)
            self._in_flight.change(-1)
            self._count_locked(record.technique_id, record.run.status)
            charged = round((record.run.charged_cost or 0.0) * MICRO_USD)
            self._charged_micro += charged
            self._count_locked(record.technique_id, "charged_micro", charged)
            url = record.callback_url
            copies = self._faults.callback_copies(self._rng) if url is not None else 0
            event = self._event_locked(record.run) if copies else None
        if url is None or event is None:
            return  # no callback_url, or the delivery is dropped (an injected fault)
        delivery = WebhookDelivery.of(url, event)
        self._sender.send_copies(
            copies, delivery.url, delivery.body, partial(delivery.signed_headers, self._webhook_secrets)
        )

    def _finished_locked(self, run: RunObject, technique_id: str) -> RunObject:
        now = _now_ms()
        times = {"started_at": run.started_at or now, "completed_at": now}
        if self._faults.run_fails(self._rng):
            message = "the technique failed to generate an output (injected fault)"
            failure = {"status": "failed", "error_code": "generation_failed", "error_message": message}
            return run.model_copy(update={**times, **failure, "charged_cost": 0.0})
        output = RunOutput(
            output_id="output_0",
            type="imageUrl",
            url=self.media_url(run.run_id, "output_0", "imageUrl"),
        )
        technique = self._catalog.find(technique_id)
        run_cost = technique.run_cost if technique is not None else self._catalog.run_cost_usd
        success = {"status": "completed", "progress": 100, "outputs": [output], "charged_cost": run_cost}
        return run.model_copy(update={**times, **success})

    def _event_locked(self, run: RunObject) -> WebhookEvent:
        status: Literal["completed", "failed"] = "completed" if run.status == "completed" else "failed"
        return WebhookEvent(
            id=f"whd_{self._rng.getrandbits(96):024x}",
            type=f"run.{status}",
            created_at=_now_ms(),
            data=WebhookRunData(
                run_id=run.run_id,
                workspace_id=self.workspace_id,
                status=status,
                error_code=run.error_code,
                error_message=run.error_message,
            ),
        )

    # -- reads -------------------------------------------------------------------------------

    def _get(self, technique_id: str, run_id: str, authorization: str | None) -> _Reply:
        if not self._authorized(authorization):
            return _error(401, "unauthorized", "missing or invalid bearer token")
        with self._lock:
            self._stats["gets"] += 1
            self._count_locked(technique_id, "gets")
            record = self._runs.get(run_id)
            run = record.run if record is not None and record.technique_id == technique_id else None
            if run is not None and not run.terminal:
                self._stats["polls"] += 1
                self._count_locked(technique_id, "polls")
        if run is None:
            return _error(404, "not_found", f"run {run_id} not found")
        return _Reply(200, run.wire())

    def _list(self, query_string: str, authorization: str | None) -> _Reply:
        if not self._authorized(authorization):
            return _error(401, "unauthorized", "missing or invalid bearer token")
        with self._lock:
            self._stats["lists"] += 1
        # A repeated parameter counts once, its last value winning, as most web frameworks do.
        raw = {name: values[-1] for name, values in parse_qs(query_string, keep_blank_values=True).items()}
        try:
            query = ListQuery.model_validate(raw)
        except ValidationError as exc:
            return _error(400, "bad_request", _describe(exc))
        before = _decode_cursor(query.cursor) if query.cursor is not None else None
        if query.cursor is not None and before is None:
            return _error(400, "bad_request", "cursor is not one this API returned")
        with self._lock:
            page, more = self._page_locked(query, before)
        items = [self._listed(record).model_dump(mode="json", exclude_none=True) for record in page]
        next_cursor = _encode_cursor(page[-1].seq) if more else None
        return _Reply(200, {"technique_runs": items, "meta": {"next_cursor": next_cursor}})

    def _page_locked(self, query: ListQuery, before: int | None) -> tuple[list[_RunRecord], bool]:
        """Newest first, strictly older than the cursor's run: runs created meanwhile are newer
        than any cursor, so paging neither skips nor repeats a run."""
        top = len(self._by_seq) if before is None else min(before, len(self._by_seq))
        page: list[_RunRecord] = []
        for seq in range(top - 1, -1, -1):
            record = self._by_seq[seq]
            if not self._matches(record, query):
                continue
            if len(page) == query.limit:
                return page, True
            page.append(record)
        return page, False

    def _matches(self, record: _RunRecord, query: ListQuery) -> bool:
        return (
            query.technique_id in (None, record.technique_id)
            and query.status in (None, record.run.status)
            and query.workspace_id in (None, self.workspace_id)
            and query.project_id in (None, self.project_id)
        )

    def _listed(self, record: _RunRecord) -> ListedRun:
        technique_id = record.technique_id
        return ListedRun(
            **record.run.model_dump(),
            technique_id=technique_id,
            technique=TechniqueRef(name=technique_id, technique_id=technique_id),
            technique_run_id=record.run.run_id,
            workspace_id=self.workspace_id,
            project_id=self.project_id,
        )

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


def _idempotency_key(in_body: str | None, in_header: str | None) -> str | _Reply | None:
    """The key from the body or the `Idempotency-Key` header; both given must agree."""
    if in_header is not None and not 1 <= len(in_header) <= 255:
        return _error(422, "validation_error", "Idempotency-Key header must be 1..255 characters")
    if in_body is not None and in_header is not None and in_body != in_header:
        return _error(422, "validation_error", "idempotency_key and the Idempotency-Key header differ")
    return in_body if in_body is not None else in_header


class ServedApi(Protocol):
    """What the loopback server serves: an emulated provider's routes, media and error shape."""

    base_url: str

    def handle(self, request: _Request) -> _Reply: ...

    def media(self, path: str) -> Media | _Reply: ...

    def error_reply(self, status: int, code: str, message: str) -> _Reply:
        """An error in the provider's own shape, for what the server refuses before routing."""
        ...

    def stop(self) -> None: ...


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default listen backlog is 5: a recorder opening ten connections at once had
    # SYNs dropped and retried by TCP a second later (recorder invocations took 1.1 s at p50).
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], provider: ServedApi) -> None:
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

    def _error(self, status: int, code: str, message: str) -> _Reply:
        return cast(_Server, self.server).provider.error_reply(status, code, message)

    def _reject_method(self) -> None:
        # The body must still be consumed, or it would be read as the next keep-alive request.
        body = self._read_body()
        if isinstance(body, _Reply):
            self._write(body)
            return
        self._write(self._error(405, "method_not_allowed", f"{self.command} is not supported"))

    def _serve(self) -> None:
        if self.path.startswith("/_media/") and self.command in ("GET", "HEAD"):
            self._serve_media()
            return
        body = self._read_body()
        if isinstance(body, _Reply):
            self._write(body)
            return
        provider = cast(_Server, self.server).provider
        request = _Request(
            method=self.command,
            target=self.path,
            authorization=self.headers.get("Authorization"),
            idempotency_key=self.headers.get("Idempotency-Key"),
            body=body,
        )
        try:
            reply = provider.handle(request)
        except Exception:
            log.exception("provider emulator failed on %s %s", self.command, self.path)
            reply = self._error(500, "internal", "the emulator failed")
        self._write(reply)

    def _serve_media(self) -> None:
        media = cast(_Server, self.server).provider.media(self.path)
        if isinstance(media, _Reply):
            self._write(media)
            return
        self.send_response(200)
        self.send_header("Content-Type", media.content_type)
        self.send_header("Content-Length", str(media.length))
        self.end_headers()
        if self.command == "HEAD":
            return
        try:
            for piece in media.chunks():
                self.wfile.write(piece)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the reader let go half way; nothing to tell it

    def _read_body(self) -> bytes | _Reply:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            return self._error(400, "bad_request", "invalid Content-Length")
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            return self._error(413, "payload_too_large", f"body exceeds {MAX_BODY_BYTES} bytes")
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


class LoopbackEmulator:
    """Serves one emulated provider's API on loopback until stop(); start once, stop any number
    of times. A subclass builds its API (a ServedApi) over `_scheduler` and `_client`."""

    _api: ServedApi

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._scheduler = _Scheduler(CALLBACK_WORKERS)
        self._client = httpx.Client(timeout=CALLBACK_TIMEOUT)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> str:
        if self._server is not None or self._stopped:
            raise RuntimeError(f"the {type(self).__name__} can only be started once")
        server = _Server((self._host, self._port), self._api)
        self._server = server
        self._api.base_url = self.url
        self._scheduler.start()
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": SERVER_POLL_S},
            name=f"{type(self).__name__}-http",
            daemon=True,
        )
        self._thread.start()
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
        self._api.stop()
        self._scheduler.stop(STOP_TIMEOUT_S)
        self._client.close()

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError(f"the {type(self).__name__} is not started")
        return f"http://{self._host}:{self._server.server_port}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class ProviderEmulator(LoopbackEmulator):
    """Serves the FLORA provider on loopback until stop(); start once, stop any number of times.

    `webhook_secret` signs every delivery (`Flora-Signature`). FLORA refuses callback URLs on
    internal hosts; `allow_loopback_callbacks` lets the local stack's 127.0.0.1 receiver in.
    """

    def __init__(
        self,
        api_key: str,
        faults: ProviderFaults = NO_FAULTS,
        *,
        webhook_secret: str,
        allow_loopback_callbacks: bool = False,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if not webhook_secret:
            raise ValueError("webhook_secret must not be empty")
        super().__init__(host, port)
        self._provider = self._api = _Provider(
            api_key,
            faults,
            self._scheduler,
            self._client,
            webhook_secret=webhook_secret,
            allow_loopback_callbacks=allow_loopback_callbacks,
        )

    @property
    def workspace_id(self) -> str:
        return self._provider.workspace_id

    def stats(self) -> dict[str, int | float]:
        return self._provider.stats()

    def reset_stats_window(self) -> None:
        self._provider.reset_window()

    def set_delay_ms(self, delay_ms: tuple[int, int]) -> None:
        self._provider.set_delay_ms(delay_ms)

    def technique_stats(self, technique_id: str) -> dict[str, Any]:
        return self._provider.technique_stats(technique_id)

    def finished_runs(self) -> list[tuple[str | None, int]]:
        """(callback URL, completed_at in unix ms) of every finished run: when each run ended."""
        return self._provider.finished_runs()
