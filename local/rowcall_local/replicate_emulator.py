"""A Replicate-style prediction provider on loopback, with the FLORA emulator's faults (contract §5b).

It speaks what the official Python client `replicate` 1.0.7 sends and parses: predictions created
through a model (`POST /v1/models/{owner}/{name}/predictions`) or a version (`POST /v1/predictions`),
read one at a time or as a newest-first page with `next`/`previous` URLs, canceled; models with
one version each; the account's webhook secret; errors as problem details (RFC 7807, what the
client's `ReplicateError` reads). A finished prediction is POSTed to its `webhook` whole, outputs
included, signed per Standard Webhooks, and only that terminal delivery is retried, for about a
minute, as Replicate does. tests/unit/test_replicate_client.py holds it to the client itself.

Faults, media, in-flight accounting, the callback sender and the server are the FLORA emulator's
(provider_emulator.py, emulated_media.py): both providers fail, vanish and retry alike.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import random
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rowcall.signing import WebhookSigner
from rowcall_local.emulated_media import Media, MediaRef
from rowcall_local.provider_emulator import (
    NO_FAULTS,
    CallbackSender,
    InFlightMeter,
    LoopbackEmulator,
    ProviderFaults,
    _CreditsRequest,
    _now_ms,
    _Reply,
    _Request,
    _Scheduler,
    callback_url_problem,
)

# Replicate retries only the final (`completed`) webhook, its last retry about a minute after the
# prediction finished (facts.md "Replicate"); the exact delays are not published.
CALLBACK_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 29.0)
LIST_PAGE_SIZE = 100
"""Predictions per page of `GET /v1/predictions`, as Replicate pages them."""
STAT_NAMES = (
    "creates",
    "gets",
    "lists",
    "polls",
    "duplicate_creates",
    "max_in_flight",
    "callbacks_sent",
    "callbacks_failed",
    "deliveries_given_up",
    "media_gets",
)
# The callback sender also keeps when it last delivered (bench's on-done latency); _stats does not show it.
_SENDER_STATS = ("last_callback_sent_at_ms",)
VERSION_ID = re.compile(r"[0-9a-f]{64}")
MODEL_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
WEBHOOK_EVENTS = ("start", "output", "logs", "completed")
COG_VERSION = "0.13.7"
URI_SCHEMA = {"type": "string", "format": "uri"}
INSUFFICIENT_CREDIT = (
    "You have insufficient credit to run this model. Go to https://replicate.com/account/billing#billing "
    "to purchase credit. Once you purchase credit, please wait a few minutes before trying again."
)
# Titles Replicate gives its problem details, by status (`detail` says what happened).
TITLES = {
    400: "Bad request",
    401: "Unauthenticated",
    402: "Insufficient credit",
    404: "Not found",
    405: "Method not allowed",
    413: "Payload too large",
    422: "Input validation failed",
    429: "Request was throttled",
    500: "Internal server error",
    503: "Service unavailable",
}

PredictionStatus = Literal["starting", "processing", "succeeded", "failed", "canceled"]
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})


def version_of(model: str) -> str:
    """The one version id the emulator gives model `owner/name` (contract §5b)."""
    return hashlib.sha256(model.encode()).hexdigest()


def problem(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> _Reply:
    """An error as Replicate answers it: RFC 7807 problem details."""
    body = {"title": TITLES.get(status, "Error"), "detail": detail, "status": status, **extra}
    return _Reply(status, body, headers or {})


def _iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class CreatePrediction(BaseModel):
    """The body of both create routes, as the client's `_create_prediction_body` builds it."""

    model_config = ConfigDict(strict=True)

    version: str | None = None
    input: dict[str, Any]
    webhook: str | None = None
    webhook_completed: str | None = None
    webhook_events_filter: list[Literal["start", "output", "logs", "completed"]] | None = None
    stream: bool | None = None


