"""`--aws-fault-rate`: the embedded AWS answers a fraction of the functions' requests as AWS does under load.

Installed in the moto server process (moto_process.py). Only requests signed with a function's
credentials (access key `fn-<LogicalId>`, given by the local runtime, or under --enforce-iam the
credentials it assumed from the function's role as session `fn-<LogicalId>`) are candidates; the local
runtime's own requests (event sources) and a test's requests never are. The errors are AWS's own:

- DynamoDB (developer guide, "Error handling with DynamoDB"): `ThrottlingException` and
  `ProvisionedThroughputExceededException` (400, retried by the SDKs), `InternalServerError` (500);
  a write transaction conflicting with another is cancelled (`TransactionCanceledException`, reason
  `TransactionConflict`, not retried by botocore), a single-item write conflicting with a transaction
  gets `TransactionConflictException` (400).
- S3 (error responses list): 503 `SlowDown`, "Please reduce your request rate."
- SQS (common errors): 500 `InternalError`.

A 500 may come after the request was applied, as it can on AWS (half of them here): a client that
retries a non-idempotent write (DynamoDB `ADD`, an SQS send) must cope with its first attempt having
happened. Faults are drawn from a seeded generator and counted; `GET /_rowcall/faults` on the moto
endpoint returns the counts, and `POST` with `{"rate": R, "seed": S}` changes the rate.
"""

from __future__ import annotations

import io
import json
import random
import re
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from rowcall_local.aws_clients import ACCESS_KEY_ID

FUNCTION_KEY_PREFIX = "fn-"
CONTROL_PATH = "/_rowcall/faults"

_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/[^/]+/[^/]+/([^/]+)/aws4_request")
_TRANSACTIONS = ("TransactWriteItems", "TransactGetItems")
_SINGLE_WRITES = ("PutItem", "UpdateItem", "DeleteItem")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


@dataclass(frozen=True)
class Fault:
    name: str
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    after_applying: bool = False


def _dynamodb(name: str, status: int, message: str, **extra: Any) -> Fault:
    body = {"__type": f"com.amazonaws.dynamodb.v20120810#{name}", "message": message, **extra}
    return Fault(name, status, (("Content-Type", "application/x-amz-json-1.0"),), json.dumps(body).encode())


def _transaction_conflict(items: int) -> Fault:
    reasons = [{"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"}]
    reasons += [{"Code": "None"}] * max(items - 1, 0)
    codes = ", ".join(r["Code"] for r in reasons)
    return _dynamodb(
        "TransactionCanceledException",
        400,
        f"Transaction cancelled, please refer cancellation reasons for specific reasons [{codes}]",
        CancellationReasons=reasons,
    )


def _s3_slow_down() -> Fault:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
        "<Message>Please reduce your request rate.</Message>"
        f"<RequestId>{uuid.uuid4().hex}</RequestId></Error>"
    )
    return Fault("SlowDown", 503, (("Content-Type", "application/xml"),), body.encode())


def _sqs_internal_error(json_protocol: bool, after_applying: bool) -> Fault:
    message = "We encountered an internal error. Please try again."
    headers: tuple[tuple[str, str], ...]
    if json_protocol:  # boto3 >= 1.34 speaks JSON to SQS; the header carries the query-style code
        body = json.dumps({"__type": "com.amazonaws.sqs#InternalError", "message": message}).encode()
        headers = (
            ("Content-Type", "application/x-amz-json-1.0"),
            ("x-amzn-query-error", "InternalError;Receiver"),
        )
    else:
        body = (
            "<ErrorResponse><Error><Type>Receiver</Type><Code>InternalError</Code>"
            f"<Message>{message}</Message></Error><RequestId>{uuid.uuid4()}</RequestId></ErrorResponse>"
        ).encode()
        headers = (("Content-Type", "text/xml"),)
    return Fault("InternalError", 500, headers, body, after_applying)


def is_function_key(access_key: str) -> bool:
    """A function's own key (`fn-<LogicalId>`), or, under --enforce-iam, credentials assumed from
    its role with the session name `fn-<LogicalId>` (iam_enforcement.py)."""
    if access_key.startswith(FUNCTION_KEY_PREFIX):
        return True
    if access_key == ACCESS_KEY_ID:
        return False
    from rowcall_local.iam_enforcement import assumed_role_session

    return (assumed_role_session(access_key) or "").startswith(FUNCTION_KEY_PREFIX)


