"""Pydantic models for every boundary: metadata, queue messages, provider runs, stored state."""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class BatchStatus(StrEnum):
    VALIDATING = "validating"
    INGESTING = "ingesting"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    PARTIAL = "partial"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_BATCH_STATUSES


TERMINAL_BATCH_STATUSES = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.PARTIAL, BatchStatus.FAILED, BatchStatus.CANCELED}
)
# States in which rows may still be started and callbacks may still finish the batch.
OPEN_BATCH_STATUSES = frozenset({BatchStatus.INGESTING, BatchStatus.RUNNING})


class RowStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"


class InputType(StrEnum):
    TEXT = "text"
    IMAGE_URL = "imageUrl"
    VIDEO_URL = "videoUrl"
    AUDIO_URL = "audioUrl"
    DOCUMENT_URL = "documentUrl"


# Inputs whose value must be an absolute https URL (contract §4: `invalid_input_url`).
URL_INPUT_TYPES = frozenset(
    {InputType.IMAGE_URL, InputType.VIDEO_URL, InputType.AUDIO_URL, InputType.DOCUMENT_URL}
)

ProviderName = Literal["flora", "replicate"]
PROVIDERS: tuple[ProviderName, ...] = ("flora", "replicate")

# Money in the ledger is whole micro-USD: DynamoDB ADDs and compares them exactly, where sums of
# float USD would drift. USD floats only at the API and CSV boundary.
MICRO_USD = 1_000_000
# The largest budget taken (a billion USD): far past any batch, and a micro-USD count that stays
# an exact integer everywhere (DynamoDB numbers, JSON, floats up to 2**53).
MAX_USD = 1_000_000_000


def to_micro_usd(usd: float) -> int:
    return round(usd * MICRO_USD)


def to_usd(micro: int | None) -> float | None:
    return None if micro is None else micro / MICRO_USD


def usd_text(usd: float) -> str:
    """USD as a CSV cell or a line of text: exact to the micro-dollar, no trailing zeros."""
    return f"{usd:.6f}".rstrip("0").rstrip(".")


