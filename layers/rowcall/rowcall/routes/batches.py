"""`GET /batches`, `GET /batches/{batch_id}`, and the actions: `POST /batches/{batch_id}/resume`,
`/cancel`, `/reprocess`."""

from collections.abc import Callable
from typing import Annotated, Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Body, Query
from aws_lambda_powertools.metrics import MetricUnit

from rowcall.api import ApiError, not_found
from rowcall.api_models import DEFAULT_PAGE, MAX_PAGE, BatchPage, BatchView, ReprocessRequest, ResumeRequest
from rowcall.batch_actions import BatchNotFound, UnknownRows, WrongState
from rowcall.compose import batch_actions, batch_queries
from rowcall.models import BatchState
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
    summary="Resume a paused batch where it stopped; max_cost_usd sets its budget first",
    tags=["actions"],
    status_code=202,
    responses={202: {"description": "Resumed"}, **error_responses(400, 401, 404, 409, 413)},
)
def resume_batch(batch_id: str, request: Annotated[ResumeRequest | None, Body()] = None) -> BatchView:
    budget = request.max_cost_usd if request is not None else None
    return _action(batch_id, lambda: batch_actions().resume(batch_id, budget), "BatchesResumed")


@router.post(
    "/batches/<batch_id>/cancel",
    summary="Cancel a batch: nothing new starts, runs in flight finish, one batch.canceled on-done",
    tags=["actions"],
    status_code=202,
    responses={202: {"description": "Canceled"}, **error_responses(401, 404, 409, 413)},
)
def cancel_batch(batch_id: str) -> BatchView:
    return _action(batch_id, lambda: batch_actions().cancel(batch_id), "BatchesCanceled")


@router.post(
    "/batches/<batch_id>/reprocess",
    summary="Run the named rows again (all failed rows when none are named); one more on-done",
    tags=["actions"],
    status_code=202,
    responses={202: {"description": "Reopened"}, **error_responses(400, 401, 404, 409, 413)},
)
def reprocess_batch(batch_id: str, request: Annotated[ReprocessRequest | None, Body()] = None) -> BatchView:
    row_ids = request.row_ids if request is not None else None
    return _action(batch_id, lambda: batch_actions().reprocess(batch_id, row_ids), "BatchesReprocessed")


def _action(batch_id: str, act: Callable[[], BatchState], metric: str) -> BatchView:
    """The domain's refusals in the API's error shape; the batch as the action left it."""
    try:
        batch = act()
    except BatchNotFound:
        raise not_found(batch_id) from None
    except WrongState as wrong:
        raise ApiError(409, wrong.code, str(wrong)) from None
    except UnknownRows as unknown:
        fields = {row_id: "not a row of this batch" for row_id in unknown.row_ids}
        raise ApiError(400, "unknown_rows", str(unknown), fields) from None
    metrics.add_metric(name=metric, unit=MetricUnit.Count, value=1)
    view: dict[str, Any] = batch_queries().view(batch)
    return BatchView.model_validate(view)
