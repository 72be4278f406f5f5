"""HTTP API: run callbacks (HMAC token in the URL) and the management API (IAM at the gateway)."""

import base64
import json
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from rowcall.api import ApiError, not_found, page_limit
from rowcall.batch_actions import BatchNotFound, WrongState
from rowcall.compose import batch_actions, batch_queries, callback_intake
from rowcall.flora_signature import SIGNATURE_HEADER
from rowcall.models import RunWebhook
from rowcall.upload_route import router as upload_router

logger = Logger()
tracer = Tracer()
metrics = Metrics()
app = APIGatewayHttpResolver()
app.include_router(upload_router)
# A FLORA envelope is well under 1 KB; anything far larger is refused before it is parsed.
MAX_CALLBACK_BYTES = 64 * 1024


@app.post("/callbacks/<batch_id>/<row_id>")
@tracer.capture_method
def run_callback(batch_id: str, row_id: str) -> dict[str, Any]:
    event = app.current_event
    intake = callback_intake()
    attempt = intake.attempt_of(batch_id, row_id, event.get_query_string_value("token"))
    if attempt is None:
        raise _rejected(401, "invalid_token", "callback token is missing or does not match this row")
    raw = _raw_body(event.body, bool(event.is_base64_encoded))
    if len(raw) > MAX_CALLBACK_BYTES:
        raise _rejected(413, "payload_too_large", f"a run webhook is at most {MAX_CALLBACK_BYTES} bytes")
    if not intake.signed_by_provider(event.get_header_value(SIGNATURE_HEADER, case_sensitive=False), raw):
        raise _rejected(401, "invalid_signature", "Flora-Signature is missing, stale or does not match")
    try:
        webhook = RunWebhook.model_validate_json(raw)
    except ValidationError as exc:
        raise _rejected(400, "invalid_body", "callback body is not a run webhook", _fields(exc)) from None
    if not intake.knows_batch(batch_id):
        raise _rejected(404, "batch_not_found", f"no batch {batch_id!r}")
    intake.accept(batch_id, row_id, attempt, webhook)
    metrics.add_metric(name="CallbacksAccepted", unit=MetricUnit.Count, value=1)
    return {"accepted": True}


def _rejected(status: int, code: str, message: str, fields: dict[str, str] | None = None) -> ApiError:
    metrics.add_metric(name="CallbacksRejected", unit=MetricUnit.Count, value=1)
    return ApiError(status, code, message, fields)


def _raw_body(body: str | None, base64_encoded: bool) -> bytes:
    """The bytes FLORA signed: the signature covers the body exactly as sent."""
    if body is None:
        return b""
    return base64.b64decode(body) if base64_encoded else body.encode()


@app.get("/batches")
def list_batches() -> dict[str, Any]:
    metrics.add_metric(name="ApiReads", unit=MetricUnit.Count, value=1)
    limit = page_limit(app.current_event.get_query_string_value("limit"))
    return batch_queries().list(limit, app.current_event.get_query_string_value("cursor") or None)


@app.get("/batches/<batch_id>")
def get_batch(batch_id: str) -> dict[str, Any]:
    metrics.add_metric(name="ApiReads", unit=MetricUnit.Count, value=1)
    return batch_queries().get(batch_id)


@app.post("/batches/<batch_id>/resume")
def resume_batch(batch_id: str) -> Response[Any]:
    try:
        batch = batch_actions().resume(batch_id)
    except BatchNotFound:
        raise not_found(batch_id) from None
    except WrongState as wrong:
        raise ApiError(409, "batch_not_paused", str(wrong)) from None
    metrics.add_metric(name="BatchesResumed", unit=MetricUnit.Count, value=1)
    body = batch_queries().view(batch)
    return Response(status_code=202, content_type="application/json", body=json.dumps(body))


def error_response(error: ApiError) -> Response[Any]:
    return Response(status_code=error.status, content_type="application/json", body=error.body())


app.exception_handler(ApiError)(error_response)


@app.not_found
def no_route(_: Exception) -> Response[Any]:
    event = app.current_event
    return error_response(ApiError(404, "not_found", f"no route {event.http_method} {event.path}"))


def _fields(exc: ValidationError) -> dict[str, str]:
    return {".".join(str(p) for p in e["loc"]) or "body": e["msg"] for e in exc.errors()}


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    response: dict[str, Any] = app.resolve(event, context)
    return response
