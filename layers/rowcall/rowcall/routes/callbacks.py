"""`POST /callbacks/{batch_id}/{row_id}`: a run's webhook (contract §5, §5b). No authorizer at the
gateway: the URL's token is checked before anything else is read, then the body's size, then the
signature of the batch's provider over the raw body (FLORA's `Flora-Signature`, Replicate's
Standard Webhooks headers), then the body (architecture.md, data flow 3)."""

import base64

from aws_lambda_powertools import Metrics, Tracer
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.metrics import MetricUnit
from pydantic import ValidationError

from rowcall.api import ApiError
from rowcall.api_models import Accepted
from rowcall.compose import callback_intake
from rowcall.identity import content_key_in
from rowcall.providers.replicate import REPLICATE_MAX_CALLBACK_BYTES
from rowcall.routes.errors import error_responses
from rowcall.tracing import TRACED_MODULES

router = Router()  # type: ignore[no-untyped-call]  # Powertools leaves __init__ unannotated
metrics = Metrics()
tracer = Tracer(patch_modules=TRACED_MODULES)
# The largest delivery of any provider (a Replicate prediction with its logs); each provider's
# own limit (FLORA's envelope: 64 KiB) is checked once the batch says which it is.
MAX_CALLBACK_BYTES = REPLICATE_MAX_CALLBACK_BYTES
ROUTE = "/callbacks/<batch_id>/<row_id>"


@router.post(
    ROUTE,
    summary="A run's webhook (FLORA's envelope signed with Flora-Signature, or Replicate's prediction "
    "signed per Standard Webhooks)",
    tags=["callbacks"],
    # Not behind the gateway's authorizer: the token and the signature are the credentials.
    security=[{}],
    responses={200: {"description": "Accepted (also for a repeat)"}, **error_responses(400, 401, 404, 413)},
)
@tracer.capture_method
def run_callback(batch_id: str, row_id: str) -> Accepted:
    event = router.current_event
    intake = callback_intake()
    # Read here, not declared for validation: whatever is wrong with it is a 401, checked first.
    token = event.get_query_string_value("token")
    attempt = intake.attempt_of(batch_id, row_id, token)
    if attempt is None:
        raise _rejected(401, "invalid_token", "callback token is missing or does not match this row")
    raw = _raw_body(event.body, bool(event.is_base64_encoded))
    if len(raw) > MAX_CALLBACK_BYTES:
        raise _rejected(413, "payload_too_large", f"a run webhook is at most {MAX_CALLBACK_BYTES} bytes")
    provider = intake.provider_of(batch_id)
    reader = intake.reader_for(provider)
    if reader is None:
        raise _rejected(401, "invalid_signature", f"no webhook secret of provider {provider} on this stack")
    if len(raw) > reader.max_body_bytes:
        raise _rejected(413, "payload_too_large", f"a run webhook is at most {reader.max_body_bytes} bytes")
    if not reader.verify(dict(event.headers or {}), raw):
        raise _rejected(
            401, "invalid_signature", _SIGNATURE_PROBLEM.get(provider or "flora", "bad signature")
        )
    try:
        delivery = reader.parse(raw)
    except ValidationError as exc:
        raise _rejected(400, "invalid_body", "callback body is not a run webhook", _fields(exc)) from None
    except ValueError as exc:
        raise _rejected(400, "invalid_body", f"callback body is not a run webhook: {exc}") from None
    if provider is None:
        raise _rejected(404, "batch_not_found", f"no batch {batch_id!r}")
    intake.accept_delivery(batch_id, row_id, attempt, delivery, content_key_in(token or ""))
    metrics.add_metric(name="CallbacksAccepted", unit=MetricUnit.Count, value=1)
    return Accepted(accepted=True)


_SIGNATURE_PROBLEM = {
    "flora": "Flora-Signature is missing, stale or does not match",
    "replicate": "webhook-id, webhook-timestamp or webhook-signature is missing, stale or does not match",
}


def _rejected(status: int, code: str, message: str, fields: dict[str, str] | None = None) -> ApiError:
    metrics.add_metric(name="CallbacksRejected", unit=MetricUnit.Count, value=1)
    return ApiError(status, code, message, fields)


def _raw_body(body: str | None, base64_encoded: bool) -> bytes:
    """The bytes FLORA signed: the signature covers the body exactly as sent."""
    if body is None:
        return b""
    return base64.b64decode(body) if base64_encoded else body.encode()


def _fields(exc: ValidationError) -> dict[str, str]:
    return {".".join(str(p) for p in e["loc"]) or "body": e["msg"] for e in exc.errors()}
