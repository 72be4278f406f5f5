"""The HTTP API the webhook function serves, one small module per group of routes, validated from
their type hints (pydantic models in `rowcall.api_models`), which the OpenAPI document comes from."""

from __future__ import annotations

from http import HTTPStatus

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

from rowcall.routes import batches, callbacks, errors, rows, uploads


def build_app() -> APIGatewayHttpResolver:
    # A response that does not match its model is our bug: a 500, not Powertools' default 422.
    app = APIGatewayHttpResolver(
        enable_validation=True, response_validation_error_http_code=HTTPStatus.INTERNAL_SERVER_ERROR
    )
    errors.register(app)
    for module in (callbacks, batches, rows, uploads):
        app.include_router(module.router)
    return app