class Prediction(BaseModel):
    """What every route answers for a prediction, and what its webhook carries (the client's
    `Prediction`, plus Replicate's `source` and `data_removed`)."""

    id: str
    model: str
    version: str
    status: PredictionStatus
    input: dict[str, Any] | None
    output: Any = None
    logs: str | None = ""
    error: str | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: str
    started_at: str | None = None
    completed_at: str | None = None
    urls: dict[str, str]
    source: Literal["api"] = "api"
    data_removed: bool = False


@dataclass
class _Record:
    seq: int
    """Creation order; the list's cursors are made of it."""
    id: str
    model: str
    version: str
    input: dict[str, Any]
    webhook: str | None
    send_completed: bool
    created_ms: int
    status: PredictionStatus = "starting"
    started_ms: int | None = None
    completed_ms: int | None = None
    output: Any = None
    error: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


def _cursor(direction: Literal["older", "newer"], seq: int) -> str:
    return base64.urlsafe_b64encode(f"{direction}:{seq}".encode()).decode().rstrip("=")


def _parse_cursor(cursor: str) -> tuple[str, int] | None:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    direction, _, number = text.partition(":")
    if direction not in ("older", "newer") or not number.isdigit():
        return None
    return direction, int(number)


class _Replicate:
    """Replicate's state and HTTP semantics (a ServedApi), independent of the socket server."""

    def __init__(
        self,
        api_token: str,
        webhook_secret: str,
        faults: ProviderFaults,
        sender: partial[CallbackSender],
        scheduler: _Scheduler,
        *,
        allow_loopback_webhooks: bool,
        page_size: int,
    ) -> None:
        self._token = api_token.encode()
        self._secret = webhook_secret
        self._signer = WebhookSigner(webhook_secret)
        self._faults = faults
        self._scheduler = scheduler
        self._allow_loopback = allow_loopback_webhooks
        self._page_size = page_size
        self.base_url = ""
        """Where the API is served; `urls`, `next` and media URLs are built from it. Set before serving."""
        self._lock = threading.Lock()
        self._rng = random.Random(faults.seed)
        self._records: dict[str, _Record] = {}
        self._by_seq: list[_Record] = []
        self._fingerprints: set[str] = set()
        self._models: dict[str, str] = {}
        """version id -> model, for the models this emulator has shown or run."""
        self._credits = faults.credits
        self._in_flight = InFlightMeter()
        self._stats = dict.fromkeys(STAT_NAMES + _SENDER_STATS, 0)
        self._stopping = threading.Event()
        self._sender = sender(lock=self._lock, stats=self._stats, stopping=self._stopping)

    # -- the ServedApi side ------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping.set()

    def error_reply(self, status: int, code: str, message: str) -> _Reply:
        return problem(status, message)

    def handle(self, request: _Request) -> _Reply:
        parts = urlsplit(request.target)
        segments = [unquote(part) for part in parts.path.split("/") if part]
        method = request.method
        match segments:
            case ["_stats"]:
                return self._only(method, "GET", lambda: _Reply(200, dict(self.stats())))
            case ["_stats", "reset"]:
                return self._only(method, "POST", self._reset_stats_window)
            case ["_credits"]:
                return self._only(method, "POST", lambda: self._add_credits(request.body))
            case ["v1", *_] if not self._authorized(request.authorization):
                return problem(401, "You did not pass a valid authentication token")
            case ["v1", "models", owner, name, "predictions"]:
                return self._only(method, "POST", lambda: self._create(request.body, f"{owner}/{name}"))
            case ["v1", "predictions"] if method == "POST":
                return self._create(request.body, None)
            case ["v1", "predictions"]:
                return self._only(method, "GET", lambda: self._list(parts.query))
            case ["v1", "predictions", prediction_id]:
                return self._only(method, "GET", lambda: self._get(prediction_id))
            case ["v1", "predictions", prediction_id, "cancel"]:
                return self._only(method, "POST", lambda: self._cancel(prediction_id))
            case ["v1", "models", owner, name]:
                return self._only(method, "GET", lambda: self._model(owner, name))
            case ["v1", "models", owner, name, "versions"]:
                return self._only(method, "GET", lambda: self._versions(owner, name))
            case ["v1", "models", owner, name, "versions", version_id]:
                return self._only(method, "GET", lambda: self._version(owner, name, version_id))
            case ["v1", "webhooks", "default", "secret"]:
                return self._only(method, "GET", lambda: _Reply(200, {"key": self._secret}))
            case _:
                return problem(404, f"no route for {parts.path}")

    def media(self, path: str) -> Media | _Reply:
        """The output a `/_media/...` URL names, while its prediction's outputs are still served."""
        ref = MediaRef.parse(path)
        with self._lock:
            self._stats["media_gets"] += 1
            record = self._records.get(ref.run_id) if ref is not None else None
            outputs = self._outputs(record.output) if record is not None else []
            if ref is None or record is None or not any(url.endswith(ref.path) for url in outputs):
                return problem(404, "no such output")
            if self._faults.output_expired(record.completed_ms, _now_ms()):
                return problem(404, "the output has expired")
        return ref.media(self._faults.output_bytes)

    # -- in-process views (tests, bench) -----------------------------------------------------

    def stats(self) -> dict[str, int | float]:
        with self._lock:
            counts = {name: self._stats[name] for name in STAT_NAMES}
            return {**counts, "in_flight": self._in_flight.now, "in_flight_avg": self._in_flight.average()}

    def last_callback_sent_at_ms(self) -> int:
        with self._lock:
            return self._stats["last_callback_sent_at_ms"]

    def reset_window(self) -> None:
        with self._lock:
            self._in_flight.reset_window()

    def expected_media(self, prediction_id: str) -> list[Media]:
        """The bytes each output URL of a succeeded prediction serves (what a saved copy must equal)."""
        with self._lock:
            record = self._records.get(prediction_id)
            outputs = self._outputs(record.output) if record is not None else []
        refs = [MediaRef.parse(url) for url in outputs]
        return [ref.media(self._faults.output_bytes) for ref in refs if ref is not None]

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _only(method: str, allowed: str, handler: Callable[[], _Reply]) -> _Reply:
        if method != allowed:
            return problem(405, f"{method} is not allowed here; use {allowed}")
        return handler()

    def _authorized(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self._token)

    @staticmethod
    def _outputs(output: Any) -> list[str]:
        items = output if isinstance(output, list) else [output]
        return [item for item in items if isinstance(item, str) and "/_media/" in item]

    def _reset_stats_window(self) -> _Reply:
        self.reset_window()
        return _Reply(200, dict(self.stats()))

    def _add_credits(self, body: bytes) -> _Reply:
        try:
            request = _CreditsRequest.model_validate_json(body)
        except ValidationError as exc:
            return problem(422, str(exc.errors()[:3]))
        with self._lock:
            if self._credits is not None:  # unlimited credits (None) stay unlimited
                self._credits += request.add
            return _Reply(200, {"credits": self._credits})

    def _wire_locked(self, record: _Record) -> dict[str, Any]:
        """The prediction as the API shows it now. Like Replicate's API predictions, its input,
        output and logs are removed once the outputs' time (`--provider-output-ttl-s`) is up."""
        removed = record.terminal and self._faults.output_expired(record.completed_ms, _now_ms())
        url = f"{self.base_url}/v1/predictions/{record.id}"
        metrics: dict[str, Any] = {}
        if record.started_ms is not None and record.completed_ms is not None:
            metrics = {
                "predict_time": (record.completed_ms - record.started_ms) / 1000,
                "total_time": (record.completed_ms - record.created_ms) / 1000,
            }
        logs = "" if record.status == "starting" else f"emulated prediction {record.id}\n"
        prediction = Prediction(
            id=record.id,
            model=record.model,
            version=record.version,
            status=record.status,
            input=None if removed else record.input,
            output=None if removed else record.output,
            logs=None if removed else logs,
            error=record.error,
            metrics=metrics,
            created_at=_iso(record.created_ms) or "",
            started_at=_iso(record.started_ms),
            completed_at=_iso(record.completed_ms),
            urls={"get": url, "cancel": f"{url}/cancel"},
            data_removed=removed,
        )
        return prediction.model_dump(mode="json")

    # -- models ------------------------------------------------------------------------------

    @staticmethod
    def _known(owner: str, name: str) -> bool:
        return (
            MODEL_PART.fullmatch(owner) is not None
            and MODEL_PART.fullmatch(name) is not None
            and not owner.startswith("missing-")
            and not name.startswith("missing-")
        )

    def _version_body(self, model: str) -> dict[str, Any]:
        # An open model: any input, as a FLORA technique declaring `inputs: []` takes any columns.
        schema = {
            "openapi": "3.0.2",
            "info": {"title": "Cog", "version": "0.1.0"},
            "paths": {},
            "components": {
                "schemas": {
                    "Input": {"type": "object", "title": "Input", "properties": {}},
                    "Output": {"type": "array", "title": "Output", "items": URI_SCHEMA},
                }
            },
        }
        return {
            "id": version_of(model),
            "created_at": "2026-01-01T00:00:00.000000Z",
            "cog_version": COG_VERSION,
            "openapi_schema": schema,
        }

    def _model(self, owner: str, name: str) -> _Reply:
        if not self._known(owner, name):
            return problem(404, f"model {owner}/{name} not found")
        model = f"{owner}/{name}"
        with self._lock:
            self._models[version_of(model)] = model
            runs = sum(1 for record in self._by_seq if record.model == model)
        return _Reply(
            200,
            {
                "url": f"https://replicate.com/{model}",
                "owner": owner,
                "name": name,
                "description": f"{model}, emulated",
                "visibility": "public",
                "github_url": None,
                "paper_url": None,
                "license_url": None,
                "run_count": runs,
                "cover_image_url": None,
                "default_example": None,
                "latest_version": self._version_body(model),
            },
        )

    def _versions(self, owner: str, name: str) -> _Reply:
        if not self._known(owner, name):
            return problem(404, f"model {owner}/{name} not found")
        versions = [self._version_body(f"{owner}/{name}")]
        return _Reply(200, {"next": None, "previous": None, "results": versions})

    def _version(self, owner: str, name: str, version_id: str) -> _Reply:
        if not self._known(owner, name) or version_id != version_of(f"{owner}/{name}"):
            return problem(404, f"version {version_id} of {owner}/{name} not found")
        return _Reply(200, self._version_body(f"{owner}/{name}"))

    # -- create ------------------------------------------------------------------------------

    def _create(self, raw: bytes, model: str | None) -> _Reply:
        with self._lock:
            self._stats["creates"] += 1
        if model is not None:
            owner, _, name = model.partition("/")
            if not self._known(owner, name):
                return problem(404, f"model {model} not found")
        try:
            body = CreatePrediction.model_validate_json(raw)
        except ValidationError as exc:
            fields = [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]} for e in exc.errors()]
            return problem(422, "the request body is not a prediction", invalid_fields=fields[:5])
        if model is None:
            version = body.version or ""
            if VERSION_ID.fullmatch(version) is None:
                return problem(422, "version must be a model version id (64 hexadecimal characters)")
            model = self._model_of(version)
        elif body.version is not None:
            return problem(422, "version is not taken on a model's predictions route")
        else:
            version = version_of(model)
        webhook = body.webhook or body.webhook_completed
        if webhook is not None:
            reason = callback_url_problem(webhook, allow_loopback=self._allow_loopback)
            if reason is not None:
                return problem(422, reason.replace("callback_url", "webhook"))
        with self._lock:
            fault = self._faults.create_fault(self._rng)
        if fault is not None:
            status, headers = fault
            if status == 429:
                return problem(429, "Request was throttled. Expected available in 1 second.", headers)
            return problem(503, "the service is temporarily unavailable")
        # Without a filter Replicate sends every event; the emulator sends only the final one.
        filters = body.webhook_events_filter
        send_completed = body.webhook_completed is not None or filters is None or "completed" in filters
        return self._admit(model, version, body.input, webhook if send_completed else None)

    def _model_of(self, version: str) -> str:
        """The model a version belongs to: one the emulator has run or shown, else a stand-in name."""
        with self._lock:
            return self._models.get(version, f"emulated/version-{version[:12]}")

    def _admit(self, model: str, version: str, inputs: dict[str, Any], webhook: str | None) -> _Reply:
        fingerprint = json.dumps([version, inputs, webhook], sort_keys=True)
        with self._lock:
            if self._credits is not None and self._credits <= 0:
                return problem(402, INSUFFICIENT_CREDIT)
            if self._credits is not None:
                self._credits -= 1
            if fingerprint in self._fingerprints:
                # Replicate has no idempotency key: a repeated create is a second prediction.
                self._stats["duplicate_creates"] += 1
            self._fingerprints.add(fingerprint)
            self._models[version] = model
            prediction_id = base64.b32encode(self._rng.randbytes(20)).decode().lower()[:26]
            record = _Record(
                seq=len(self._by_seq),
                id=prediction_id,
                model=model,
                version=version,
                input=inputs,
                webhook=webhook,
                send_completed=webhook is not None,
                created_ms=_now_ms(),
            )
            self._records[prediction_id] = record
            self._by_seq.append(record)
            self._in_flight.change(+1)
            self._stats["max_in_flight"] = self._in_flight.most
            delay_s = self._faults.run_seconds(self._rng)
            reply = _Reply(201, self._wire_locked(record))
        self._scheduler.call_later(0, partial(self._start, prediction_id), inline=True)
        self._scheduler.call_later(delay_s, partial(self._finish, prediction_id), inline=True)
        return reply

    # -- lifecycle ---------------------------------------------------------------------------

    def _start(self, prediction_id: str) -> None:
        with self._lock:
            record = self._records[prediction_id]
            if record.status == "starting":
                record.status = "processing"
                record.started_ms = _now_ms()

    def _finish(self, prediction_id: str) -> None:
        with self._lock:
            record = self._records[prediction_id]
            if record.terminal:
                return  # canceled meanwhile
            record.started_ms = record.started_ms or _now_ms()
            if self._faults.run_fails(self._rng):
                record.status = "failed"
                record.error = "the model failed to generate an output (injected fault)"
            else:
                record.status = "succeeded"
                record.output = self._output(record)
            self._end_locked(record)

    def _output(self, record: _Record) -> Any:
        """What a model answers, by the end of its name: `-text` a string, `-json` an object,
        `-url` one image URL, `-images` two; any other model a list of one image URL (Replicate's
        image models' usual answer)."""
        name = record.model.rpartition("/")[2]
        if name.endswith("-text"):
            return f"emulated text of prediction {record.id}"
        if name.endswith("-json"):
            return {"caption": f"prediction {record.id}", "score": 0.5}
        urls = [self.base_url + MediaRef(record.id, "imageUrl", f"output_{n}").path for n in range(2)]
        if name.endswith("-url"):
            return urls[0]
        return urls if name.endswith("-images") else urls[:1]

    def _end_locked(self, record: _Record) -> None:
        record.completed_ms = _now_ms()
        self._in_flight.change(-1)
        if record.webhook is None:
            return
        copies = self._faults.callback_copies(self._rng)
        if not copies:
            return  # the delivery is dropped (an injected fault)
        body = json.dumps(self._wire_locked(record)).encode()
        message_id = "msg_" + base64.b32encode(self._rng.randbytes(15)).decode().lower()
        self._sender.send_copies(copies, record.webhook, body, partial(self._signed, message_id, body))

    def _signed(self, message_id: str, body: bytes, timestamp: int) -> dict[str, str]:
        return {"Content-Type": "application/json", **self._signer.headers(message_id, timestamp, body)}

    def _cancel(self, prediction_id: str) -> _Reply:
        with self._lock:
            record = self._records.get(prediction_id)
            if record is None:
                return problem(404, f"prediction {prediction_id} not found")
            if not record.terminal:
                record.status = "canceled"
                self._end_locked(record)
            return _Reply(200, self._wire_locked(record))

    # -- reads -------------------------------------------------------------------------------

    def _get(self, prediction_id: str) -> _Reply:
        with self._lock:
            self._stats["gets"] += 1
            record = self._records.get(prediction_id)
            if record is None:
                return problem(404, f"prediction {prediction_id} not found")
            if not record.terminal:
                self._stats["polls"] += 1
            return _Reply(200, self._wire_locked(record))

    def _list(self, query_string: str) -> _Reply:
        """Newest first, a page at a time. A cursor names the page by a prediction it is older
        (`next`) or newer (`previous`) than, so predictions created meanwhile shift nothing."""
        with self._lock:
            self._stats["lists"] += 1
        cursors = parse_qs(query_string).get("cursor")
        cursor = cursors[-1] if cursors else None
        parsed = _parse_cursor(cursor) if cursor is not None else None
        if cursor is not None and parsed is None:
            return problem(400, "cursor is not one this API returned")
        with self._lock:
            if parsed is None or parsed[0] == "older":
                top = len(self._by_seq) if parsed is None else parsed[1]
                page = self._by_seq[max(0, top - self._page_size) : top][::-1]
            else:
                page = self._by_seq[parsed[1] + 1 : parsed[1] + 1 + self._page_size][::-1]
            results = [self._wire_locked(record) for record in page]
            newest = len(self._by_seq) - 1
        url = f"{self.base_url}/v1/predictions?cursor="
        older = bool(page) and page[-1].seq > 0
        newer = bool(page) and parsed is not None and page[0].seq < newest
        return _Reply(
            200,
            {
                "next": url + _cursor("older", page[-1].seq) if older else None,
                "previous": url + _cursor("newer", page[0].seq) if newer else None,
                "results": results,
            },
        )


