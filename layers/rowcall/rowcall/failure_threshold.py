"""`max-failed-percent` (contract §3): once at least MIN_FINISHED rows have finished (since the
batch last started running) and more than that percent of them failed, the batch pauses
`failure_threshold`: nothing new starts (workers read the status before each group of creates),
runs in flight finish and are recorded, and `resume` goes on with a fresh count.

Decided where outcomes are counted (the finisher, after a chunk's `ADD`), from what that write
returned: only when the chunk's own counts are over the threshold are the batch's counts read
(its item and its chunk counters, one read each), so a batch failing below its threshold, or
without one, costs no read more than before. A batch over the threshold has at least one chunk
over it, and every outcome of such a chunk looks.
"""

from __future__ import annotations

from collections import OrderedDict
from threading import Lock

from aws_lambda_powertools import Logger

from rowcall.ledger import Ledger
from rowcall.models import BatchStatus, ChunkCounter

logger = Logger(child=True)

MIN_FINISHED = 20
# A batch's threshold never changes once it exists: read once per batch and container.
_CACHE_SIZE = 1024


class FailureThreshold:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._thresholds: OrderedDict[str, float | None] = OrderedDict()
        self._lock = Lock()

    def check(self, batch_id: str, counter: ChunkCounter | None) -> bool:
        """Pauses the batch when its failures pass its threshold; True when this call paused it."""
        if counter is None or counter.failed == 0:
            return False
        threshold = self._threshold(batch_id)
        if threshold is None or counter.failed * 100 <= threshold * counter.finished:
            return False
        batch = self._ledger.batches.get(batch_id)
        if batch is None or batch.status is not BatchStatus.RUNNING:
            return False
        counters = self._ledger.chunks.counters(batch_id)
        finished = sum(c.finished for c in counters) - batch.threshold_finished_base
        failed = sum(c.failed for c in counters) - batch.threshold_failed_base
        if finished < MIN_FINISHED or failed * 100 <= threshold * finished:
            return False
        detail = (
            f"{failed} of {finished} rows finished since it started running failed "
            f"({100 * failed / finished:.1f}%), more than max-failed-percent {threshold:g}; runs in flight "
            "finish and are recorded, nothing new starts: resume to go on, or cancel"
        )
        paused = self._ledger.batches.pause(batch_id, "failure_threshold", detail)
        if paused:
            logger.warning(
                "batch paused at its failure threshold", extra={"batch_id": batch_id, "failed": failed}
            )
        return paused

    def _threshold(self, batch_id: str) -> float | None:
        with self._lock:
            if batch_id in self._thresholds:
                self._thresholds.move_to_end(batch_id)
                return self._thresholds[batch_id]
        batch = self._ledger.batches.get(batch_id)
        threshold = batch.spec.max_failed_percent if batch is not None else None
        with self._lock:
            self._thresholds[batch_id] = threshold
            while len(self._thresholds) > _CACHE_SIZE:
                self._thresholds.popitem(last=False)
        return threshold
