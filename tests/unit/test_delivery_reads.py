"""A chunk delivery reads what it starts (issue 14 item 2): from its cursor on, the rows, start
and intent pages at or after the cursor by key range, and its S3 bytes no further than its fair
share; the rows before the cursor are not read again, and nothing starts twice."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from rowcall.ledger import StartedRun, Table
from rowcall.ledger.keys import rows_pk
from rowcall.models import ChunkMessage
from rowcall_local.provider_emulator import ProviderEmulator
from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

from .conftest import Aws, chunk_messages, ingest
from .test_admission import CAP, starter
from .test_runs_to_on_done import start_provider

# Chunks of four rows (the unit stack's CHUNK_ROWS), cap 4: a fair share of 1 row a delivery.
ROWS = b"prompt\n" + b"".join(f"row {n}\n".encode() for n in range(1, 9))


@pytest.fixture
def callbacks() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def provider() -> Iterator[ProviderEmulator]:
    emulator = start_provider()
    yield emulator
    emulator.stop()


class ChunkReads:
    """Every query of one chunk's partition: its key condition values and the items it returned."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, batch_id: str, chunk: int) -> None:
        self.pk = rows_pk(batch_id, chunk)
        self.queries: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
        original = Table.query

        def query(table: Table, key_condition: str, values: Any, **kwargs: Any) -> Any:
            items, last = original(table, key_condition, values, **kwargs)
            if values.get(":pk") == self.pk:
                self.queries.append((dict(values), items))
            return items, last

        monkeypatch.setattr(Table, "query", query)

    @property
    def items(self) -> list[dict[str, Any]]:
        return [item for _, items in self.queries for item in items]


def test_a_woken_delivery_reads_only_from_its_cursor_on(
    aws: Aws, provider: ProviderEmulator, callbacks: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch_id = ingest(aws, ROWS)
    first, other = chunk_messages(aws)
    f = first.chunk.first_record
    # An earlier delivery started the chunk's first row.
    aws.ledger.rows.record_starts(batch_id, 0, [StartedRun(f, 1, "run_0", 2, 1.0)], "w1-00001")
    # Another chunk waits (so each delivery takes its fair share, one row), one slot is free.
    assert aws.ledger.slots.acquire(CAP - 1, CAP) == CAP - 1
    aws.ledger.waiting.add(other, 1)
    woken = first.model_copy(update={"cursor": None, "waiting_since_ms": 2})
    # A delivery with no cursor reads the whole chunk's pages (a redelivery must see them all).
    reads = ChunkReads(monkeypatch, batch_id, 0)
    report = starter(aws, provider, callbacks).start_chunk(woken, lambda: 300.0)
    assert report.skipped_known == 1 and report.started == 1
    assert any(item["sk"].startswith("START#") for item in reads.items)
    listed = listed_again(aws, 0)
    assert listed.cursor is not None and listed.cursor.record == f + 2
    # A delivery from there on: key ranges from its cursor, none of the pages before it.
    aws.ledger.waiting.add(other, 1)
    aws.ledger.slots.release(1, 0)
    reads = ChunkReads(monkeypatch, batch_id, 0)
    report = starter(aws, provider, callbacks).start_chunk(listed, lambda: 300.0)
    assert report.started == 1 and report.skipped_known == 0
    assert len(reads.queries) == 3  # rows, start pages, intent pages: one request each
    for values, _ in reads.queries:
        assert values[":first"].endswith(f"{f + 2:09d}")
    assert reads.items == []  # every page written so far names rows before the cursor only
    again = listed_again(aws, 0)
    assert again.cursor is not None and again.cursor.record == f + 3
    # Nothing started twice: one create per row started, each row once.
    stats = provider.stats()
    assert stats["creates"] == 2 and stats["unique_idempotency_keys"] == 2


def test_a_chunk_alone_on_the_waiting_list_takes_what_the_cap_leaves(
    aws: Aws, provider: ProviderEmulator, callbacks: Receiver
) -> None:
    """The fair share lets waiting chunks in; with none waiting a delivery starts as many rows
    as slots are free, not a quarter of the cap, and leaves the next row as its cursor."""
    ingest(aws, ROWS)
    first = chunk_messages(aws)[0]
    assert aws.ledger.slots.acquire(1, CAP) == 1  # three of four slots free
    report = starter(aws, provider, callbacks).start_chunk(first, lambda: 300.0)
    assert report.started == CAP - 1 and provider.stats()["creates"] == CAP - 1
    assert report.cursor is not None and report.cursor.record == first.chunk.first_record + CAP - 1


def listed_again(aws: Aws, chunk: int) -> ChunkMessage:
    """The chunk's waiting entry, taken off the list with every other entry."""
    taken = aws.ledger.waiting.take(10)
    (mine,) = [m for m in taken if m.chunk.index == chunk]
    return mine
