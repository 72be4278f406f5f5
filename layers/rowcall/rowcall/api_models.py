"""What the management API takes and answers (contract §4): the models the routes are typed with,
so request validation, response serialization and the OpenAPI document all come from here.
(POST /uploads has its own, `rowcall.uploads.UploadRequest` / `UploadGrant`.)"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rowcall.models import MAX_USD, BatchStatus, RowError, RowStatus

MAX_PAGE = 100
DEFAULT_PAGE = 20
# A reprocess names at most this many rows per request (a larger selection is several requests,
# or "all failed" by leaving row_ids out): each is read once to check it is a row of the batch,
# within the API's 30 s.
MAX_ROW_IDS = 1000


class ErrorDetail(BaseModel):
    code: str
    message: str
    fields: dict[str, str] | None = Field(default=None, description="what is wrong with each named input")


class ErrorBody(BaseModel):
    """Every error answer, whatever the status (the provider's shape)."""

    error: ErrorDetail


class SourceView(BaseModel):
    bucket: str
    key: str
    version: str | None


class ResultsView(BaseModel):
    csv_key: str | None
    errors_key: str | None


class NotificationView(BaseModel):
    status: Literal["none", "pending", "sending", "retrying", "delivered", "failed"]
    attempts: int
    delivered_at: str | None


class BatchView(BaseModel):
    batch_id: str
    name: str
    source: SourceView
    technique_id: str
    status: BatchStatus
    total_count: int | None = Field(description="null until ingest has counted the rows")
    completed_count: int
    failed_count: int
    pending_count: int | None
    rows_skipped: int
    created_at: str
    updated_at: str
    estimated_completion: str | None = Field(
        description="from the observed completion rate; null when unknown"
    )
    reason: str | None
    reason_detail: str | None = Field(description="what exactly went wrong or why it paused, in words")
    provider: Literal["flora", "replicate"]
    run_cost_usd: float | None = Field(
        description="the technique's run_cost; null until the pre-flight read it"
    )
    estimated_cost_usd: float | None = Field(
        description="run_cost_usd x rows that will run (rows to reuse excluded); null until counted"
    )
    charged_cost_usd: float | None = Field(
        description="sum of charged_cost of the batch's finished runs as the provider reported them"
    )
    max_cost_usd: float | None = Field(description="the budget; null = none")
    max_failed_percent: float | None = Field(description="the failure threshold; null = none")
    reused_count: int = Field(description="rows completed from an earlier batch's rows")
    outputs_saved_count: int
    outputs_failed_count: int
    duplicate_runs: int = Field(
        default=0,
        description="runs a provider without idempotency keys (Replicate) made twice for one row attempt, "
        "found and reported (their second outcomes change nothing)",
    )
    results: ResultsView
    notification: NotificationView


class BatchPage(BaseModel):
    items: list[BatchView]
    next_cursor: str | None


class ReusedFrom(BaseModel):
    batch_id: str
    row_id: str
    run_id: str


class RowView(BaseModel):
    row_id: str = Field(description="opaque, URL-safe")
    line: int = Field(description="1-based physical line of the row's first line in the file")
    key: str = Field(description="the key column's value, or the row's 1-based number")
    status: RowStatus
    run_id: str | None
    outputs: list[dict[str, Any]]
    error_code: str | None
    error_message: str | None
    attempt: int
    updated_at: str | None
    charged_cost_usd: float | None = Field(description="null until finished; 0 for a reused or failed row")
    reused_from: ReusedFrom | None
    saved_outputs: list[dict[str, Any]] = Field(
        description="copies in the bucket; [] when save-outputs is off"
    )


class RowPage(BaseModel):
    items: list[RowView]
    next_cursor: str | None = Field(
        description="null at the end; a page may hold fewer items than asked (even none) and still go on"
    )


class RowErrorPage(BaseModel):
    items: list[RowError]
    next_cursor: str | None


class Accepted(BaseModel):
    accepted: bool


class ReprocessRequest(BaseModel):
    """`POST /batches/{batch_id}/reprocess`: the rows to run again; left out, every failed row."""

    model_config = ConfigDict(extra="forbid")

    row_ids: list[str] | None = Field(default=None, min_length=1, max_length=MAX_ROW_IDS)


class ResumeRequest(BaseModel):
    """`POST /batches/{batch_id}/resume`: optionally a new budget first (approves `over_budget`)."""

    model_config = ConfigDict(extra="forbid")

    max_cost_usd: float | None = Field(default=None, ge=0, le=MAX_USD, allow_inf_nan=False)
