"""What an operator can do to a batch through the API (contract §4); more come with reprocess
and cancel. Domain errors here, HTTP statuses in the API layer."""

from __future__ import annotations

from rowcall.ledger import Ledger
from rowcall.models import BatchState, BatchStatus, ChunkMessage
from rowcall.queues import SEND_BATCH_LIMIT, ChunkQueue


class BatchNotFound(Exception):
    pass


class WrongState(Exception):
    def __init__(self, batch: BatchState, wanted: BatchStatus) -> None:
        super().__init__(f"batch {batch.batch_id} is {batch.status.value}, not {wanted.value}")
        self.batch = batch


class BatchActions:
    def __init__(self, ledger: Ledger, chunk_queue: ChunkQueue) -> None:
        self._ledger = ledger
        self._chunks = chunk_queue

    def resume(self, batch_id: str) -> BatchState:
        """paused -> running, and every chunk with rows not yet started goes back on the queue
        (workers skip the rows already started, so nothing is created twice). Resuming twice:
        the second finds the batch running and is refused."""
        counters = self._ledger.chunks.counters(batch_id)
        resumed = self._ledger.batches.resume(batch_id, finished=sum(c.finished for c in counters))
        if resumed is None:
            batch = self._ledger.batches.get(batch_id)
            if batch is None:
                raise BatchNotFound(batch_id)
            raise WrongState(batch, BatchStatus.PAUSED)
        open_chunks = {c.index for c in counters if not c.settled}
        plan = [c for c in self._ledger.batches.chunk_plan(batch_id) if c.index in open_chunks]
        for start in range(0, len(plan), SEND_BATCH_LIMIT):
            group = plan[start : start + SEND_BATCH_LIMIT]
            self._chunks.send([ChunkMessage(batch_id=batch_id, chunk=c) for c in group])
        return resumed
