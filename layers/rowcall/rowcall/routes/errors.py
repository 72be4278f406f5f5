"""Every error the API answers, in the contract's shape `{"error": {"code", "message", "fields"?}}`:
the domain's ApiError, Powertools' request validation (its 422 becomes the contract's 400), an
unsupported body type, an unknown route, a body too large."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.openapi.exceptions import (
    RequestUnsupportedContentType,
    RequestValidationError,
)
from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse

from rowcall.api import ApiError
from rowcall.api_models import ErrorBody

# Management request bodies (a reprocess's row ids, an upload's metadata) are far smaller; API
# Gateway itself refuses past 10 MB.
MAX_BODY_BYTES = 1024 * 1024

_DESCRIPTIONS = {
    400: "Bad input: a parameter, the cursor or the body",
    401: "Missing or invalid credentials",
    404: "Unknown batch, or no such route",
    409: "The batch is not in a state that allows this",
    413: "Request body too large",
}


def error_responses(*statuses: int) -> dict[int, OpenAPIResponse]:
    """The OpenAPI responses of these error statuses, each in the contract's error shape."""
    return {
        status: {"description": _DESCRIPTIONS[status], "content": {"application/json": {"model": ErrorBody}}}
        for status in statuses
    }


def error_response(error: ApiError) -> Response[Any]:
    return Response(status_code=error.status, content_type="application/json", body=error.body())


def _fields(errors: Sequence[Any]) -> dict[str, str]:
    """Each failing input by name: `limit`, `row_ids.3`, `body` for the body as a whole."""
    fields: dict[str, str] = {}
    for error in errors:
        location = [str(part) for part in error.get("loc", ())]
        where = location[0] if location else "request"
        name = ".".join(location[1:]) or ("body" if where == "body" else where)
        fields.setdefault(name, _message(error))
    return fields


def _message(error: dict[str, Any]) -> str:
    # Powertools leaves `msg` out of its own answer so Python details do not leak; pydantic's
    # messages name the rule broken ("Input should be less than or equal to 100"), not the code.
    message = str(error.get("msg") or error.get("type") or "invalid")
    return message.removeprefix("Value error, ")


def _invalid_request(exc: RequestValidationError) -> Response[Any]:
    errors = list(exc.errors())
    in_body = any(tuple(e.get("loc", ()))[:1] == ("body",) for e in errors)
    code, what = ("invalid_body", "request body") if in_body else ("invalid_parameter", "request parameters")
    fields = _fields(errors)
    message = f"{what} not valid: " + "; ".join(f"{k}: {v}" for k, v in list(fields.items())[:5])
    return error_response(ApiError(400, code, message, fields))


def _unsupported_body(_: RequestUnsupportedContentType) -> Response[Any]:
    message = "the body must be JSON (content-type application/json)"
    return error_response(ApiError(400, "invalid_body", message, {"body": "not JSON"}))


def register(app: APIGatewayHttpResolver) -> None:
    app.exception_handler(ApiError)(error_response)
    app.exception_handler(RequestValidationError)(_invalid_request)
    app.exception_handler(RequestUnsupportedContentType)(_unsupported_body)

    @app.not_found
    def _no_route(_: Exception) -> Response[Any]:
        event = app.current_event
        return error_response(ApiError(404, "not_found", f"no route {event.http_method} {event.path}"))


def refused_before_parsing(event: dict[str, Any], limit: int = MAX_BODY_BYTES) -> dict[str, Any] | None:
    """The answer for a management request whose body is not to be parsed at all: 413 past the
    limit, 400 for a body that is not JSON or not declared JSON (Powertools would try to parse a form, and a
    malformed multipart type makes it fail with a 500); None otherwise. (The callback route
    keeps its own, smaller limit, checked after its token.)"""
    if str(event.get("rawPath", "")).startswith("/callbacks/"):
        return None
    body = event.get("body") or ""
    size = len(body) * 3 // 4 if event.get("isBase64Encoded") else len(body.encode())
    if size > limit:
        return _answer(ApiError(413, "payload_too_large", f"a request body is at most {limit} bytes"))
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    content_type = headers.get("content-type", "application/json").split(";")[0].strip().lower()
    if not body:
        return None
    if content_type != "application/json" and not content_type.endswith("+json"):
        message = "the body must be JSON (content-type application/json)"
        return _answer(ApiError(400, "invalid_body", message, {"body": f"content-type {content_type}"}))
    try:
        json.loads(base64.b64decode(body) if event.get("isBase64Encoded") else body)
    except ValueError:  # also bytes that are not UTF-8
        return _answer(ApiError(400, "invalid_body", "the body is not JSON", {"body": "not JSON"}))
    return None


def _answer(error: ApiError) -> dict[str, Any]:
    return {
        "statusCode": error.status,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(error.body()),
        "isBase64Encoded": False,
    }
