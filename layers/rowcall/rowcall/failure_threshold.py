"""`max-failed-percent` (contract §3): once at least MIN_FINISHED rows have finished (since the
batch last started running) and more than that percent of them failed, the batch pauses
`failure_threshold`: nothing new starts (workers read the status before each group of creates),
runs in flight finish and are recorded, and `resume` goes on with a fresh count.

Decided where outcomes are counted (the finisher, after a chunk's `ADD`): a batch with a
threshold also adds the rows a write moved to two counters on its item, and that write's answer
is what the decision reads. No read is added; a batch without a threshold adds no write (its
threshold is read once per batch and container).
"""

from __future__ import annotations

from collections import OrderedDict
from threading import Lock

from aws_lambda_powertools import Logger

from rowcall.ledger import Ledger
from rowcall.models import BatchStatus

logger = Logger(child=True)

MIN_FINISHED = 20
# A batch's threshold never changes once it exists: read once per batch and container.
_CACHE_SIZE = 1024


class FailureThreshold:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._thresholds: OrderedDict[str, float | None] = OrderedDict()
        self._lock = Lock()

    def count(self, batch_id: str, *, finished: int, failed: int) -> bool:
        """Counts rows that just finished; pauses the batch when its failures pass its threshold.
        True when this call paused it."""
        if finished <= 0:
            return False
        threshold = self._threshold(batch_id)
        if threshold is None:
            return False
        batch = self._ledger.batches.add_threshold_counts(batch_id, finished=finished, failed=failed)
        if batch is None or batch.status is not BatchStatus.RUNNING:
            return False
        judged = batch.threshold_finished - batch.threshold_finished_base
        failures = batch.threshold_failed - batch.threshold_failed_base
        if judged < MIN_FINISHED or failures * 100 <= threshold * judged:
            return False
        detail = (
            f"{failures} of {judged} rows finished since it started running failed "
            f"({100 * failures / judged:.1f}%), more than max-failed-percent {threshold:g}; runs in flight "
            "finish and are recorded, nothing new starts: resume to go on, or cancel"
        )
        paused = self._ledger.batches.pause(batch_id, "failure_threshold", detail)
        if paused:
            logger.warning("batch paused at its failure threshold", extra={"batch_id": batch_id})
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
