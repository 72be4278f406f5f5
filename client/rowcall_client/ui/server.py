"""The status page's server: the page and its script, a JSON proxy of the management API, results downloads.

It binds 127.0.0.1 only and trusts nothing else that reaches it through a browser. Another site open
in the same browser can send requests here but must not act or read through it:
- the Host header must name this server (a DNS-rebinding page arrives with its own host name);
- an `Origin` or `Sec-Fetch-Site` that says the request comes from another site is refused;
- every `/api/` request carries the per-process token that only this server's own page knows (it
  is in the page, which other origins cannot read), in a header a cross-site form cannot set;
  POSTs must be `application/json` too; downloads carry the token in their URL;
- responses forbid framing (no clickjacking of the buttons) and cross-origin embedding.
"""

from __future__ import annotations

import contextlib
import hmac
import html
import json
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rowcall_client.api import ApiError

if TYPE_CHECKING:
    from rowcall_client.target import StackTarget

Json = dict[str, Any]
M = TypeVar("M", bound=BaseModel)

HOST = "127.0.0.1"
DEFAULT_PORT = 8765
TOKEN_HEADER = "X-Rowcall-Token"
MAX_BODY_BYTES = 64 * 1024
DOWNLOAD_CHUNK = 64 * 1024
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
ACTIONS = ("reprocess", "cancel", "resume")
# The two files of contract §7, by the name the page links and the batch's `results` field naming them.
DOWNLOADS = {"results.csv": "csv_key", "row-errors.csv": "errors_key"}
# Saved outputs (contract section 7) are served from this origin: only these types are shown
# inline (an image cannot run script here); anything else goes out as a download.
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/gif"})
_SAFE_SEGMENT = re.compile(r"[A-Za-z0-9._-]{1,200}")
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class BatchApi(Protocol):
    """What the page needs of the management API; `RowcallApi` is one."""

    def list_batches(self, limit: int = ..., cursor: str | None = ...) -> Json: ...
    def get_batch(self, batch_id: str) -> Json: ...
    def rows(
        self, batch_id: str, status: str | None = ..., limit: int | None = ..., cursor: str | None = ...
    ) -> Json: ...
    def row_errors(self, batch_id: str, limit: int | None = ..., cursor: str | None = ...) -> Json: ...
    def reprocess(self, batch_id: str, row_ids: list[str] | None = ...) -> Json: ...
    def cancel(self, batch_id: str) -> Json: ...
    def resume(self, batch_id: str, max_cost_usd: float | None = ...) -> Json: ...


class Readable(Protocol):
    def read(self, amt: int | None = ..., /) -> bytes: ...
    def close(self) -> None: ...


@dataclass
class ResultFile:
    body: Readable
    size: int | None
    content_type: str | None = None


class ResultMissing(Exception):
    """The batch names a results object that is not (or no longer) in the bucket."""


class ResultFiles(Protocol):
    """Reads a results object by its key in the stack's bucket."""

    def open(self, key: str) -> ResultFile: ...


class S3ResultFiles:
    """Results from the stack's bucket with the credentials `rowcall results` uses."""

    def __init__(self, target: StackTarget) -> None:
        self._target = target
        self._s3 = target.s3()

    def open(self, key: str) -> ResultFile:
        try:
            answer = self._s3.get_object(Bucket=self._target.bucket, Key=key)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") in ("NoSuchKey", "404"):
                raise ResultMissing(f"s3://{self._target.bucket}/{key} does not exist") from None
            where = f"s3://{self._target.bucket}/{key}"
            raise ApiError(502, "s3_error", f"{where}: {error.get('Message')}") from None
        except BotoCoreError as exc:
            raise ApiError(502, "s3_error", f"s3://{self._target.bucket}/{key}: {exc}") from None
        return ResultFile(answer["Body"], answer.get("ContentLength"), answer.get("ContentType"))


class ReprocessBody(BaseModel):
    """The page's reprocess request: named rows, or none for every failed row (contract §4)."""

    model_config = ConfigDict(extra="forbid")

    row_ids: list[str] | None = None


class NoBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ResumeBody(BaseModel):
    """The page's resume request: optionally a new budget (the approval of `over_budget`)."""

    model_config = ConfigDict(extra="forbid")

    max_cost_usd: float | None = Field(default=None, ge=0, le=1e9, allow_inf_nan=False)


