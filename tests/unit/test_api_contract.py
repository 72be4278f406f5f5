"""The API's document against its code, and its request validation in the contract's error shape
(no AWS needed: what is refused is refused before any domain object is built)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import pytest
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.openapi.params import Body
from openapi_spec_validator import validate

from rowcall.api_models import ReprocessRequest
from rowcall.routes import build_app
from rowcall.routes.errors import MAX_BODY_BYTES, refused_before_parsing
from rowcall.routes.openapi import document, render

from .conftest import template_resource

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "openapi.json"


class Context:
    function_name = "test"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:test"
    aws_request_id = "req-1"


def test_the_committed_document_is_what_the_code_generates() -> None:
    assert COMMITTED.read_text() == render(), (
        "docs/openapi.json is stale: regenerate it with `.venv/bin/python -m rowcall.routes.openapi`"
    )


def test_the_document_is_valid_openapi_3_1_with_contract_errors_only() -> None:
    doc = document()
    validate(doc)
    assert doc["openapi"].startswith("3.1")
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            assert "422" not in statuses, (method, path)
            for status in statuses - {"200", "202"}:
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
    callback = doc["paths"]["/callbacks/{batch_id}/{row_id}"]["post"]
    assert callback["security"] == [{}]  # its own token and signature, no authorizer
    assert {"bearer", "sigv4"} <= set(doc["components"]["securitySchemes"])


def test_every_route_of_the_template_is_documented_and_served() -> None:
    events = template_resource("WebhookFunction")["Events"]
    declared = {
        (e["Properties"]["Method"].lower(), e["Properties"]["Path"])
        for e in events.values()
        if e["Type"] == "HttpApi" and "{proxy+}" not in e["Properties"]["Path"]
    }
    documented = {(method, path) for path, ops in document()["paths"].items() for method in ops}
    assert declared == documented


def http_event(
    method: str,
    path: str,
    query: dict[str, str] | None = None,
    body: str | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": f"{method} {path}",
        "rawPath": path,
        "rawQueryString": urlencode(query or {}),
        "headers": {"host": "api.example", **(headers or {})},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "domainName": "api.example",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1"},
            "requestId": "r",
            "routeKey": f"{method} {path}",
            "stage": "$default",
            "timeEpoch": 0,
        },
        "isBase64Encoded": False,
    }
    if query:
        event["queryStringParameters"] = query
    if body is not None:
        event["body"] = body
    return event


def answer(app: APIGatewayHttpResolver, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = app.resolve(event, Context())  # type: ignore[arg-type]
    return response["statusCode"], json.loads(response["body"])


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "done"}, "status"),
        ({"cursor": "x" * 600}, "cursor"),
    ],
)
def test_bad_parameters_are_400_in_the_contract_shape(query: dict[str, str], field: str) -> None:
    status, body = answer(build_app(), http_event("GET", "/batches/b_1/rows", query))
    assert status == 400
    assert body["error"]["code"] == "invalid_parameter"
    assert set(body["error"]["fields"]) == {field}
    assert field in body["error"]["message"]


def test_an_unknown_route_is_404_in_the_contract_shape() -> None:
    status, body = answer(build_app(), http_event("GET", "/nothing/here"))
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = answer(build_app(), http_event("DELETE", "/batches"))
    assert status == 404 and body["error"]["code"] == "not_found"


def test_request_bodies_are_validated_by_the_layer_models_into_400s() -> None:
    """What the reprocess and upload handlers get by typing their body with these models."""
    app = build_app()

    # As the reprocess route takes it: the body may be left out (every failed row).
    @app.post("/probe/reprocess")
    def probe(request: Annotated[ReprocessRequest | None, Body()] = None) -> dict[str, Any]:
        return {"row_ids": request.row_ids if request else "all failed"}

    cases = {
        "not json": "row_ids",
        '{"row_ids": "0-1"}': "row_ids",
        '{"row_ids": [1, 2]}': "row_ids.0",
        '{"row_ids": []}': "row_ids",
        '{"rows": ["0-1"]}': "rows",
    }
    for raw, field in cases.items():
        status, body = answer(app, http_event("POST", "/probe/reprocess", body=raw))
        assert status == 400, raw
        assert body["error"]["code"] == "invalid_body", raw
        if raw != "not json":
            assert field in body["error"]["fields"], (raw, body)
    status, body = answer(app, http_event("POST", "/probe/reprocess", body='{"row_ids": ["0-1"]}'))
    assert (status, body) == (200, {"row_ids": ["0-1"]})
    status, body = answer(app, http_event("POST", "/probe/reprocess", body="{}"))
    assert (status, body) == (200, {"row_ids": None})  # all failed rows
    status, body = answer(app, http_event("POST", "/probe/reprocess"))
    assert (status, body) == (200, {"row_ids": "all failed"})
    status, body = answer(
        app, http_event("POST", "/probe/reprocess", body="row_ids=1", headers={"content-type": "text/plain"})
    )
    assert status == 400 and body["error"]["code"] == "invalid_body"


def test_a_management_body_over_the_limit_is_413_before_it_is_read() -> None:
    big = http_event("POST", "/batches/b_1/resume", body="x" * (MAX_BODY_BYTES + 1))
    refused = refused_before_parsing(big)
    assert refused is not None and refused["statusCode"] == 413
    assert json.loads(refused["body"])["error"]["code"] == "payload_too_large"
    assert refused_before_parsing(http_event("POST", "/batches/b_1/resume", body="{}")) is None
    # The callback route has its own limit, checked after its token.
    assert (
        refused_before_parsing(http_event("POST", "/callbacks/b/0-1", body="x" * (MAX_BODY_BYTES + 1)))
        is None
    )


@pytest.mark.parametrize(
    "content_type", ["multipart/form-data", "application/x-www-form-urlencoded", "text/csv"]
)
def test_a_management_body_that_is_not_json_is_400_before_it_is_parsed(content_type: str) -> None:
    """schemathesis found a multipart type without a boundary made Powertools' form parsing 500."""
    event = http_event(
        "POST", "/batches/b_1/reprocess", body='{"row_ids": []}', headers={"Content-Type": content_type}
    )
    refused = refused_before_parsing(event)
    assert refused is not None and refused["statusCode"] == 400
    assert json.loads(refused["body"])["error"]["code"] == "invalid_body"
    assert refused_before_parsing(http_event("POST", "/batches/b_1/reprocess", body="{}")) is None
    json_type = {"Content-Type": "application/json; charset=utf-8"}
    # Bytes that are not JSON (nor UTF-8) made Powertools' decoding fail with a 500.
    event = http_event(
        "POST", "/uploads", body=base64.b64encode(b"\x08^\xff\x18hn").decode(), headers=json_type
    )
    garbled = refused_before_parsing(event | {"isBase64Encoded": True})
    assert garbled is not None and json.loads(garbled["body"])["error"]["code"] == "invalid_body"
    assert refused_before_parsing(http_event("POST", "/uploads", body="{}", headers=json_type)) is None
