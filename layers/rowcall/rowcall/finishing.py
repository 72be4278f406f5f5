"""Recording outcomes and what follows: rows written, their chunk counted once per batch of
outcomes, a finished chunk settled from a recount, the batch finished once, its on-done queued.

Every caller, duplicates included, runs the settle/finish steps: a caller that died half way
through them is completed by whichever event comes next (or by the safety net).
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from rowcall.admission import Admission
from rowcall.failure_threshold import FailureThreshold
from rowcall.ledger import Ledger
from rowcall.ledger.slots import RELEASE_SHARDS
from rowcall.models import BatchState, ChunkCounter, RowOutcome, RowStatus
from rowcall.queues import DoneQueue


@dataclass(frozen=True)
class RowResult:
    """One row's outcome, for the attempt it belongs to."""

    record: int
    attempt: int
    outcome: RowOutcome
    line: int | None = None
    key: str | None = None
    # What the row asked (`rowcall.reuse.content_key`), when known: a completed run leaves it behind.
    content_key: str | None = None
    save: bool = False
    """Its outputs are to be saved (the batch's `save-outputs`) before its chunk settles."""
    saved: list[dict[str, Any]] | None = None
    """A reused row's outputs, copied already from the earlier row's (`ReusedOutputs`)."""


class BatchFinisher:
    def __init__(
        self,
        ledger: Ledger,
        done_queue: DoneQueue,
        *,
        capped: bool = False,
        row_writers: int = 1,
        admission: Admission | None = None,
    ) -> None:
        self._ledger = ledger
        self._done = done_queue
        # Under the in-flight cap, each run holds a slot until its outcome is recorded here.
        self._capped = capped
        self._row_writers = max(1, row_writers)
        # Given slots back, it wakes as many chunks waiting for them.
        self._admission = admission
        self._failure_threshold = FailureThreshold(ledger)

    def record_outcomes(
        self,
        batch_id: str,
        chunk: int,
        results: Sequence[RowResult],
        moved_out: list[RowResult] | None = None,
    ) -> int:
        """Write each row's outcome (once per attempt), then count the rows that moved in one
        `ADD` on their chunk. How many rows moved; `moved_out` is extended with them."""
        moved = self._write_rows(batch_id, chunk, results)
        if moved_out is not None:
            moved_out.extend(moved)
        completed = sum(r.outcome.status is RowStatus.COMPLETED for r in moved)
        failed = sum(r.outcome.status is RowStatus.FAILED for r in moved)
        saving = sum(r.save and r.outcome.status is RowStatus.COMPLETED for r in moved)
        charged = sum(r.outcome.charged_cost_micro_usd or 0 for r in moved)
        if completed or failed:
            counter = self._ledger.chunks.add_outcomes(
                batch_id, chunk, completed=completed, failed=failed, charged_micro_usd=charged, saving=saving
            )
        else:
            counter = self._ledger.chunks.counter(batch_id, chunk)
        if completed or failed:
            self._failure_threshold.count(batch_id, finished=completed + failed, failed=failed)
        self.after_outcomes(batch_id, counter)
        # The batch may be canceled, waiting for these runs (its chunks never settle then). It
        # can finish only once no worker holds this chunk and none of its runs is out, and the
        # counter just written says when that may be: the batch is read then, not once per
        # received batch. What a counter that errs leaves undone, the safety net's sweep of the
        # canceled batch does.
        if counter is None or not (counter.runs_maybe_out or counter.held(time.time())):
            self.finish_canceled(batch_id, chunk)
        return completed + failed

    def knows(self, batch: BatchState) -> None:
        """The batch as a caller read it (the recorder, for its technique): what the finisher
        needs of it once per batch (its failure threshold) is taken from there, not read again."""
        self._failure_threshold.remember(batch.batch_id, batch.spec.max_failed_percent)

    def _write_rows(self, batch_id: str, chunk: int, results: Sequence[RowResult]) -> list[RowResult]:
        """The results whose row write won. Up to `row_writers` rows are written at once (a
        received batch's ten writes take the time of about one, not ten: the invocation is
        billed for less); the results of one row are written in turn, in their order."""

        def write_in_turn(same_row: Sequence[RowResult]) -> list[RowResult]:
            return [
                result
                for result in same_row
                if self._ledger.rows.finish(
                    batch_id,
                    chunk,
                    result.record,
                    result.outcome,
                    attempt=result.attempt,
                    line=result.line,
                    key=result.key,
                    save_pending=result.save,
                )
            ]

        by_row: dict[int, list[RowResult]] = defaultdict(list)
        for result in results:
            by_row[result.record].append(result)
        if self._row_writers == 1 or len(by_row) == 1:
            return write_in_turn(results)
        with ThreadPoolExecutor(min(self._row_writers, len(by_row)), thread_name_prefix="row-writer") as pool:
            return [result for moved in pool.map(write_in_turn, by_row.values()) for result in moved]

    def release_slots(self, runs_ended: int) -> None:
        """Under the in-flight cap: the slots of runs whose outcomes were just recorded, in one
        write per received batch, to any of the release counters (only their sum matters)."""
        if self._capped and runs_ended > 0:
            if self._admission is not None:
                self._admission.release(runs_ended, random.randrange(RELEASE_SHARDS))
            else:
                self._ledger.slots.release(runs_ended, random.randrange(RELEASE_SHARDS))

    def after_outcomes(self, batch_id: str, counter: ChunkCounter | None) -> None:
        if counter is None or counter.finished < counter.rows:
            return
        if not counter.settled:
            rows = self._ledger.rows.rows_of_chunk(batch_id, counter.index)
            if self._ledger.chunks.settle(batch_id, counter, rows) is False:
                return  # the counter ran ahead of the rows; it says what they say now
        self.finish_if_done(batch_id)

    def after_saves(self, batch_id: str, chunk: int) -> None:
        """A row's outputs were saved: once the chunk's counter says none is left to save, it
        may settle (from a recount of its rows, as any) and the batch finish. One read per save,
        the chunk's rows only when they may all be done."""
        counter = self._ledger.chunks.counter(batch_id, chunk)
        if counter is not None and counter.saving <= 0:
            self.after_outcomes(batch_id, counter)
        self.finish_canceled(batch_id, chunk)

    def recount(self, batch_id: str, chunk: int) -> None:
        """For a chunk gone quiet: the counter may have missed outcomes (a crash between a row
        write and its count); the recount settles it if its rows are all finished."""
        counter = self._ledger.chunks.counter(batch_id, chunk)
        if counter is None or counter.settled:
            return
        rows = self._ledger.rows.rows_of_chunk(batch_id, chunk)
        if self._ledger.chunks.settle(batch_id, counter, rows):
            self.finish_if_done(batch_id)

    def finish_if_done(self, batch_id: str) -> None:
        message = self._ledger.batches.finish_if_done(batch_id)
        if message is not None:
            self._done.send(message)

    def finish_canceled(self, batch_id: str, chunk: int | None = None) -> None:
        """A canceled batch finishes (once, with its on-done) when no run it started is still
        out: every run started for a row's current attempt has its outcome and no worker holds
        a chunk. Its counts are a recount of the chunks not settled into the batch.

        `chunk`: the chunk an event just touched, looked at first, so the events of a batch
        with runs still in flight cost one chunk's reads, not the whole batch's."""
        batch = self._ledger.batches.get(batch_id)
        if batch is None or not batch.cancel_pending:
            return
        counters = {c.index: c for c in self._ledger.chunks.counters(batch_id)}
        order = sorted(counters, key=lambda index: index != chunk)
        completed, failed = batch.completed_count, batch.failed_count
        charged = batch.charged_cost_micro_usd
        now = time.time()
        for index in order:
            counter = counters[index]
            if counter.settled and not (batch.reprocess and batch.reprocess.pending_reopen(counter)):
                continue  # counted in the batch already
            if counter.worker_until is not None and counter.worker_until >= now:
                return  # a worker is at it; it looks again when it lets go
            if not (counter.last_start_at or counter.last_outcome_at or counter.worker_until):
                continue  # never touched by a worker: no row of it has run
            rows = {row.record: row for row in self._ledger.rows.rows_of_chunk(batch_id, index)}
            if any(row.save_pending for row in rows.values()):
                return  # outputs still being saved: the saver finishes it once they are
            for record, start in self._ledger.rows.starts(batch_id, index).items():
                row = rows.get(record)
                current = row.attempt if row is not None else 1
                if start.has_run and start.attempt == current and not (row is not None and row.finished):
                    return  # a run still out
            completed += sum(row.status is RowStatus.COMPLETED for row in rows.values())
            failed += sum(row.status is RowStatus.FAILED for row in rows.values())
            charged += sum(row.charged_cost_micro_usd or 0 for row in rows.values() if row.finished)
        message = self._ledger.batches.finish_canceled(
            batch_id, completed=completed, failed=failed, charged_micro_usd=charged
        )
        if message is not None:
            self._done.send(message)

    def fail(self, batch_id: str, reason: str, message: str) -> None:
        done = self._ledger.batches.fail(batch_id, reason, message)
        if done is not None:
            self._done.send(done)
