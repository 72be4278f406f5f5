"""HTTP API: run callbacks (HMAC token in the URL) and the management API (IAM at the gateway).

The routes live in `rowcall.routes` (one module per group), validated from their pydantic types."""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from rowcall.routes import build_app
from rowcall.routes.errors import refused_before_parsing
from rowcall.tracing import TRACED_MODULES

logger = Logger()
tracer = Tracer(patch_modules=TRACED_MODULES)
metrics = Metrics()
app = build_app()


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@tracer.capture_lambda_handler
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    refused = refused_before_parsing(event)
    if refused is not None:
        return refused
    response: dict[str, Any] = app.resolve(event, context)
    return response
