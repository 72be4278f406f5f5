"""What an operator can do to a batch through the API (contract §4): resume, cancel, reprocess.
Domain errors here, HTTP statuses in the API layer.

Each action is one conditional write on the batch item, so two calls at once (two clicks, a
retried request) find one winner and the other a wrong state. The per-chunk work that follows
(reopening rows for a reprocess, starting them) is the workers', each under its chunk's lease:
an API call stays within API Gateway's 30 s whatever the batch's size.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from rowcall.api_models import MAX_ROW_IDS
from rowcall.finishing import BatchFinisher
from rowcall.identity import parse_row_id
from rowcall.ledger import Ledger
from rowcall.models import (
    BatchState,
    BatchStatus,
    ChunkMessage,
    ChunkPlan,
    ReprocessPlan,
    RowStatus,
    to_micro_usd,
)
from rowcall.queues import SEND_BATCH_LIMIT, ChunkQueue

MAX_NAMED_ROWS = MAX_ROW_IDS
REPROCESSABLE = (BatchStatus.COMPLETED, BatchStatus.PARTIAL)


class BatchNotFound(Exception):
    pass


class WrongState(Exception):
    """409: the batch is not in a state the action applies to; `code` says which."""

    def __init__(self, batch: BatchState, code: str, message: str | None = None) -> None:
        super().__init__(message or f"batch {batch.batch_id} is {batch.status.value}")
        self.batch = batch
        self.code = code


class UnknownRows(Exception):
    """400: row ids that are not rows of the batch (malformed, skipped at ingest, or absent)."""

    def __init__(self, row_ids: Sequence[str]) -> None:
        super().__init__(f"not rows of this batch: {', '.join(row_ids)}")
        self.row_ids = list(row_ids)


class BatchActions:
    def __init__(self, ledger: Ledger, chunk_queue: ChunkQueue, finisher: BatchFinisher) -> None:
        self._ledger = ledger
        self._chunks = chunk_queue
        self._finisher = finisher

    def _batch(self, batch_id: str) -> BatchState:
        batch = self._ledger.batches.get(batch_id)
        if batch is None:
            raise BatchNotFound(batch_id)
        return batch

    def resume(self, batch_id: str, max_cost_usd: float | None = None) -> BatchState:
        """paused -> running, and every chunk with rows not yet started goes back on the queue
        (workers skip the rows already started, so nothing is created twice). Resuming twice:
        the second finds the batch running and is refused. `max_cost_usd` sets the batch's
        budget in the same write: how a batch paused `over_budget` is approved."""
        counters = self._ledger.chunks.counters(batch_id)
        resumed = self._ledger.batches.resume(
            batch_id,
            finished=sum(c.finished for c in counters),
            max_cost_micro_usd=None if max_cost_usd is None else to_micro_usd(max_cost_usd),
        )
        if resumed is None:
            batch = self._batch(batch_id)
            raise WrongState(
                batch, "batch_not_paused", f"batch {batch_id} is {batch.status.value}, not paused"
            )
        plan = resumed.reprocess
        open_chunks = {
            c.index for c in counters if not c.settled or (plan is not None and plan.pending_reopen(c))
        }
        self._send(batch_id, [c for c in self._ledger.batches.chunk_plan(batch_id) if c.index in open_chunks])
        # Every row may have finished while it was paused (runs in flight are recorded, a
        # failure-threshold pause lets them end): then nothing is left to send, and it finishes now.
        self._finisher.finish_if_done(batch_id)
        return self._ledger.batches.get(batch_id) or resumed

    def cancel(self, batch_id: str) -> BatchState:
        """validating|ingesting|running|paused -> canceled. Workers start nothing more (they
        read the status under their chunk's lease and before each group of creates); runs in
        flight finish and are recorded; the last of them (or this call, when none is out, or
        the safety net for silent ones) finishes the batch with one `batch.canceled` on-done."""
        canceled = self._ledger.batches.cancel(batch_id)
        if canceled is None:
            batch = self._batch(batch_id)
            raise WrongState(batch, "batch_not_running", f"batch {batch_id} is {batch.status.value} already")
        self._finisher.finish_canceled(batch_id)
        return self._ledger.batches.get(batch_id) or canceled

    def reprocess(self, batch_id: str, row_ids: list[str] | None) -> BatchState:
        """A finished (completed or partial) batch runs the named rows again, or every failed
        row when none are named: a new attempt each (new idempotency key, new callback token),
        and one more on-done when it finishes again. One write reopens the batch and leaves the
        reopening chunks out of its counts; each chunk's worker then reopens its rows."""
        batch = self._batch(batch_id)
        if batch.status not in REPROCESSABLE:
            code = "batch_not_finished" if not batch.status.is_terminal else "batch_not_reprocessable"
            raise WrongState(
                batch,
                code,
                f"batch {batch_id} is {batch.status.value}; only a completed or partial batch reprocesses",
            )
        counters = {c.index: c for c in self._ledger.chunks.counters(batch_id)}
        if row_ids is None:
            chunks = {str(i): [0, c.failed] for i, c in counters.items() if c.failed}
            rows = None
        else:
            chunks, rows = self._named(batch_id, row_ids, set(counters))
        if not chunks:
            raise WrongState(batch, "nothing_to_reprocess", f"batch {batch_id} has no row to reprocess")
        seq = (batch.reprocess.seq if batch.reprocess else 0) + 1
        plan = ReprocessPlan(seq=seq, chunks=chunks, rows=rows)
        reopening = [counters[int(i)] for i in chunks]
        uncounted = (sum(c.completed for c in reopening), sum(c.failed for c in reopening))
        uncharged = sum(c.charged_micro_usd for c in reopening)
        reopened = self._ledger.batches.reopen(batch, plan, uncounted=uncounted, uncharged=uncharged)
        if reopened is None:
            now = self._batch(batch_id)
            raise WrongState(now, "batch_not_finished", f"batch {batch_id} is {now.status.value}")
        # If this call dies here, the safety net sends what is left (the plan is on the batch).
        self._send(batch_id, [c for c in self._ledger.batches.chunk_plan(batch_id) if str(c.index) in chunks])
        return reopened

    def _named(
        self, batch_id: str, row_ids: list[str], chunk_indexes: set[int]
    ) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        """Per chunk, how many completed and failed rows rerun, and which rows."""
        if len(row_ids) > MAX_NAMED_ROWS:
            raise ValueError(f"at most {MAX_NAMED_ROWS} row ids per call")
        chunks: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        rows: dict[str, list[int]] = defaultdict(list)
        unknown = []
        for row_id in dict.fromkeys(row_ids):
            parsed = parse_row_id(row_id)
            row = None
            if parsed is not None and parsed[0] in chunk_indexes:
                row = self._ledger.rows.get(batch_id, *parsed)
            if row is None or not row.finished:
                unknown.append(row_id)
                continue
            chunks[str(row.chunk)][1 if row.status is RowStatus.FAILED else 0] += 1
            rows[str(row.chunk)].append(row.record)
        if unknown:
            raise UnknownRows(unknown)
        return dict(chunks), dict(rows)

    def _send(self, batch_id: str, chunks: list[ChunkPlan]) -> None:
        for start in range(0, len(chunks), SEND_BATCH_LIMIT):
            group = chunks[start : start + SEND_BATCH_LIMIT]
            self._chunks.send([ChunkMessage(batch_id=batch_id, chunk=c) for c in group])