class StatusServer(ThreadingHTTPServer):
    """One stack's status page on http://127.0.0.1:`port`/ (0: a free port; see `url`)."""

    daemon_threads = True

    def __init__(
        self, api: BatchApi, results: ResultFiles, stack_name: str, port: int = DEFAULT_PORT
    ) -> None:
        super().__init__((HOST, port), _Handler)
        self.api = api
        self.results = results
        self.stack_name = stack_name
        self.token = secrets.token_urlsafe(32)
        self.origins = frozenset(f"http://{name}:{self.server_port}" for name in (HOST, "localhost"))
        self.hosts = frozenset(origin.removeprefix("http://") for origin in self.origins)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_port}/"

    def page(self) -> bytes:
        template = (files("rowcall_client.ui") / "static" / "index.html").read_text(encoding="utf-8")
        return (
            template.replace("{{token}}", self.token)
            .replace("{{stack}}", html.escape(self.stack_name))
            .encode()
        )


class _Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "rowcall-ui"
    sys_version = ""

    @property
    def app(self) -> StatusServer:
        server = self.server
        assert isinstance(server, StatusServer)
        return server

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # The page polls every second: only server-side failures are worth a line on the terminal.
        if isinstance(code, HTTPStatus):
            code = code.value
        if isinstance(code, int) and code >= 500:
            super().log_request(code, size)

    # -- dispatch -----------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_OPTIONS(self) -> None:
        # No CORS: a preflight from another origin gets no Access-Control-* header, so it fails.
        self._handle("OPTIONS")

    def _handle(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [unquote(p) for p in url.path.split("/")[1:]]
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        try:
            self._check_host()
            self._route(method, parts, query)
        except _Refused as refused:
            self._send_error(refused.status, refused.code, refused.message)
        except ApiError as error:
            # No answer from the API (status 0) is this proxy's 502; anything else passes through.
            self._send_error(error.status or 502, error.code, error.message, error.fields)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _route(self, method: str, parts: list[str], query: dict[str, str]) -> None:
        match parts:
            case [""] | ["index.html"]:
                self._only(method, "GET")
                self._send(200, "text/html; charset=utf-8", self.app.page())
            case ["static", name] if name in STATIC_FILES:
                self._only(method, "GET")
                body = (files("rowcall_client.ui") / "static" / name).read_bytes()
                self._send(200, f"{STATIC_FILES[name]}; charset=utf-8", body)
            case ["api", *rest]:
                self._check_site()
                self._check_token(self.headers.get(TOKEN_HEADER))
                self._api(method, rest, query)
            case ["download", batch_id, name] if batch_id and name in DOWNLOADS:
                self._only(method, "GET")
                self._check_site()
                self._check_token(query.get("token"))
                self._download(batch_id, name)
            case ["output", batch_id, row_name, name] if all(map(_safe_segment, (batch_id, row_name, name))):
                self._only(method, "GET")
                self._check_site()
                self._check_token(query.get("token"))
                self._output(f"outputs/{batch_id}/{row_name}/{name}", name)
            case _:
                raise _Refused(404, "not_found", f"no page {method} {self.path.split('?')[0]}")

    def _api(self, method: str, rest: list[str], query: dict[str, str]) -> None:
        api = self.app.api
        match rest:
            case ["batches"]:
                self._only(method, "GET")
                limit = _int(query, "limit")
                answer = api.list_batches(limit=limit or 20, cursor=query.get("cursor") or None)
            case ["batches", batch_id] if batch_id:
                self._only(method, "GET")
                answer = api.get_batch(batch_id)
            case ["batches", batch_id, "rows"] if batch_id:
                self._only(method, "GET")
                answer = api.rows(
                    batch_id,
                    status=query.get("status") or None,
                    limit=_int(query, "limit"),
                    cursor=query.get("cursor") or None,
                )
            case ["batches", batch_id, "row-errors"] if batch_id:
                self._only(method, "GET")
                cursor = query.get("cursor") or None
                answer = api.row_errors(batch_id, limit=_int(query, "limit"), cursor=cursor)
            case ["batches", batch_id, action] if batch_id and action in ACTIONS:
                self._only(method, "POST")
                raw = self._json_body()
                if action == "reprocess":
                    answer = api.reprocess(batch_id, _parse(ReprocessBody, raw).row_ids)
                elif action == "resume":
                    answer = api.resume(batch_id, _parse(ResumeBody, raw).max_cost_usd)
                else:
                    _parse(NoBody, raw)
                    answer = api.cancel(batch_id)
                self._send_json(202, answer)
                return
            case _:
                raise _Refused(404, "not_found", f"no route {method} /api/{'/'.join(rest)}")
        self._send_json(200, answer)

    def _download(self, batch_id: str, name: str) -> None:
        # The key comes from the batch, never from the browser: the page can read only results.
        batch = self.app.api.get_batch(batch_id)
        key = (batch.get("results") or {}).get(DOWNLOADS[name])
        if not key:
            status = batch.get("status")
            raise _Refused(404, "results_not_ready", f"batch {batch_id} has no {name} yet (status {status})")
        self._proxy(
            str(key), "results_missing", lambda _: ("text/csv; charset=utf-8", _filename(batch_id, name))
        )

    def _output(self, key: str, name: str) -> None:
        """One saved output, for the gallery: only keys under outputs/, whatever the browser asks."""

        def shown_as(content_type: str | None) -> tuple[str, str | None]:
            kind = (content_type or "").split(";")[0].strip().lower()
            return (kind, None) if kind in INLINE_TYPES else ("application/octet-stream", name)

        self._proxy(key, "output_missing", shown_as)

    def _proxy(
        self, key: str, missing_code: str, shown_as: Callable[[str | None], tuple[str, str | None]]
    ) -> None:
        """An object of the bucket streamed to the browser. `shown_as`: from the object's content
        type, the one to send and the attachment's file name (None: shown inline)."""
        try:
            result = self.app.results.open(key)
        except ResultMissing as missing:
            raise _Refused(404, missing_code, str(missing)) from None
        try:
            content_type, attachment = shown_as(result.content_type)
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            if attachment is not None:
                self.send_header("Content-Disposition", f'attachment; filename="{attachment}"')
            if result.size is None:
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(result.size))
            self._security_headers()
            self.end_headers()
            while chunk := result.body.read(DOWNLOAD_CHUNK):
                self.wfile.write(chunk)
        finally:
            result.body.close()

    # -- checks -------------------------------------------------------------------------------------

    def _check_host(self) -> None:
        if (self.headers.get("Host") or "").lower() not in self.app.hosts:
            raise _Refused(403, "forbidden_host", "this server answers only to its own address")
        origin = self.headers.get("Origin")
        if origin is not None and origin not in self.app.origins:
            raise _Refused(403, "forbidden_origin", f"requests from {origin} are not accepted")

    def _check_site(self) -> None:
        site = self.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            raise _Refused(403, "forbidden_origin", f"a {site} request is not accepted")

    def _check_token(self, given: str | None) -> None:
        if not given or not hmac.compare_digest(given.encode(), self.app.token.encode()):
            raise _Refused(403, "forbidden_token", "missing or wrong page token: reload the page")

    def _only(self, method: str, allowed: str) -> None:
        if method != allowed:
            raise _Refused(405, "method_not_allowed", f"{method} is not allowed here (use {allowed})")

    def _json_body(self) -> Any:
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise _Refused(415, "unsupported_media_type", "send the body as application/json")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise _Refused(400, "invalid_body", "bad Content-Length") from None
        if length > MAX_BODY_BYTES:
            raise _Refused(413, "payload_too_large", f"a request body is at most {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else {}
        except ValueError:
            raise _Refused(400, "invalid_body", "the body is not JSON") from None

    # -- answers ------------------------------------------------------------------------------------

    def _security_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self._security_headers()
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, value: Any) -> None:
        self._send(status, "application/json", json.dumps(value).encode())

    def _send_error(self, status: int, code: str, message: str, fields: dict[str, Any] | None = None) -> None:
        error: Json = {"code": code, "message": message}
        if fields:
            error["fields"] = fields
        # A body left unread would be taken for the next request on this keep-alive connection:
        # close it, and say so, or the client may send its next request into the closing socket.
        self.close_connection = True
        self._send_json(status, {"error": error})


