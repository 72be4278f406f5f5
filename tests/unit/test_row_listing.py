"""A batch's rows in file order with their derived status, paged by file position (mock_aws)."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from typing import Any

import pytest

from rowcall.api import RowQueries
from rowcall.finishing import RowResult
from rowcall.identity import parse_row_id
from rowcall.ledger import NO_RUN, StartedRun
from rowcall.ledger.keys import row_key
from rowcall.models import RowOutcome, RowStatus
from rowcall.page_cursor import InvalidCursor
from rowcall.row_listing import RowListing

from .conftest import Aws, ingest

# 13 valid rows (the ingest helper plans four a chunk), two skipped as invalid, one with a
# quoted cell over two physical lines, so lines and record numbers differ from row positions.
CSV = (
    b"id,prompt\n"
    b"k1,one\nk2,two\nk3,three\n"
    b"bad,row,extra\n"
    b'k4,"four\nstill four"\n'
    b"k5,five\nk6,six\nk7,seven\n"
    b"only-one-field\n"
    b"k8,eight\nk9,nine\nk10,ten\nk11,eleven\nk12,twelve\nk13,thirteen\n"
)
KEYS = [f"k{n}" for n in range(1, 14)]


def listing(aws: Aws, **limits: int) -> RowListing:
    return RowListing(aws.ledger, aws.s3, **limits)


def all_rows(aws: Aws, batch_id: str, *, limit: int, status: RowStatus | None = None) -> list[Any]:
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None
    rows, cursor, pages = [], None, 0
    while True:
        page, cursor = listing(aws).page(batch, status=status, limit=limit, cursor=cursor)
        assert len(page) <= limit
        rows += page
        pages += 1
        assert pages < 100
        if cursor is None:
            return rows


def position(row_id: str) -> tuple[int, int]:
    parsed = parse_row_id(row_id)
    assert parsed is not None
    return parsed


def finish(aws: Aws, batch_id: str, row_id: str, status: RowStatus, attempt: int = 1) -> None:
    chunk, record = position(row_id)
    outcome = RowOutcome(
        status=status,
        run_id=f"run-{row_id}-{attempt}",
        outputs=[{"url": f"https://out/{row_id}"}] if status is RowStatus.COMPLETED else [],
        error_code=None if status is RowStatus.COMPLETED else "run_failed",
    )
    aws.finisher.record_outcomes(batch_id, chunk, [RowResult(record, attempt, outcome)])


def start(aws: Aws, batch_id: str, row_id: str, attempt: int = 1, run_id: str | None = "auto") -> None:
    chunk, record = position(row_id)
    run = f"run-{row_id}-{attempt}" if run_id == "auto" else run_id
    started = StartedRun(record, attempt, run, 0, time.time())
    aws.ledger.rows.record_starts(batch_id, chunk, [started], f"test-{row_id}-{attempt}-{run}")


def test_every_valid_row_is_listed_in_file_order_with_its_line_and_key(aws: Aws) -> None:
    batch_id = ingest(aws, CSV, **{"key-column": "id"})
    rows = all_rows(aws, batch_id, limit=100)
    assert [r.key for r in rows] == KEYS
    assert [r.line for r in rows] == [2, 3, 4, 6, 8, 9, 10, 12, 13, 14, 15, 16, 17]
    assert {r.status for r in rows} == {RowStatus.PENDING}
    assert all(r.attempt == 1 and r.run_id is None and r.updated_at is None for r in rows)
    # Row ids are URL-safe and in file order; four rows to a chunk.
    assert [position(r.row_id)[0] for r in rows] == [0] * 4 + [1] * 4 + [2] * 4 + [3]
    assert all(r.row_id.replace("-", "").isalnum() for r in rows)


def test_without_a_key_column_the_key_is_the_row_number(aws: Aws) -> None:
    batch_id = ingest(aws, b"prompt\nx\ny\n")
    assert [r.key for r in all_rows(aws, batch_id, limit=5)] == ["1", "2"]


def test_status_is_derived_from_outcomes_start_pages_and_reprocessed_attempts(aws: Aws) -> None:
    batch_id = ingest(aws, CSV, **{"key-column": "id"})
    ids = [r.row_id for r in all_rows(aws, batch_id, limit=100)]
    finish(aws, batch_id, ids[0], RowStatus.COMPLETED)
    finish(aws, batch_id, ids[1], RowStatus.FAILED)
    start(aws, batch_id, ids[2])
    start(aws, batch_id, ids[3], run_id=None)  # a 409: the run exists, its id unknown
    start(aws, batch_id, ids[4], run_id=NO_RUN)  # the create made no run (deferred)
    # Reprocessed rows: the item says pending with the new attempt until that attempt starts.
    for n, started_attempt in ((5, 1), (6, 2)):
        chunk, record = position(ids[n])
        start(aws, batch_id, ids[n], attempt=1)
        aws.ledger.table.put(
            {
                **row_key(batch_id, chunk, record),
                "status": "pending",
                "attempt": 2,
                "updated_at": "2026-01-01T00:00:00Z",
            }
        )
        if started_attempt == 2:
            start(aws, batch_id, ids[n], attempt=2)
    rows = {r.row_id: r for r in all_rows(aws, batch_id, limit=100)}
    done, failed, running, unknown_run, deferred, waiting, rerunning = (rows[ids[n]] for n in range(7))
    assert (done.status, done.run_id, done.outputs) == (
        RowStatus.COMPLETED,
        f"run-{ids[0]}-1",
        [{"url": f"https://out/{ids[0]}"}],
    )
    assert done.updated_at is not None
    assert (failed.status, failed.error_code) == (RowStatus.FAILED, "run_failed")
    assert (running.status, running.run_id, running.attempt) == (RowStatus.RUNNING, f"run-{ids[2]}-1", 1)
    assert running.updated_at is not None
    assert (unknown_run.status, unknown_run.run_id) == (RowStatus.RUNNING, None)
    assert deferred.status is RowStatus.PENDING
    assert (waiting.status, waiting.attempt, waiting.run_id) == (RowStatus.PENDING, 2, None)
    assert (rerunning.status, rerunning.attempt, rerunning.run_id) == (
        RowStatus.RUNNING,
        2,
        f"run-{ids[6]}-2",
    )
    assert rows[ids[7]].status is RowStatus.PENDING
    # The filter applies to the derived status.
    assert [r.row_id for r in all_rows(aws, batch_id, limit=2, status=RowStatus.RUNNING)] == [
        ids[2],
        ids[3],
        ids[6],
    ]
    assert [r.row_id for r in all_rows(aws, batch_id, limit=2, status=RowStatus.FAILED)] == [ids[1]]
    assert len(all_rows(aws, batch_id, limit=3, status=RowStatus.PENDING)) == 13 - 5


def test_pages_of_any_size_list_each_row_once(aws: Aws) -> None:
    batch_id = ingest(aws, CSV, **{"key-column": "id"})
    for limit in (1, 2, 3, 4, 5, 7, 13, 100):
        assert [r.key for r in all_rows(aws, batch_id, limit=limit)] == KEYS, limit


def test_a_page_looks_at_a_bounded_number_of_chunks_and_rows(aws: Aws) -> None:
    batch_id = ingest(aws, CSV, **{"key-column": "id"})
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None
    small = RowListing(aws.ledger, aws.s3, max_chunks=2, scan_rows=100)
    page, cursor = small.page(batch, status=None, limit=100, cursor=None)
    assert [r.key for r in page] == KEYS[:8] and cursor is not None
    page, cursor = small.page(batch, status=None, limit=100, cursor=cursor)
    assert [r.key for r in page] == KEYS[8:] and cursor is None
    # A filtered page that finds nothing in its budget still says where to go on.
    tight = RowListing(aws.ledger, aws.s3, max_chunks=4, scan_rows=3)
    page, cursor = tight.page(batch, status=RowStatus.FAILED, limit=10, cursor=None)
    assert page == [] and cursor is not None


def test_settled_chunks_without_the_status_are_not_read(aws: Aws) -> None:
    batch_id = ingest(aws, CSV, **{"key-column": "id"})
    ids = [r.row_id for r in all_rows(aws, batch_id, limit=100)]
    for row_id in ids[:8]:
        finish(aws, batch_id, row_id, RowStatus.COMPLETED)
    counters = {c.index: c for c in aws.ledger.chunks.counters(batch_id)}
    assert counters[0].settled and counters[1].settled
    calls = count_requests(aws)
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None
    page, _ = listing(aws).page(batch, status=RowStatus.PENDING, limit=2, cursor=None)
    assert [r.row_id for r in page] == ids[8:10]
    assert calls["s3.GetObject"] == 1  # only chunk 2 was read


def count_requests(aws: Aws) -> Counter[str]:
    calls: Counter[str] = Counter()
    for client in (aws.dynamodb, aws.s3):
        service = client.meta.service_model.service_name

        def seen(model: Any, service: str = service, **_: Any) -> None:
            calls[f"{service}.{model.name}"] += 1

        client.meta.events.register(f"before-call.{service}", seen)
    return calls


def test_the_cost_of_a_page(aws: Aws) -> None:
    """Per page: the batch, its plan, and per chunk looked at one ranged GET, one query of its
    rows and (a row being unfinished) one of its start pages."""
    batch_id = ingest(aws, CSV, **{"key-column": "id"})
    queries = RowQueries(aws.ledger, listing(aws))
    calls = count_requests(aws)
    page = queries.rows(batch_id, status=None, limit=6, cursor=None)  # chunks 0 and 1
    assert len(page.items) == 6
    assert calls == Counter({"dynamodb.GetItem": 1, "dynamodb.Query": 1 + 2 * 2, "s3.GetObject": 2})
    calls.clear()
    queries.rows(batch_id, status=RowStatus.FAILED, limit=6, cursor=None)  # + the counters
    assert calls == Counter({"dynamodb.GetItem": 1, "dynamodb.Query": 2 + 2 * 4, "s3.GetObject": 4})


def test_pages_never_skip_or_repeat_a_row_while_outcomes_are_written(aws: Aws) -> None:
    batch_id = ingest(aws, CSV, **{"key-column": "id"})
    ids = [r.row_id for r in all_rows(aws, batch_id, limit=100)]
    order = ids[:]
    random.Random(7).shuffle(order)
    stop = threading.Event()
    errors: list[BaseException] = []

    def write_outcomes() -> None:
        try:
            for n, row_id in enumerate(order):
                if stop.is_set():
                    return
                start(aws, batch_id, row_id)
                finish(aws, batch_id, row_id, RowStatus.FAILED if n % 3 == 0 else RowStatus.COMPLETED)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    writers = [threading.Thread(target=write_outcomes) for _ in range(2)]
    for writer in writers:
        writer.start()
    rounds = 0
    mixed = False  # a listing saw rows finished and rows not yet: it ran while they were written
    try:
        while any(w.is_alive() for w in writers) or rounds < 2:
            for limit in (1, 3, 5):
                listed = all_rows(aws, batch_id, limit=limit)
                assert [r.row_id for r in listed] == ids
                statuses = {r.status for r in listed}
                mixed |= RowStatus.PENDING in statuses and bool(
                    statuses & {RowStatus.COMPLETED, RowStatus.FAILED}
                )
                failed = all_rows(aws, batch_id, limit=2, status=RowStatus.FAILED)
                assert len({r.row_id for r in failed}) == len(failed)  # never repeated
                assert [r.row_id for r in failed] == sorted((r.row_id for r in failed), key=position)
            rounds += 1
    finally:
        stop.set()
        for writer in writers:
            writer.join(30)
    assert not errors, errors
    assert rounds >= 2 and mixed
    final = all_rows(aws, batch_id, limit=4)
    assert {r.status for r in final} <= {RowStatus.COMPLETED, RowStatus.FAILED}
    assert [r.row_id for r in all_rows(aws, batch_id, limit=4, status=RowStatus.FAILED)] == [
        r.row_id for r in final if r.status is RowStatus.FAILED
    ]


def test_cursors_that_are_not_this_listings_are_refused(aws: Aws) -> None:
    batch_id = ingest(aws, CSV, **{"key-column": "id"})
    other = ingest(aws, b"id,prompt\nz,1\n", **{"key-column": "id"})
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None
    _, cursor = listing(aws).page(batch, status=None, limit=5, cursor=None)
    assert cursor is not None
    other_batch = aws.ledger.batches.get(other)
    assert other_batch is not None
    for bad in ("nope", "", "x" * 600, cursor[:-3], cursor + "A"):
        with pytest.raises(InvalidCursor):
            listing(aws).page(batch, status=None, limit=5, cursor=bad or "=")
    with pytest.raises(InvalidCursor):
        listing(aws).page(other_batch, status=None, limit=5, cursor=cursor)


def test_row_errors_are_paged_in_line_order(aws: Aws) -> None:
    lines = [b"id,prompt"] + [b"only-one" if n % 2 else f"k{n},p".encode() for n in range(2, 30)]
    batch_id = ingest(aws, b"\n".join(lines) + b"\n", **{"key-column": "id"})
    queries = RowQueries(aws.ledger, listing(aws))
    seen: list[int] = []
    cursor = None
    while True:
        page = queries.row_errors(batch_id, limit=4, cursor=cursor)
        assert len(page.items) <= 4
        seen += [e.line for e in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [n for n in range(2, 30) if n % 2]  # physical lines: the header is line 1
    assert {e.code for e in queries.row_errors(batch_id, limit=100, cursor=None).items} == {"column_count"}
    assert queries.row_errors(batch_id, limit=14, cursor=None).next_cursor is None
