"""`POST /uploads`: a presigned PUT under uploads/ for one CSV, bound to its size, text/csv and
its metadata (contract §3, §4)."""

from typing import Annotated

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body
from aws_lambda_powertools.metrics import MetricUnit

from rowcall.compose import uploads
from rowcall.routes.errors import error_responses
from rowcall.uploads import UploadGrant, UploadRequest

router = Router()  # type: ignore[no-untyped-call]  # Powertools leaves __init__ unannotated
metrics = Metrics()


@router.post(
    "/uploads",
    summary="A presigned PUT for one CSV under uploads/",
    description="PUT the file to upload_url with exactly `headers` (size, text/csv and the batch's "
    "metadata are signed) within 5 minutes; the upload starts one batch.",
    tags=["uploads"],
    responses={200: {"description": "The presigned upload"}, **error_responses(400, 401, 413)},
)
def create_upload(request: Annotated[UploadRequest, Body()]) -> UploadGrant:
    grant = uploads().grant(request)
    metrics.add_metric(name="UploadsGranted", unit=MetricUnit.Count, value=1)
    return grant
