"""Recording outcomes and what follows: rows written, their chunk counted once per batch of
outcomes, a finished chunk settled from a recount, the batch finished once, its on-done queued.

Every caller, duplicates included, runs the settle/finish steps: a caller that died half way
through them is completed by whichever event comes next (or by the safety net).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rowcall.ledger import Ledger
from rowcall.ledger.slots import RELEASE_SHARDS
from rowcall.models import ChunkCounter, RowOutcome, RowStatus
from rowcall.queues import DoneQueue


@dataclass(frozen=True)
class RowResult:
    """One row's outcome, for the attempt it belongs to."""

    record: int
    attempt: int
    outcome: RowOutcome
    line: int | None = None
    key: str | None = None


class BatchFinisher:
    def __init__(
        self, ledger: Ledger, done_queue: DoneQueue, *, capped: bool = False, row_writers: int = 1
    ) -> None:
        self._ledger = ledger
        self._done = done_queue
        # Under the in-flight cap, each run holds a slot until its outcome is recorded here.
        self._capped = capped
        self._row_writers = max(1, row_writers)

    def record_outcomes(self, batch_id: str, chunk: int, results: Sequence[RowResult]) -> int:
        """Write each row's outcome (once per attempt), then count the rows that moved in one
        `ADD` on their chunk. How many rows moved."""
        moved = self._write_rows(batch_id, chunk, results)
        completed = sum(r.outcome.status is RowStatus.COMPLETED for r in moved)
        failed = sum(r.outcome.status is RowStatus.FAILED for r in moved)
        if completed or failed:
            counter = self._ledger.chunks.add_outcomes(batch_id, chunk, completed=completed, failed=failed)
        else:
            counter = self._ledger.chunks.counter(batch_id, chunk)
        self.after_outcomes(batch_id, counter)
        return completed + failed

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
            self._ledger.slots.release(runs_ended, random.randrange(RELEASE_SHARDS))

    def after_outcomes(self, batch_id: str, counter: ChunkCounter | None) -> None:
        if counter is None or counter.finished < counter.rows:
            return
        if not counter.settled:
            rows = self._ledger.rows.rows_of_chunk(batch_id, counter.index)
            if self._ledger.chunks.settle(batch_id, counter, rows) is False:
                return  # the counter ran ahead of the rows; it says what they say now
        self.finish_if_done(batch_id)

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

    def fail(self, batch_id: str, reason: str, message: str) -> None:
        done = self._ledger.batches.fail(batch_id, reason, message)
        if done is not None:
            self._done.send(done)
