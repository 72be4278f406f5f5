"""The OpenAPI 3.1 document of the management and callback API, generated from the routes and
the models they are typed with. `python -m rowcall.routes.openapi [PATH]` writes it (default:
docs/openapi.json); a unit test fails when the committed one differs from what this makes."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from aws_lambda_powertools.event_handler.openapi.models import APIKey, APIKeyIn, HTTPBearer

from rowcall.api_models import ErrorBody
from rowcall.flora_signature import SIGNATURE_HEADER
from rowcall.models import RunWebhook
from rowcall.routes import build_app

TITLE = "rowcall"
VERSION = "1"
DESCRIPTION = (
    "Management API of a rowcall stack (contract §4) and the callback route its run provider posts "
    "run webhooks to (§5). Locally (`rowcall up`) every management route takes "
    "`Authorization: Bearer <api_token>` from stack.json; on AWS the HTTP API uses IAM: requests are "
    "signed with SigV4 (service `execute-api`), and API Gateway answers an unsigned one with 403. "
    "The callback route has no authorizer: its URL's token and the Flora-Signature header are checked."
)
_REF = "#/components/schemas/"


def document() -> dict[str, Any]:
    app = build_app()
    schema = app.get_openapi_schema(
        title=TITLE,
        version=VERSION,
        description=DESCRIPTION,
        security_schemes={
            "bearer": HTTPBearer(description="local stack: api_token from stack.json"),
            "sigv4": APIKey(
                name="Authorization",
                in_=APIKeyIn.header,
                description="AWS: SigV4-signed request (service execute-api), IAM-authorized",
            ),
        },
        security=[{"bearer": []}, {"sigv4": []}],
    )
    doc: dict[str, Any] = json.loads(schema.model_dump_json(by_alias=True, exclude_none=True))
    _contract_errors_only(doc)
    _callback_body(doc)
    return doc


def _contract_errors_only(doc: dict[str, Any]) -> None:
    """Powertools documents its own 422 (turned into the contract's 400 here) and the 500 of a
    response failing its model (a bug, not an answer): neither is part of the API."""
    for operations in doc["paths"].values():
        for operation in operations.values():
            for status in ("422", "500"):
                operation["responses"].pop(status, None)
    for name in ("HTTPValidationError", "ValidationError", "ResponseValidationError"):
        doc["components"]["schemas"].pop(name, None)
    schemas = doc["components"]["schemas"]
    schemas.setdefault("ErrorBody", ErrorBody.model_json_schema(ref_template=_REF + "{model}"))


def _callback_body(doc: dict[str, Any]) -> None:
    """The callback reads its token and its body itself (a bad token is a 401 before anything is
    parsed; the signature covers the body's exact bytes), so the envelope model it parses, the
    token and the signature header are documented here."""
    body = RunWebhook.model_json_schema(ref_template=_REF + "{model}")
    doc["components"]["schemas"].update(body.pop("$defs", {}))
    doc["components"]["schemas"]["RunWebhook"] = body
    operation = doc["paths"]["/callbacks/{batch_id}/{row_id}"]["post"]
    operation["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": _REF + "RunWebhook"}}},
    }
    operation.setdefault("parameters", []).extend(
        [
            {
                "name": "token",
                "in": "query",
                "required": False,
                "description": "the callback URL's own token (a missing or wrong one is 401)",
                "schema": {"type": "string"},
            },
            {
                "name": SIGNATURE_HEADER,
                "in": "header",
                "required": False,
                "description": "t=<unix seconds>,v1=<hex HMAC-SHA256 of '{t}.{raw body}'>",
                "schema": {"type": "string"},
            },
        ]
    )


def render() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> None:
    target = Path(argv[0] if argv else "docs/openapi.json")
    target.write_text(render())
    print(f"wrote {target}")


if __name__ == "__main__":
    main(sys.argv[1:])
