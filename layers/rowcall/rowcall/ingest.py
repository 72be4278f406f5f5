"""Ingest: one uploaded CSV becomes one batch whose rows are on the chunk queue.

Pass 1 (`validating`) streams the object once and decides everything: header, row errors, row
count, chunk byte ranges. Nothing reaches the queue for a file that is rejected. Pass 2
(`ingesting`) sends the chunks ten at a time, checkpointing how many were sent, so a retry of a
cut-off invocation resumes there instead of sending rows twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError
from pydantic import BaseModel, ConfigDict

from rowcall.csvsplit import CsvEncodingError, CsvRecord, scan_records, split_lines, validate_width
from rowcall.finishing import BatchFinisher
from rowcall.identity import batch_id_for
from rowcall.input_checks import (
    InputPlan,
    InputsMismatch,
    TechniqueCache,
    TechniqueDefinition,
    TechniqueRefused,
    plan_inputs,
    row_checker,
)
from rowcall.ledger import Ledger, ReuseLedger
from rowcall.ledger.batches import Preflight
from rowcall.metadata import (
    InvalidHeader,
    InvalidMetadata,
    SpecDefaults,
    check_header,
    row_inputs,
    spec_from_metadata,
)
from rowcall.models import (
    BatchSpec,
    BatchState,
    BatchStatus,
    ChunkMessage,
    ChunkPlan,
    RowError,
    SourceObject,
    iso,
    to_micro_usd,
    usd_text,
    utcnow,
)
from rowcall.outbound import DestinationPolicy
from rowcall.providers.port import ProviderConnector
from rowcall.queues import SEND_BATCH_LIMIT, ChunkQueue
from rowcall.reuse import content_key, reused_outcome
from rowcall.source import head_source, read_source

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = Logger(child=True)

ROW_ERROR_FLUSH = 100
# Only objects under this prefix are uploads. The S3 notification filters on it too; checking
# here as well means a widened filter can never make the stack ingest its own results/ files.
UPLOADS_PREFIX = "uploads/"


class ObjectCreated(BaseModel):
    """One S3 ObjectCreated record, reduced to what identifies and sizes the object."""

    model_config = ConfigDict(frozen=True)

    bucket: str
    key: str
    version_id: str | None = None
    sequencer: str | None = None
    size: int | None = None


class IngestLimits(BaseModel):
    model_config = ConfigDict(frozen=True)

    max_rows: int
    max_bytes: int
    chunk_rows: int
    default_technique_id: str
    defaults: SpecDefaults = SpecDefaults()


class FileRejected(Exception):
    """The whole file is refused; `reason` is the batch's reason code (contract §4)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class _Scan:
    header: list[str]
    chunks: list[ChunkPlan] = field(default_factory=list)
    rows_skipped: int = 0
    inputs: InputPlan | None = None
    # Rows an earlier completed row will complete (`reuse`): they run nothing and cost nothing.
    reusable: int = 0

    @property
    def rows(self) -> int:
        return sum(c.rows for c in self.chunks)


# BatchGetItem takes at most 100 keys a request.
REUSE_LOOKUP_GROUP = 100


class _ReusableRows:
    """Counts, while pass 1 streams, the rows the workers will complete from earlier ones: each
    good row's content key (as `rowcall.runs` computes it), looked up 100 at a time."""

    def __init__(self, ledger: ReuseLedger, header: list[str], spec: BatchSpec, now: float) -> None:
        self._ledger, self._header, self._spec, self._now = ledger, header, spec, now
        self._keys: list[str] = []
        self.count = 0

    def add(self, fields: list[str]) -> None:
        inputs = row_inputs(self._header, fields, self._spec)
        self._keys.append(content_key(self._spec.provider, self._spec.technique_id, inputs))
        if len(self._keys) == REUSE_LOOKUP_GROUP:
            self.flush()

    def flush(self) -> None:
        if not self._keys:
            return
        sources = self._ledger.find(self._keys, now=self._now)
        self.count += sum(1 for k in self._keys if k in sources and reused_outcome(sources[k]) is not None)
        self._keys = []


