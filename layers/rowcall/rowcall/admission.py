"""Admission under the in-flight cap: slots before creates, and waiting that costs nothing.

A chunk with rows to start and no free slot is listed in the ledger's waiting list and leaves
(no message, no timer). Whoever gives slots back (a recorder recording outcomes, a worker
returning an unused grant, the safety net) wakes as many waiters as slots it freed, longest
waiting first, by sending their chunk messages. A chunk that registers checks the slots again
after its entry is written: a release that read the list just before the entry existed freed
slots this check sees, so no wake-up is lost between the two (each side writes, then reads what
the other writes). What a crash can still lose (a waker dying between taking a waiter and
sending its message) the safety net repairs; it never paces.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aws_lambda_powertools import Logger

from rowcall.ledger import Ledger
from rowcall.models import ChunkMessage
from rowcall.queues import SEND_BATCH_LIMIT, ChunkQueue

logger = Logger(child=True)


class Admission:
    def __init__(
        self, ledger: Ledger, chunk_queue: ChunkQueue, cap: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._ledger = ledger
        self._chunks = chunk_queue
        self.cap = cap
        self._clock = clock

    def acquire(self, wanted: int) -> int:
        return self._ledger.slots.acquire(wanted, self.cap)

    def free(self) -> int:
        acquired, released = self._ledger.slots.held()
        return self.cap - (acquired - released)

    def release(self, count: int, shard: int) -> int:
        """Give `count` slots back and wake as many waiting chunks. How many were woken."""
        if count <= 0:
            return 0
        self._ledger.slots.release(count, shard)
        return self.wake(count)

    def wait(self, message: ChunkMessage, since_ms: int | None = None) -> int:
        """List the chunk as waiting (it keeps its place when `since_ms` is its first wait), then
        wake as many waiters as slots are free now: they may have been freed between this
        chunk's last try and its entry. How many were woken."""
        since = since_ms if since_ms is not None else int(self._clock() * 1000)
        self._ledger.waiting.add(message.model_copy(update={"waiting_since_ms": since}), since)
        free = self.free()
        return self.wake(free) if free > 0 else 0

    def wake(self, count: int) -> int:
        if count <= 0:
            return 0
        woken = self._ledger.waiting.take(count)
        for start in range(0, len(woken), SEND_BATCH_LIMIT):
            self._chunks.send(woken[start : start + SEND_BATCH_LIMIT])
        if woken:
            logger.debug("chunks woken", extra={"woken": len(woken)})
        return len(woken)

    def repair(self) -> int:
        """The safety net's part: waiters while slots are free are wake-ups nobody sent."""
        if not any(True for _ in self._ledger.waiting.waiters()):
            return 0
        free = self.free()
        return self.wake(free) if free > 0 else 0
