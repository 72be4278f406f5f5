"""The runs a worker started, made durable in pages while it starts more (group commit).

Between the provider accepting a run and our write naming its run id there is always a window:
a worker killed inside it leaves a run whose id only its webhook will tell (a retry of the row
gets `409 idempotency_duplicate`, which carries no run id). Writing a page as soon as the last
write is done keeps that window to one write's time, at a write unit per page, not per row.
"""

from __future__ import annotations

import asyncio
import time

from rowcall.ledger import RowLedger, StartedRun

PAGE_ROWS = 25


class StartLog:
    def __init__(
        self,
        rows: RowLedger,
        batch_id: str,
        chunk: int,
        holder: str,
        known_run_ids: frozenset[str] = frozenset(),
    ) -> None:
        # Runs the chunk's rows had already when this delivery began: no other row's (a provider
        # without idempotency keys is searched for runs made before, `rowcall.runs`).
        self.known_run_ids = known_run_ids
        self._rows = rows
        self._batch_id = batch_id
        self._chunk = chunk
        self._holder = holder
        self._pending: list[StartedRun] = []
        self._pages = 0
        self._writing: asyncio.Lock | None = None
        self.recorded = 0

    @property
    def holder(self) -> str:
        """The delivery writing these pages (its chunk lease's holder)."""
        return self._holder

    async def add(self, record: int, attempt: int, run_id: str | None, line: int) -> None:
        """Returns once the start is durable: written by this caller or by a page in flight."""
        self._pending.append(StartedRun(record, attempt, run_id, line, time.time()))
        if self._writing is None:
            self._writing = asyncio.Lock()
        async with self._writing:
            while self._pending:
                page, self._pending = self._pending[:PAGE_ROWS], self._pending[PAGE_ROWS:]
                await asyncio.to_thread(self._write, page)

    def intend(self, records: list[int]) -> None:
        """Before their creates are sent (one page per group of rows)."""
        self._pages += 1
        self._rows.record_intents(
            self._batch_id, self._chunk, records, f"{self._holder}-{self._pages:05d}", time.time()
        )

    def flush(self) -> None:
        """What is still pending (outside the event loop, e.g. after it was cut short)."""
        while self._pending:
            page, self._pending = self._pending[:PAGE_ROWS], self._pending[PAGE_ROWS:]
            self._write(page)

    def _write(self, page: list[StartedRun]) -> None:
        self._pages += 1
        self._rows.record_starts(self._batch_id, self._chunk, page, f"{self._holder}-{self._pages:05d}")
        self.recorded += len(page)