# Without a provider to ask (unit tests of the file handling), every technique is open and free.
_OPEN_TECHNIQUE = TechniqueDefinition(technique_id="-", inputs=[], run_cost=None)


# What a read of a deleted upload answers. The role may read uploads/* and not s3:ListBucket, and to
# such a caller S3 answers a missing key or version 403, not 404 (S3 API reference, HeadObject and
# GetObject, "Permissions"); under uploads/, which the template lets it read, that 403 means gone.
# Granting ListBucket instead would let ingest list the whole bucket (results too) to learn what
# this HEAD already tells. The cost: a role that lost its read would log every upload "gone"
# (with the code) rather than fail it - test_least_privilege runs ingest on its role.
_GONE_CODES = ("404", "NoSuchKey", "NoSuchVersion", "403", "AccessDenied")


class Ingestor:
    def __init__(
        self,
        *,
        s3: S3Client,
        ledger: Ledger,
        chunk_queue: ChunkQueue,
        finisher: BatchFinisher,
        limits: IngestLimits,
        destinations: DestinationPolicy | None = None,
        provider: ProviderConnector | None = None,
        techniques: TechniqueCache | None = None,
        replicate: ProviderConnector | None = None,
    ) -> None:
        self._s3 = s3
        self._batches = ledger.batches
        self._reuse = ledger.reuse
        self._intents = ledger.upload_intents
        self._row_errors = ledger.row_errors
        self._chunks = chunk_queue
        self._finisher = finisher
        self._limits = limits
        # Where an on-done URL may point; the strict default refuses plain http and loopback.
        self._destinations = destinations or DestinationPolicy()
        self._provider = provider
        self._techniques = techniques or TechniqueCache()
        # Replicate's, when this stack has its token (contract §5b); its techniques cached apart.
        self._replicate = replicate
        self._replicate_techniques = TechniqueCache()

    def ingest(self, created: ObjectCreated) -> BatchState | None:
        """Make (or resume) the batch of one uploaded object; None when the object is gone or is
        not an upload (outside `uploads/`, or a console folder marker)."""
        if not created.key.startswith(UPLOADS_PREFIX) or created.key.endswith("/"):
            logger.info("not an upload, ignored", extra={"key": created.key})
            return None
        opened = self._open(created)
        if opened is None:
            return None
        batch, size, spec_error = opened
        if batch.status is BatchStatus.VALIDATING:
            try:
                if spec_error is not None:
                    raise FileRejected("invalid_metadata", str(spec_error))
                if batch.spec.provider == "replicate" and self._replicate is None:
                    raise FileRejected(
                        "provider_unauthorized",
                        "provider: replicate is not configured on this stack (no Replicate token or "
                        "adapter); use provider flora",
                    )
                self._check_budget_supported(batch)
                if size > self._limits.max_bytes:  # decided from HEAD: not one byte is read
                    limit = self._limits.max_bytes
                    raise FileRejected("file_too_large", f"the file is {size:,} bytes; at most {limit:,}")
                # Before one byte of the file is read: a technique that does not exist or a key
                # the provider refuses fails the batch without a run. A provider that does not
                # answer raises: the invocation fails and is retried, the batch waits.
                definition = self._technique(batch.spec.technique_id, batch.spec.provider)
                scan = self._scan(batch, definition)
            except FileRejected as rejected:
                return self._reject(batch, rejected)
            if not self._batches.record_plan(
                batch.batch_id,
                header=scan.header,
                chunks=scan.chunks,
                rows_skipped=scan.rows_skipped,
                preflight=self._preflight(batch, definition, scan),
            ):
                return self._batches.get(batch.batch_id)  # another delivery got there first
            if self._held_for_budget(batch.batch_id):
                return self._batches.get(batch.batch_id)
            self._enqueue(batch.batch_id, scan.chunks, already_sent=0)
        elif batch.status is BatchStatus.INGESTING:
            if batch.chunks_enqueued == 0 and self._held_for_budget(batch.batch_id):
                return self._batches.get(batch.batch_id)
            plan = self._batches.chunk_plan(batch.batch_id)
            self._enqueue(batch.batch_id, plan, already_sent=batch.chunks_enqueued)
        else:
            # Seen before. The delivery that moved it on may have died before finishing it (an
            # empty batch) or before handing over its on-done: both are picked up here, once.
            self._finisher.finish_if_done(batch.batch_id)
            return self._batches.get(batch.batch_id)
        if self._batches.mark_running(batch.batch_id):
            logger.info("batch running", extra={"batch_id": batch.batch_id})
        self._finisher.finish_if_done(batch.batch_id)
        return self._batches.get(batch.batch_id)

    def _open(self, created: ObjectCreated) -> tuple[BatchState, int, InvalidMetadata | None] | None:
        """The batch of this object version: new, or as an earlier delivery left it."""
        try:
            head = head_source(
                self._s3, SourceObject(bucket=created.bucket, key=created.key, version=created.version_id)
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in _GONE_CODES:
                logger.warning(
                    "uploaded object is gone",
                    extra={"key": created.key, "version": created.version_id, "code": code},
                )
                return None
            raise
        version = created.version_id or head.get("VersionId")
        source = SourceObject(
            bucket=created.bucket, key=created.key, version=None if version == "null" else version
        )
        # What POST /uploads granted this key with; the object's own metadata (an upload made
        # straight to S3 with x-amz-meta-*) wins where both name a key.
        granted = self._intents.recall(created.key, now_epoch=utcnow().timestamp()) or {}
        metadata = granted | {k.lower(): v for k, v in head.get("Metadata", {}).items()}
        spec_error: InvalidMetadata | None = None
        try:
            spec = spec_from_metadata(
                metadata,
                key=created.key,
                default_technique_id=self._limits.default_technique_id,
                destinations=self._destinations,
                defaults=self._limits.defaults,
            )
        except InvalidMetadata as exc:
            spec_error = exc
            spec = BatchSpec(
                technique_id=self._limits.default_technique_id, name=metadata.get("batch-name") or created.key
            )
        now = iso(utcnow())
        batch, created_now = self._batches.open(
            BatchState(
                batch_id=batch_id_for(created.bucket, created.key, source.version, created.sequencer),
                name=spec.name,
                source=source,
                spec=spec,
                status=BatchStatus.VALIDATING,
                created_at=now,
                updated_at=now,
                max_cost_micro_usd=None if spec.max_cost_usd is None else to_micro_usd(spec.max_cost_usd),
            )
        )
        if not created_now:
            logger.info(
                "batch exists already", extra={"batch_id": batch.batch_id, "status": batch.status.value}
            )
        return batch, head.get("ContentLength", created.size or 0), spec_error

    # -- pre-flight ------------------------------------------------------------------------------
    def _check_budget_supported(self, batch: BatchState) -> None:
        """A provider that publishes no price per run (Replicate) cannot keep a budget: a batch
        with one (its own max-cost-usd or the stack's MaxBatchCostUsd) fails before any run."""
        provider = self._replicate if batch.spec.provider == "replicate" else self._provider
        if batch.max_cost_micro_usd is None or provider is None or provider.info.publishes_prices:
            return
        budget = usd_text(batch.max_cost_micro_usd / 1e6)
        raise FileRejected(
            "budget_unsupported",
            f"a budget of ${budget} (max-cost-usd, or the stack's MaxBatchCostUsd) cannot be kept: provider "
            f"{batch.spec.provider} publishes no price per run; upload without one on a stack without "
            "MaxBatchCostUsd",
        )

    def _technique(self, technique_id: str, provider_name: str = "flora") -> TechniqueDefinition:
        """The technique's definition: from this container's cache, else one GET of the provider."""
        provider, techniques = (
            (self._replicate, self._replicate_techniques)
            if provider_name == "replicate"
            else (self._provider, self._techniques)
        )
        if provider is None:
            return _OPEN_TECHNIQUE
        cached = techniques.get(technique_id)
        if cached is not None:
            return cached
        answer = asyncio.run(self._ask_technique(provider, technique_id))
        if isinstance(answer, TechniqueRefused):
            raise FileRejected(answer.reason, f"technique {technique_id}: {answer.message}")
        techniques.put(answer)
        return answer

    @staticmethod
    async def _ask_technique(
        provider: ProviderConnector, technique_id: str
    ) -> TechniqueDefinition | TechniqueRefused:
        async with provider.http() as http:
            return await provider.client(http).get_technique(technique_id)

    def _preflight(self, batch: BatchState, definition: TechniqueDefinition, scan: _Scan) -> Preflight | None:
        if scan.inputs is None:
            return None
        run_cost = None if definition.run_cost is None else to_micro_usd(definition.run_cost)
        return Preflight(
            input_types=scan.inputs.input_types,
            rules=scan.inputs.rules,
            run_cost_micro_usd=run_cost,
            estimate_micro_usd=None if run_cost is None else run_cost * self._rows_to_run(batch, scan),
        )

    def _rows_to_run(self, batch: BatchState, scan: _Scan) -> int:
        """The rows the estimate prices: rows completed from earlier batches (`reuse`) run nothing."""
        return scan.rows - scan.reusable

    def _held_for_budget(self, batch_id: str) -> bool:
        """A batch whose estimate passes its budget (a budget smaller than one run included)
        pauses `over_budget` before its first chunk is sent, until `resume {"max_cost_usd"}`."""
        batch = self._batches.get(batch_id)
        if batch is None or batch.status is not BatchStatus.INGESTING:
            return False
        budget, estimate = batch.max_cost_micro_usd, batch.estimated_cost_micro_usd
        if budget is None or estimate is None or estimate <= budget:
            return False
        rows = estimate // batch.run_cost_micro_usd if batch.run_cost_micro_usd else batch.total_count
        detail = (
            f"the estimate ${usd_text(estimate / 1e6)} ({rows} rows x ${usd_text(batch.run_cost_usd or 0)}) "
            f"is over the budget ${usd_text(budget / 1e6)}; resume with max_cost_usd >= "
            f"{usd_text(estimate / 1e6)} to run it, or cancel"
        )
        if self._batches.pause_before_run(batch_id, "over_budget", detail):
            logger.info("batch over budget, paused before any run", extra={"batch_id": batch_id})
        return True

    # -- pass 1 ----------------------------------------------------------------------------------
    def _scan(self, batch: BatchState, definition: TechniqueDefinition = _OPEN_TECHNIQUE) -> _Scan:
        records = self._records(batch.source)
        try:
            header_record = next(records, None)
            if header_record is None:
                raise FileRejected("empty_file", "the file has no header row")
            if header_record.fields is None:
                message = header_record.error.message if header_record.error else "unreadable"
                raise FileRejected("invalid_header", f"the header row is malformed: {message}")
            header = header_record.fields
            try:
                check_header(header, batch.spec)
            except InvalidHeader as exc:
                raise FileRejected("invalid_header", str(exc)) from None
            except InvalidMetadata as exc:  # a column the metadata names is not in this header
                raise FileRejected("invalid_metadata", str(exc)) from None
            try:
                inputs = plan_inputs(definition, header, batch.spec)
            except InputsMismatch as exc:
                raise FileRejected("inputs_mismatch", str(exc)) from None
            reusable = None
            if batch.spec.reuse:
                # The spec the workers will read: the pre-flight's input types recorded in it.
                spec = batch.spec.model_copy(update={"input_types": inputs.input_types})
                reusable = _ReusableRows(self._reuse, header, spec, utcnow().timestamp())
            scan = self._plan(batch.batch_id, header, records, row_checker(header, inputs.rules), reusable)
            scan.inputs = inputs
            return scan
        except CsvEncodingError as exc:
            raise FileRejected("invalid_encoding", f"{exc}; save the file as UTF-8") from None

    def _plan(
        self,
        batch_id: str,
        header: list[str],
        records: Iterator[CsvRecord],
        check: Callable[[CsvRecord], CsvRecord] | None = None,
        reusable: _ReusableRows | None = None,
    ) -> _Scan:
        """Chunks are byte ranges from a chunk's first good record to its last; bad records in
        between are skipped by the worker with the same validation, so they need no gaps."""
        scan = _Scan(header=header)
        errors: list[RowError] = []
        rows = 0
        first: CsvRecord | None = None
        last: CsvRecord | None = None
        rows_in_chunk = 0
        try:
            for raw in records:
                record = validate_width(raw, len(header))
                if check is not None:
                    record = check(record)
                if record.error is not None:
                    errors.append(record.error)
                    scan.rows_skipped += 1
                    if len(errors) >= ROW_ERROR_FLUSH:
                        self._row_errors.record(batch_id, errors)
                        errors = []
                    continue
                rows += 1
                if rows > self._limits.max_rows:
                    raise FileRejected(
                        "row_count_exceeded",
                        f"line {record.line} is data row {rows:,}; the limit is {self._limits.max_rows:,}",
                    )
                if reusable is not None and record.fields is not None:
                    reusable.add(record.fields)
                first = first or record
                last = record
                rows_in_chunk += 1
                if rows_in_chunk == self._limits.chunk_rows:
                    scan.chunks.append(_chunk(len(scan.chunks), first, last, rows_in_chunk))
                    first, rows_in_chunk = None, 0
        finally:
            # Also when the file is rejected part way: its row errors are then exactly those
            # before the line that rejected it, not whichever happened to be flushed.
            if errors:
                self._row_errors.record(batch_id, errors)
        if first is not None and last is not None:
            scan.chunks.append(_chunk(len(scan.chunks), first, last, rows_in_chunk))
        if reusable is not None:
            reusable.flush()
            scan.reusable = reusable.count
        logger.info(
            "file validated",
            extra={
                "batch_id": batch_id,
                "rows": rows,
                "rows_skipped": scan.rows_skipped,
                "chunks": len(scan.chunks),
                "rows_reusable": scan.reusable,
            },
        )
        return scan

    def _records(self, source: SourceObject) -> Iterator[CsvRecord]:
        yield from scan_records(split_lines(read_source(self._s3, source)), first_number=0)

    # -- pass 2 ----------------------------------------------------------------------------------
    def _enqueue(self, batch_id: str, chunks: list[ChunkPlan], *, already_sent: int) -> None:
        for start in range(already_sent, len(chunks), SEND_BATCH_LIMIT):
            group = chunks[start : start + SEND_BATCH_LIMIT]
            self._chunks.send([ChunkMessage(batch_id=batch_id, chunk=c) for c in group])
            self._batches.record_enqueued(batch_id, start + len(group))

    def _reject(self, batch: BatchState, rejected: FileRejected) -> BatchState | None:
        logger.warning(
            "file rejected",
            extra={"batch_id": batch.batch_id, "reason": rejected.reason, "detail": rejected.message},
        )
        self._finisher.fail(batch.batch_id, rejected.reason, rejected.message)
        return self._batches.get(batch.batch_id)


def _chunk(index: int, first: CsvRecord, last: CsvRecord, rows: int) -> ChunkPlan:
    return ChunkPlan(
        index=index,
        start=first.start,
        end=last.end,
        first_record=first.number,
        first_line=first.line,
        rows=rows,
    )
