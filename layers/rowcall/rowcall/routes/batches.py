"""`GET /batches`, `GET /batches/{batch_id}`, `POST /batches/{batch_id}/resume`."""

from typing import Annotated, Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.metrics import MetricUnit

from rowcall.api import ApiError, not_found
from rowcall.api_models import DEFAULT_PAGE, MAX_PAGE, BatchPage, BatchView
from rowcall.batch_actions import BatchNotFound, WrongState
from rowcall.compose import batch_actions, batch_queries
from rowcall.page_cursor import MAX_CURSOR_CHARS
from rowcall.routes.errors import error_responses

router = Router()  # type: ignore[no-untyped-call]  # Powertools leaves __init__ unannotated
metrics = Metrics()

Limit = Annotated[int, Query(ge=1, le=MAX_PAGE, description="items per page")]
Cursor = Annotated[
    str | None, Query(min_length=1, max_length=MAX_CURSOR_CHARS, description="next_cursor of the page before")
]


@router.get(
    "/batches",
    summary="Batches, newest first",
    tags=["batches"],
    responses={200: {"description": "A page of batches"}, **error_responses(400, 401)},
)
def list_batches(limit: Limit = DEFAULT_PAGE, cursor: Cursor = None) -> BatchPage:
    metrics.add_metric(name="ApiReads", unit=MetricUnit.Count, value=1)
    return BatchPage.model_validate(batch_queries().list(limit, cursor))


@router.get(
    "/batches/<batch_id>",
    summary="One batch",
    tags=["batches"],
    responses={200: {"description": "The batch"}, **error_responses(401, 404)},
)
def get_batch(batch_id: str) -> BatchView:
    metrics.add_metric(name="ApiReads", unit=MetricUnit.Count, value=1)
    return BatchView.model_validate(batch_queries().get(batch_id))


@router.post(
    "/batches/<batch_id>/resume",
    summary="Resume a paused batch where it stopped",
    tags=["actions"],
    status_code=202,
    responses={202: {"description": "Resumed"}, **error_responses(401, 404, 409, 413)},
)
def resume_batch(batch_id: str) -> BatchView:
    try:
        batch = batch_actions().resume(batch_id)
    except BatchNotFound:
        raise not_found(batch_id) from None
    except WrongState as wrong:
        raise ApiError(409, "batch_not_paused", str(wrong)) from None
    metrics.add_metric(name="BatchesResumed", unit=MetricUnit.Count, value=1)
    view: dict[str, Any] = batch_queries().view(batch)
    return BatchView.model_validate(view)