class ReplicateEmulator(LoopbackEmulator):
    """Serves Replicate's API on loopback until stop(); start once, stop any number of times.

    `api_token` is the one bearer token it takes; `webhook_secret` (`whsec_...`) is the account's
    signing secret. Replicate wants https webhooks on public hosts; `allow_loopback_webhooks` lets
    the local stack's 127.0.0.1 receiver in.
    """

    def __init__(
        self,
        api_token: str,
        faults: ProviderFaults = NO_FAULTS,
        *,
        webhook_secret: str,
        allow_loopback_webhooks: bool = False,
        callback_backoff_s: Sequence[float] = CALLBACK_BACKOFF_S,
        page_size: int = LIST_PAGE_SIZE,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if not api_token:
            raise ValueError("api_token must not be empty")
        if not webhook_secret.startswith("whsec_"):
            raise ValueError("webhook_secret must be a whsec_ secret")
        if page_size < 1:
            raise ValueError("page_size must be >= 1")
        super().__init__(host, port)
        sender = partial(CallbackSender, self._scheduler, self._client, callback_backoff_s)
        self._replicate = self._api = _Replicate(
            api_token,
            webhook_secret,
            faults,
            sender,
            self._scheduler,
            allow_loopback_webhooks=allow_loopback_webhooks,
            page_size=page_size,
        )

    def stats(self) -> dict[str, int | float]:
        """What `GET /_stats` answers (contract §5b)."""
        return self._replicate.stats()

    def last_callback_sent_at_ms(self) -> int:
        """When the last webhook that was answered 2xx was sent (unix ms; 0: none yet)."""
        return self._replicate.last_callback_sent_at_ms()

    def reset_stats_window(self) -> None:
        self._replicate.reset_window()

    def expected_media(self, prediction_id: str) -> list[Media]:
        return self._replicate.expected_media(prediction_id)