class RunInput(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str = Field(min_length=1)
    type: str = Field(min_length=1)
    value: str


class SourceObject(BaseModel):
    model_config = ConfigDict(frozen=True)

    bucket: str
    key: str
    version: str | None = None


class BatchSpec(BaseModel):
    """What an upload's metadata asks for (contract §3), validated once at ingest."""

    model_config = ConfigDict(frozen=True)

    technique_id: str = Field(min_length=1, max_length=200)
    key_column: str | None = None
    input_columns: tuple[str, ...] | None = None
    input_types: dict[str, str] = Field(default_factory=dict)
    static_inputs: tuple[RunInput, ...] = ()
    on_done_url: str | None = None
    name: str
    # Contract §3's cost and provider keys; defaults come from the stack's parameters.
    max_cost_usd: float | None = Field(default=None, ge=0, le=MAX_USD)
    reuse: bool = True
    save_outputs: bool = True
    max_failed_percent: float | None = Field(default=None, ge=0, le=100)
    provider: ProviderName = "flora"

    @field_validator("on_done_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise ValueError(f"{value!r} is not a URL") from None
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL with a host")
        return value


class Notification(BaseModel):
    status: Literal["none", "pending", "sending", "retrying", "delivered", "failed"] = "none"
    attempts: int = 0
    delivered_at: str | None = None
    # Delivery bookkeeping, not shown to API users.
    lease_until: int | None = None
    results_written: bool = False
    sns_published: bool = False


class ResultsLocation(BaseModel):
    csv_key: str | None = None
    errors_key: str | None = None


class ChunkPlan(BaseModel):
    """A byte range of the source holding `rows` valid rows; records are 1-based data record numbers."""

    model_config = ConfigDict(frozen=True)

    index: int = Field(ge=0)
    start: int = Field(ge=0)
    end: int = Field(gt=0)
    first_record: int = Field(ge=1)
    first_line: int = Field(ge=1)
    rows: int = Field(ge=1)


class ChunkCursor(BaseModel):
    """Where a chunk's next delivery resumes: every record before `record` was started, refused
    or already known by the delivery that wrote it. `offset` and `line` are that record's."""

    model_config = ConfigDict(frozen=True)

    record: int = Field(ge=1)
    offset: int = Field(ge=0)
    line: int = Field(ge=1)


class ChunkMessage(BaseModel):
    """The chunk queue's message: small whatever the row width, the worker reads the range itself."""

    model_config = ConfigDict(frozen=True)

    batch_id: str
    chunk: ChunkPlan
    # Set on a chunk woken from the waiting list: where to resume, and since when it waits (a
    # chunk woken that finds no slot keeps its place in the list).
    cursor: ChunkCursor | None = None
    waiting_since_ms: int | None = None


class DoneMessage(BaseModel):
    """The done queue's message: deliver the on-done of one finish of a batch."""

    model_config = ConfigDict(frozen=True)

    batch_id: str
    finish_seq: int = Field(ge=1)
    # Which delivery attempt this message is for: a stale or duplicate message for an attempt
    # that has already happened finds the notification moved on and is dropped.
    attempt: int = Field(default=0, ge=0)
    # How many times a delivery of this attempt failed mid-way (an AWS error after the claim)
    # and handed itself back: bounds the quick retries before SQS's own redelivery takes over.
    requeued: int = Field(default=0, ge=0)


class RowError(BaseModel):
    model_config = ConfigDict(frozen=True)

    line: int = Field(ge=1)
    code: str
    message: str


class RunOutput(BaseModel):
    model_config = ConfigDict(extra="allow")

    output_id: str | None = None
    type: str | None = None
    url: str | None = None


class RunObject(BaseModel):
    """The provider's run, as create, GET and list return it (contract §5; `@flora-ai/flora`'s
    RunRetrieveResponse: times are unix-ms numbers, optional fields absent)."""

    model_config = ConfigDict(extra="allow")

    run_id: str = Field(min_length=1)
    status: str
    progress: float | None = None
    created_at: int | float | str | None = None
    started_at: int | float | str | None = None
    completed_at: int | float | str | None = None
    outputs: list[RunOutput] = Field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    charged_cost: float | None = None
    poll_url: str | None = None

    @property
    def terminal_status(self) -> RowStatus | None:
        if self.status in ("completed", "succeeded"):
            return RowStatus.COMPLETED
        if self.status in ("failed", "canceled", "cancelled", "error"):
            return RowStatus.FAILED
        return None


class RunWebhookData(BaseModel):
    """What a run webhook says of the run: its terminal state, never its outputs."""

    model_config = ConfigDict(extra="allow", frozen=True)

    run_id: str = Field(min_length=1, max_length=200)
    run_type: str
    workspace_id: str
    status: Literal["completed", "failed"]
    error_code: str | None = None
    error_message: str | None = None


class RunWebhook(BaseModel):
    """FLORA's webhook envelope (contract §5), verified by its `Flora-Signature` before it is read."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str = Field(min_length=1, max_length=200)
    type: Literal["run.completed", "run.failed"]
    api_version: str
    created_at: int
    data: RunWebhookData

    @model_validator(mode="after")
    def _type_matches_status(self) -> RunWebhook:
        if self.type != f"run.{self.data.status}":
            raise ValueError(f"event type {self.type} disagrees with run status {self.data.status}")
        return self


class FinishedRun(BaseModel):
    """The finished-run queue's message: a run's terminal webhook, authenticated, to be recorded
    (a completed run's outputs are fetched first: the webhook does not carry them)."""

    model_config = ConfigDict(frozen=True)

    batch_id: str
    chunk: int = Field(ge=0)
    record: int = Field(ge=1)
    attempt: int = Field(ge=1)
    run_id: str = Field(min_length=1)
    status: Literal[RowStatus.COMPLETED, RowStatus.FAILED]
    error_code: str | None = None
    error_message: str | None = None
    # What the row asked (`rowcall.reuse`), from its callback token: a completion leaves it behind.
    content_key: str | None = None
    # The finished run itself where the provider's webhook is one (Replicate's prediction, its
    # outputs mapped): the recorder asks nothing. None for FLORA, whose envelope has no outputs.
    run: RunObject | None = None

    @model_serializer(mode="wrap")
    def _without_absent_run(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """FLORA's messages stay as they were: `run` only where a webhook carried one."""
        dumped: dict[str, Any] = handler(self)
        if dumped.get("run", 0) is None:
            del dumped["run"]
        return dumped


class CreateRunRequest(BaseModel):
    inputs: list[RunInput]
    mode: Literal["async"] = "async"
    callback_url: str
    idempotency_key: str


class RowOutcome(BaseModel):
    """A row's terminal state, from a callback or from a permanent provider refusal."""

    model_config = ConfigDict(frozen=True)

    status: Literal[RowStatus.COMPLETED, RowStatus.FAILED]
    run_id: str | None = None
    outputs: list[dict[str, Any]] = Field(default_factory=list)
    error_code: str | None = None
    error_message: str | None = None
    # What the provider charged for the run (its `charged_cost`); 0 for a failed run.
    charged_cost_micro_usd: int | None = None
    # Completed from an earlier row with the same content key (`rowcall.reuse`), not run.
    reused_from: dict[str, str] | None = None


class ReprocessPlan(BaseModel):
    """A reprocess as the batch item keeps it until the next one: which chunks reopen, with how
    many of their completed and failed rows rerun (what the counts leave out until each chunk has
    reopened), and the named rows per chunk (None: every failed row of those chunks)."""

    seq: int = Field(ge=1)
    chunks: dict[str, list[int]]
    rows: dict[str, list[int]] | None = None

    def pending_reopen(self, counter: ChunkCounter) -> bool:
        """Still settled from the earlier finish, not yet reopened by a worker."""
        return str(counter.index) in self.chunks and counter.reopened_seq < self.seq


class RowRules(BaseModel):
    """What each row's cells must hold beyond the header's width, decided by the pre-flight from
    the technique (contract §4): ingest, workers, row listing and results skip the same rows."""

    model_config = ConfigDict(frozen=True)

    required: tuple[str, ...] = ()
    """Columns of inputs the technique requires: an empty cell is `missing_input`."""
    urls: tuple[str, ...] = ()
    """Columns of URL-typed inputs: a cell that is not an absolute https URL is `invalid_input_url`."""


class BatchState(BaseModel):
    """The batch item as stored. Counters of finished rows live in chunk items until settled."""

    batch_id: str
    name: str
    source: SourceObject
    spec: BatchSpec
    status: BatchStatus
    header: list[str] | None = None
    reason: str | None = None
    reason_message: str | None = None
    total_count: int | None = None
    chunk_count: int | None = None
    rows_skipped: int = 0
    chunks_enqueued: int = 0
    chunks_settled: int = 0
    completed_count: int = 0
    failed_count: int = 0
    created_at: str
    updated_at: str
    running_at: str | None = None
    # The completion rate is measured from here: since it last started running (first run,
    # resume, reprocess), with `rate_base` rows already finished at that moment.
    rate_since: str | None = None
    rate_base: int = 0
    finished_at: str | None = None
    finish_seq: int = 0
    notification: Notification = Field(default_factory=Notification)
    results: ResultsLocation = Field(default_factory=ResultsLocation)
    # Canceled while rows were in flight: set by cancel, removed by the finish that sends its on-done.
    cancel_pending: bool = False
    canceled_at: str | None = None
    reprocess: ReprocessPlan | None = None
    # Cost (contract §4), in micro-USD: the technique's price per run (from the pre-flight), the
    # estimate once rows are counted, the budget (`resume {"max_cost_usd"}` changes it), and the
    # charges of settled chunks (chunks still open hold theirs on their counters).
    run_cost_micro_usd: int | None = None
    estimated_cost_micro_usd: int | None = None
    max_cost_micro_usd: int | None = None
    charged_cost_micro_usd: int = 0
    reused_count: int = 0
    outputs_saved_count: int = 0
    outputs_failed_count: int = 0
    # Runs made twice for one row attempt by a provider without idempotency keys (Replicate),
    # found and reported rather than prevented (`rowcall.runs`).
    duplicate_runs: int = 0
    row_rules: RowRules | None = None
    # The failure threshold's counts (kept only for a batch with one), and what they were at the
    # last resume: it judges the rows finished since.
    threshold_finished: int = 0
    threshold_failed: int = 0
    threshold_finished_base: int = 0
    threshold_failed_base: int = 0

    @property
    def run_cost_usd(self) -> float | None:
        return to_usd(self.run_cost_micro_usd)

    @property
    def max_cost_usd(self) -> float | None:
        return to_usd(self.max_cost_micro_usd)

    @property
    def counts_settled(self) -> bool:
        """The batch item's own counts are the batch's (finished, nothing left to count)."""
        return self.status in (BatchStatus.COMPLETED, BatchStatus.PARTIAL) or (
            self.status is BatchStatus.CANCELED and not self.cancel_pending
        )


class ChunkCounter(BaseModel):
    """A chunk's counter item. `completed`/`failed` are added per batch of outcomes and only say
    when to recount; a settled chunk's counts are the recount's."""

    model_config = ConfigDict(extra="ignore")

    index: int
    rows: int
    completed: int = 0
    failed: int = 0
    started: int = 0
    saving: int = 0
    """Completed rows whose outputs are still being saved (a hint: `add_outcomes`)."""
    settled: bool = False
    created_at: float | None = None
    last_outcome_at: float | None = None
    last_start_at: float | None = None
    worker_until: int | None = None
    reopened_seq: int = 0
    # The chunk's runs as its deliveries counted them at their release (see
    # ChunkLedger.release); `last_run_at`: the last release that had started runs.
    last_run_at: float | None = None
    # Charges of the chunk's finished runs, added with the counts (a hint like them; the settle
    # recounts them from the rows).
    charged_micro_usd: int = 0
    # Reused rows (`reuse`) this chunk's last settle counted into its batch's `reused_count`.
    reused: int = 0

    @property
    def finished(self) -> int:
        return self.completed + self.failed

    @property
    def runs_maybe_out(self) -> bool:
        """True while the counts say a run of the chunk is still out. Only a hint for skipping a
        read: long counts (a repeated `ADD`) make it True too long (the safety net's sweep of
        the batch does what the skipped read would have); short ones make it False too soon
        (a read more, which checks the start pages and rows itself)."""
        return self.finished < self.started

    def held(self, now: float) -> bool:
        """A worker's lease on the chunk has not run out."""
        return self.worker_until is not None and self.worker_until >= now


class RowState(BaseModel):
    """A row the ledger knows: started (running) or finished. Rows not stored yet are pending."""

    batch_id: str
    chunk: int
    record: int
    status: RowStatus
    line: int | None = None
    key: str | None = None
    attempt: int = 1
    run_id: str | None = None
    outputs: list[dict[str, Any]] = Field(default_factory=list)
    save_pending: bool = False
    """Its outputs are being saved (contract section 7); its chunk does not settle meanwhile."""
    error_code: str | None = None
    error_message: str | None = None
    updated_at: str | None = None
    # Set when a reprocess reopened the row (its status back to pending, its attempt one more).
    reopen_seq: int = 0
    reopened_at: float | None = None
    charged_cost_micro_usd: int | None = None
    # A row completed from an earlier batch's row (`reuse`): {"batch_id", "row_id", "run_id"}.
    reused_from: dict[str, str] | None = None
    # Copies of the outputs in the bucket (`save-outputs`), one entry per output.
    saved_outputs: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in (RowStatus.COMPLETED, RowStatus.FAILED)
