"""`GET /batches/{batch_id}/rows` and `GET /batches/{batch_id}/row-errors`."""

from typing import Annotated

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Query
from aws_lambda_powertools.metrics import MetricUnit

from rowcall.api_models import DEFAULT_PAGE, RowErrorPage, RowPage
from rowcall.compose import row_queries
from rowcall.models import RowStatus
from rowcall.routes.batches import Cursor, Limit
from rowcall.routes.errors import error_responses

router = Router()  # type: ignore[no-untyped-call]  # Powertools leaves __init__ unannotated
metrics = Metrics()


@router.get(
    "/batches/<batch_id>/rows",
    summary="A batch's rows in file order",
    description="Paged by file position: pages never skip or repeat a row while outcomes come in. "
    "A filtered page may hold fewer rows than asked (even none) and still carry a next_cursor.",
    tags=["rows"],
    responses={200: {"description": "A page of rows"}, **error_responses(400, 401, 404)},
)
def list_rows(
    batch_id: str,
    status: Annotated[RowStatus | None, Query(description="only rows with this status")] = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> RowPage:
    metrics.add_metric(name="ApiReads", unit=MetricUnit.Count, value=1)
    return row_queries().rows(batch_id, status=status, limit=limit, cursor=cursor)


@router.get(
    "/batches/<batch_id>/row-errors",
    summary="Rows skipped as invalid, in line order",
    tags=["rows"],
    responses={200: {"description": "A page of row errors"}, **error_responses(400, 401, 404)},
)
def list_row_errors(batch_id: str, limit: Limit = DEFAULT_PAGE, cursor: Cursor = None) -> RowErrorPage:
    metrics.add_metric(name="ApiReads", unit=MetricUnit.Count, value=1)
    return row_queries().row_errors(batch_id, limit=limit, cursor=cursor)