def _int(query: dict[str, str], name: str) -> int | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isdigit():
        raise _Refused(400, "invalid_parameter", f"{name} must be a whole number")
    return int(raw)


def _parse(model: type[M], raw: Any) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in exc.errors())
        raise _Refused(400, "invalid_body", problems) from None


def _safe_segment(segment: str) -> bool:
    """One path-safe name (contract section 7's characters), never `.` or `..`."""
    return bool(_SAFE_SEGMENT.fullmatch(segment)) and segment.strip(".") != ""


def _filename(batch_id: str, name: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in batch_id)
    return f"{safe}-{name}"


def serve(target: StackTarget, port: int, announce: Callable[[str], None]) -> None:
    """Serves `target`'s status page until Ctrl-C; `announce` gets the page's URL once it is listening."""
    with target.api() as api:
        server = StatusServer(api, S3ResultFiles(target), target.name, port)
        with server:
            announce(server.url)
            # Ctrl-C is how it is meant to stop: a clean exit, not an error.
            with contextlib.suppress(KeyboardInterrupt):
                server.serve_forever(poll_interval=0.25)


__all__ = [
    "DEFAULT_PORT",
    "BatchApi",
    "ResultFile",
    "ResultFiles",
    "ResultMissing",
    "S3ResultFiles",
    "StatusServer",
    "serve",
]
