"""The template's HttpApi routes served on loopback, as API Gateway HTTP APIs (payload 2.0) do."""

from __future__ import annotations

import base64
import hmac
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from rowcall_local.function_pool import PoolStopped
from rowcall_local.sqs_event_source import Invoker
from rowcall_local.template_wiring import HttpRoute

log = logging.getLogger(__name__)

_TEXT_TYPES = (
    "text/",
    "application/json",
    "application/xml",
    "application/x-www-form-urlencoded",
    "+json",
    "+xml",
)


@dataclass(frozen=True)
class _CompiledRoute:
    route: HttpRoute
    pattern: re.Pattern[str]
    names: tuple[str, ...]
    rank: tuple[int, int]  # greedy routes last, then more literal segments first

    @classmethod
    def of(cls, route: HttpRoute) -> _CompiledRoute:
        if route.path == "$default":
            return cls(route, re.compile(r".*"), (), (2, 0))
        parts, names, literals, greedy = [], [], 0, 0
        for segment in route.path.strip("/").split("/"):
            param = re.fullmatch(r"\{([^}]+?)(\+?)\}", segment)
            if param is None:
                parts.append(re.escape(segment))
                literals += 1
            else:
                names.append(param.group(1))
                greedy = max(greedy, int(bool(param.group(2))))
                parts.append("(.+)" if param.group(2) else "([^/]+)")
        return cls(route, re.compile("/" + "/".join(parts)), tuple(names), (greedy, -literals))


@dataclass(frozen=True)
class ApiResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def _json_response(status: int, body: Any, headers: Sequence[tuple[str, str]] = ()) -> ApiResponse:
    return ApiResponse(status, [("content-type", "application/json"), *headers], json.dumps(body).encode())


def _error(status: int, code: str, message: str) -> ApiResponse:
    return _json_response(status, {"error": {"code": code, "message": message}})


def response_from_payload(payload: Any) -> ApiResponse:
    """API Gateway's reading of a payload 2.0 response (a bare JSON value means 200 + that JSON)."""
    if not (isinstance(payload, dict) and "statusCode" in payload):
        return _json_response(200, payload)
    headers = [(str(k), str(v)) for k, v in (payload.get("headers") or {}).items()]
    headers += [("set-cookie", str(c)) for c in payload.get("cookies") or []]
    raw = payload.get("body")
    if raw is None:
        body = b""
    elif payload.get("isBase64Encoded"):
        body = base64.b64decode(raw)
    else:
        body = (raw if isinstance(raw, str) else json.dumps(raw)).encode()
    return ApiResponse(int(payload["statusCode"]), headers, body)