class FaultInjector:
    """Decides, for each request a function signed, whether AWS's error answers it instead."""

    def __init__(self, rate: float = 0.0, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self.configure(rate, seed)
        self.injected: Counter[str] = Counter()
        self.candidates = 0

    def configure(self, rate: float, seed: int | None = None) -> None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate {rate} is not within 0..1")
        with self._lock:
            self.rate = rate
            if seed is not None:
                self._random = random.Random(seed)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"rate": self.rate, "candidates": self.candidates, "injected": dict(self.injected)}

    def choose(self, environ: dict[str, Any]) -> Fault | None:
        found = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        if not found or not is_function_key(found.group(1)):
            return None
        service = found.group(2)
        operation = environ.get("HTTP_X_AMZ_TARGET", "").rpartition(".")[2]
        with self._lock:
            self.candidates += 1
            if self._random.random() >= self.rate:
                return None
            pick = self._random.random()
        fault = self._fault_for(service, operation, pick, environ)
        if fault is not None:
            with self._lock:
                self.injected[f"{service}:{fault.name}{':applied' if fault.after_applying else ''}"] += 1
        return fault

    @staticmethod
    def _fault_for(service: str, operation: str, pick: float, environ: dict[str, Any]) -> Fault | None:
        if service == "dynamodb":
            if pick < 0.3:
                return _dynamodb(
                    "ThrottlingException", 400, "Rate of requests exceeds the allowed throughput."
                )
            if pick < 0.55:
                return _dynamodb(
                    "ProvisionedThroughputExceededException",
                    400,
                    "The level of configured provisioned throughput for the table was exceeded. "
                    "Consider increasing your provisioning level with the UpdateTable API.",
                )
            if pick < 0.8 and operation in _TRANSACTIONS:
                return _transaction_conflict(_transaction_items(environ))
            if pick < 0.8 and operation in _SINGLE_WRITES:
                return _dynamodb("TransactionConflictException", 400, "Transaction is ongoing for the item")
            error = _dynamodb("InternalServerError", 500, "Internal server error")
            return Fault(error.name, error.status, error.headers, error.body, after_applying=pick >= 0.9)
        if service == "s3":
            return _s3_slow_down()
        if service == "sqs":
            json_protocol = environ.get("CONTENT_TYPE", "").startswith("application/x-amz-json")
            return _sqs_internal_error(json_protocol, after_applying=pick >= 0.5)
        return None  # SNS, SSM, ...: not injected


def _transaction_items(environ: dict[str, Any]) -> int:
    """Items in a transaction's body; the body is put back for moto to read."""
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    environ["wsgi.input"] = io.BytesIO(body)
    try:
        return len(json.loads(body).get("TransactItems") or [])
    except ValueError:
        return 1


def _drain(environ: dict[str, Any]) -> None:
    """Read the request body an error answers unread, so the connection stays in step."""
    stream = environ["wsgi.input"]
    if environ.get("wsgi.input_terminated"):
        stream.read()
    else:
        stream.read(int(environ.get("CONTENT_LENGTH") or 0))


def _respond(
    start_response: StartResponse, status: int, headers: Iterable[tuple[str, str]], body: bytes
) -> list[bytes]:
    reason = {200: "OK", 400: "Bad Request", 500: "Internal Server Error", 503: "Slow Down"}[status]
    start_response(f"{status} {reason}", [*headers, ("Content-Length", str(len(body)))])
    return [body]


def _discard_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return lambda data: None


def wrap(app: WsgiApp, injector: FaultInjector) -> WsgiApp:
    """moto's WSGI app with faults in front of it and the control endpoint beside it."""

    def faulty(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == CONTROL_PATH:
            if environ.get("REQUEST_METHOD") == "POST":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                wanted = json.loads(environ["wsgi.input"].read(length) or b"{}")
                injector.configure(float(wanted.get("rate", injector.rate)), wanted.get("seed"))
            body = json.dumps(injector.stats()).encode()
            return _respond(start_response, 200, [("Content-Type", "application/json")], body)
        fault = injector.choose(environ)
        if fault is None:
            return app(environ, start_response)
        if fault.after_applying:
            applied = app(environ, _discard_response)
            try:
                for _ in applied:
                    pass
            finally:
                close = getattr(applied, "close", None)
                if close is not None:
                    close()
        else:
            _drain(environ)
        return _respond(start_response, fault.status, fault.headers, fault.body)

    return faulty


def install(rate: float, seed: int) -> FaultInjector:
    """Put the injector in front of every request moto's server answers (before it starts)."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    injector = FaultInjector(rate, seed)
    call = DomainDispatcherApplication.__call__

    def __call__(self: Any, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:  # noqa: N807
        return wrap(lambda e, s: call(self, e, s), injector)(environ, start_response)

    setattr(DomainDispatcherApplication, "__call__", __call__)  # noqa: B010 - moto's WSGI entry
    return injector
