"""The runs a worker started, made durable in pages while it starts more (group commit).

Between the provider accepting a run and our write naming its run id there is always a window:
a worker killed inside it leaves a run whose id only its webhook will tell (a retry of the row
gets `409 idempotency_duplicate`, which carries no run id). The intent page written before each
group of creates covers that window (a retry waits for the row's webhook until the intent is
stale), so the start page of a group waits for the next group's intent page and rides in the same
BatchWriteItem: one request per group of creates, not one per page (the last group's starts are
written by `flush`). The window is a group's creates long, not one write's.
"""

from __future__ import annotations

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
        self.recorded = 0

    @property
    def holder(self) -> str:
        """The delivery writing these pages (its chunk lease's holder)."""
        return self._holder

    async def add(self, record: int, attempt: int, run_id: str | None, line: int) -> None:
        """Kept until the next intent page or `flush` writes it (the row's intent covers it until then)."""
        self._pending.append(StartedRun(record, attempt, run_id, line, time.time()))

    def intend(self, records: list[int]) -> None:
        """Before their creates are sent: the intent page of the group, with the start pages of
        the groups before it, in one request."""
        starts = self._take_pages()
        self._pages += 1
        self._rows.record_pages(
            self._batch_id,
            self._chunk,
            starts,
            intents=records,
            intent_page_id=self._page_id(self._pages),
            at=time.time(),
        )
        self.recorded += sum(len(page) for _, page in starts)

    def flush(self) -> None:
        """What is still pending (after the last group, or after the event loop was cut short)."""
        for page_id, page in self._take_pages():
            self._rows.record_starts(self._batch_id, self._chunk, page, page_id)
            self.recorded += len(page)

    def _take_pages(self) -> list[tuple[str, list[StartedRun]]]:
        pages = []
        while self._pending:
            page, self._pending = self._pending[:PAGE_ROWS], self._pending[PAGE_ROWS:]
            self._pages += 1
            pages.append((self._page_id(self._pages), page))
        return pages

    def _page_id(self, n: int) -> str:
        return f"{self._holder}-{n:05d}"