class HttpApi:
    """Routing, the local stand-in for IAM auth, and the event built for the function."""

    def __init__(
        self, routes: Sequence[HttpRoute], invoke: Invoker, api_token: str, api_id: str, account_id: str
    ) -> None:
        self._routes = sorted((_CompiledRoute.of(r) for r in routes), key=lambda c: c.rank)
        self._invoke = invoke
        self._api_token = api_token
        self._api_id = api_id
        self._account_id = account_id

    def _match(self, method: str, path: str) -> tuple[_CompiledRoute, dict[str, str]] | ApiResponse:
        path_matched = False
        for compiled in self._routes:
            found = compiled.pattern.fullmatch(path)
            if found is None:
                continue
            path_matched = True
            if compiled.route.method in ("ANY", method):
                return compiled, {n: unquote(v) for n, v in zip(compiled.names, found.groups(), strict=True)}
        if path_matched:
            return _error(405, "method_not_allowed", f"{method} is not allowed on {path}")
        return _error(404, "not_found", f"no route for {method} {path}")

    def _authorized(self, headers: dict[str, str]) -> bool:
        # Where API Gateway would check SigV4 (AWS_IAM), the local stack checks its bearer token.
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), self._api_token)

    def handle(
        self,
        method: str,
        target: str,
        headers: list[tuple[str, str]],
        body: bytes,
        source_ip: str,
        protocol: str,
    ) -> ApiResponse:
        url = urlsplit(target)
        joined: dict[str, str] = {}
        for name, value in headers:
            key = name.lower()
            joined[key] = f"{joined[key]},{value}" if key in joined else value
        matched = self._match(method, url.path)
        if isinstance(matched, ApiResponse):
            return matched
        compiled, path_parameters = matched
        if compiled.route.needs_auth and not self._authorized(joined):
            return _error(401, "unauthorized", "missing or invalid bearer token")
        event = self._event(
            method, url.path, url.query, joined, body, path_parameters, compiled.route, source_ip, protocol
        )
        try:
            result = self._invoke(compiled.route.function_id, event)
        except PoolStopped:
            return _json_response(503, {"message": "Service Unavailable"})
        if not result.ok:
            return _json_response(500, {"message": "Internal Server Error"})
        try:
            return response_from_payload(result.payload)
        except (TypeError, ValueError) as exc:
            log.error("%s returned a malformed response: %s", compiled.route.function_id, exc)
            return _json_response(500, {"message": "Internal Server Error"})

    def _event(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        body: bytes,
        path_parameters: dict[str, str],
        route: HttpRoute,
        source_ip: str,
        protocol: str,
    ) -> dict[str, Any]:
        now = time.time()
        request_id = base64.b32encode(uuid.uuid4().bytes).decode()[:16]
        cookie_header = headers.pop("cookie", None)
        query_parameters: dict[str, str] = {}
        for key, value in parse_qsl(query, keep_blank_values=True):
            query_parameters[key] = f"{query_parameters[key]},{value}" if key in query_parameters else value
        context: dict[str, Any] = {
            "accountId": self._account_id,
            "apiId": self._api_id,
            "domainName": headers.get("host", "127.0.0.1"),
            "domainPrefix": self._api_id,
            "http": {
                "method": method,
                "path": path,
                "protocol": protocol,
                "sourceIp": source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": route.route_key,
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        }
        if route.needs_auth:
            context["authorizer"] = {
                "iam": {
                    "accessKey": "local",
                    "accountId": self._account_id,
                    "callerId": "local",
                    "principalOrgId": None,
                    "userArn": f"arn:aws:iam::{self._account_id}:user/local",
                    "userId": "local",
                }
            }
        event: dict[str, Any] = {
            "version": "2.0",
            "routeKey": route.route_key,
            "rawPath": path,
            "rawQueryString": query,
            "headers": headers,
            "requestContext": context,
            "isBase64Encoded": False,
        }
        if cookie_header:
            event["cookies"] = [c.strip() for c in cookie_header.split(";") if c.strip()]
        if query_parameters:
            event["queryStringParameters"] = query_parameters
        if path_parameters:
            event["pathParameters"] = path_parameters
        if body:
            content_type = headers.get("content-type", "text/plain").lower()
            if any(t in content_type for t in _TEXT_TYPES):
                try:
                    event["body"] = body.decode("utf-8")
                    return event
                except UnicodeDecodeError:
                    pass
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
        return event


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body are two writes; with Nagle on, a keep-alive client (the provider emulator's
    # webhooks) waits ~40 ms for each reply's body behind a delayed ACK.
    disable_nagle_algorithm = True
    server: _Server

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks = []
            while (size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)) > 0:
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline().strip():
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _serve(self) -> None:
        body = self._read_body()
        response = self.server.api.handle(
            self.command,
            self.path,
            list(self.headers.items()),
            body,
            self.client_address[0],
            self.request_version,
        )
        self.send_response(response.status)
        for name, value in response.headers:
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("content-length", str(len(response.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _serve  # noqa: N815

    def __getattr__(self, name: str) -> Any:
        # Any other method (TRACE, QUERY, ...) goes through the routes too, as at API Gateway,
        # where the catch-all route answers it in the API's shape, never http.server's 501 page.
        if name.startswith("do_"):
            return self._serve
        raise AttributeError(name)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    api: HttpApi


class HttpApiServer:
    """Binds at once (so the URL is known before the stack is deployed); serves once given routes."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = _Server((host, port), _Handler)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def serve(self, api: HttpApi) -> None:
        self._server.api = api
        # shutdown() waits out the serve loop's poll: 0.5 s by default, on every stack stop.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="http-api", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()
