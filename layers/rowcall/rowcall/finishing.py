"""After a row finishes: settle its chunk, finish the batch once, hand the on-done to the queue."""

from __future__ import annotations

from rowcall.ledger import Ledger
from rowcall.queues import DoneQueue


class BatchFinisher:
    def __init__(self, ledger: Ledger, done_queue: DoneQueue) -> None:
        self._ledger = ledger
        self._done = done_queue

    def after_row_finished(self, batch_id: str, chunk: int) -> None:
        """Run after every outcome, duplicates included: a caller that died half way through
        this is completed by whichever callback comes next."""
        counter = self._ledger.chunk_counter(batch_id, chunk)
        if counter is None or counter.finished < counter.rows:
            return
        if not counter.settled:
            self._ledger.settle_chunk(batch_id, counter)
        self.finish_if_done(batch_id)

    def finish_if_done(self, batch_id: str) -> None:
        message = self._ledger.finish_if_done(batch_id)
        if message is not None:
            self._done.send(message)

    def fail(self, batch_id: str, reason: str, message: str) -> None:
        done = self._ledger.fail_batch(batch_id, reason, message)
        if done is not None:
            self._done.send(done)
