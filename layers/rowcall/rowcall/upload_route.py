"""`POST /uploads` as a Powertools router, so it joins whichever app serves the management API."""

from __future__ import annotations

import base64
import json
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.metrics import MetricUnit

from rowcall.api import ApiError
from rowcall.compose import uploads
from rowcall.uploads import parse_request

router = Router()  # type: ignore[no-untyped-call]  # Powertools leaves __init__ unannotated
metrics = Metrics()


@router.post("/uploads")
def create_upload() -> dict[str, Any]:
    """A presigned PUT under uploads/ for one CSV, bound to its size, text/csv and its metadata."""
    event = router.current_event
    raw = event.body or ""
    try:
        body = json.loads(base64.b64decode(raw) if event.is_base64_encoded else raw or "null")
    except ValueError:
        raise ApiError(400, "invalid_body", "the body is not JSON") from None
    grant = uploads().grant(parse_request(body))
    metrics.add_metric(name="UploadsGranted", unit=MetricUnit.Count, value=1)
    return grant.model_dump()
