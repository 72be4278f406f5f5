"""A batch's rows in file order, each with the status the ledger implies (contract §4 rows).

The ledger stores a row only at its outcome; a row being run is an entry in its chunk's start
pages; a row with neither is pending, and what names it (line, key) is only in the file. So a
page is the file's records of one stretch of chunks, read with ranged GETs of the batch's
object version, overlaid with the row items and start pages of those chunks.

The cursor is a position in the file: (chunk, record number, byte offset, line) of the next
record to look at. The set of rows never changes once planned, so paging by position neither
skips nor repeats a row however many outcomes are written meanwhile; with a status filter, each
row is judged once, by the status it has when its page is read.

Cost of a page (figures in `RowListing`): one GetItem of the batch, one query of its plan, with
a status filter one query of its chunk counters, then for each chunk looked at (at most
MAX_CHUNKS) one ranged GET streamed only as far as the rows looked at, one query of its row
items over those records and, when one of them has no outcome yet, one query of its start
pages. At most SCAN_ROWS rows are looked at per page, so a filtered page may be short or empty
and still carry a cursor.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from rowcall.api_models import ReusedFrom, RowView
from rowcall.csvsplit import CsvRecord, data_records, split_lines
from rowcall.identity import row_id_for
from rowcall.input_checks import row_checker
from rowcall.ledger import Ledger, StartedRun
from rowcall.metadata import row_key
from rowcall.models import BatchState, ChunkCounter, ChunkPlan, RowState, RowStatus, iso, to_usd
from rowcall.page_cursor import InvalidCursor, decode_cursor, encode_cursor
from rowcall.source import read_source

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

MAX_CHUNKS = 4
SCAN_ROWS = 1000
_CURSOR_KIND = "rows"
_FINISHED = (RowStatus.COMPLETED, RowStatus.FAILED)


@dataclass(frozen=True)
class Position:
    """Where the next record to look at starts."""

    chunk: int
    record: int
    offset: int
    line: int

    @classmethod
    def start_of(cls, chunk: ChunkPlan) -> Position:
        return cls(chunk.index, chunk.first_record, chunk.start, chunk.first_line)

    def cursor(self) -> str:
        return encode_cursor(_CURSOR_KIND, self.chunk, self.record, self.offset, self.line)


def _position(cursor: str, plan: dict[int, ChunkPlan]) -> Position:
    chunk, record, offset, line = decode_cursor(_CURSOR_KIND, cursor, 4)
    planned = plan.get(chunk)
    if (
        planned is None
        or not planned.start <= offset <= planned.end
        or record < planned.first_record
        or line < planned.first_line
    ):
        raise InvalidCursor("cursor is not one this API returned for this batch")
    return Position(chunk, record, offset, line)


def derive_row(
    batch: BatchState, chunk: int, record: CsvRecord, stored: RowState | None, started: StartedRun | None
) -> RowView:
    """The row as the contract shows it: its outcome when stored; running when its current
    attempt has a run in the start pages; pending otherwise (also a reprocessed row whose new
    attempt has not started: its item says pending with the new attempt)."""
    fields = record.fields or []
    common = {
        "row_id": row_id_for(chunk, record.number),
        "line": record.line,
        "key": row_key(batch.header or [], fields, batch.spec, record.number),
    }
    if stored is not None and stored.status in _FINISHED:
        return RowView(
            **common,
            status=stored.status,
            run_id=stored.run_id,
            outputs=stored.outputs,
            error_code=stored.error_code,
            error_message=stored.error_message,
            attempt=stored.attempt,
            updated_at=stored.updated_at,
            charged_cost_usd=row_charged_usd(batch, stored),
            reused_from=ReusedFrom.model_validate(stored.reused_from) if stored.reused_from else None,
            saved_outputs=stored.saved_outputs,
        )
    attempt = stored.attempt if stored is not None else 1
    if started is not None and started.has_run and (stored is None or started.attempt == attempt):
        return RowView(
            **common,
            status=RowStatus.RUNNING,
            run_id=started.run_id,
            outputs=[],
            error_code=None,
            error_message=None,
            attempt=started.attempt,
            updated_at=iso(datetime.fromtimestamp(started.started_at, UTC)),
            charged_cost_usd=None,
            reused_from=None,
            saved_outputs=[],
        )
    return RowView(
        **common,
        status=RowStatus.PENDING,
        run_id=None,
        outputs=[],
        error_code=None,
        error_message=None,
        attempt=attempt,
        updated_at=stored.updated_at if stored is not None else None,
        charged_cost_usd=None,
        reused_from=None,
        saved_outputs=[],
    )


def row_charged_usd(batch: BatchState, row: RowState) -> float | None:
    """A finished row's charge: the run's `charged_cost`; 0 for a failed or reused row; null on a
    provider that publishes no price (contract §5b)."""
    if batch.spec.provider == "replicate":
        return None
    if row.charged_cost_micro_usd is not None:
        return to_usd(row.charged_cost_micro_usd)
    return 0.0 if row.status is RowStatus.FAILED or row.reused_from else None


def _skippable(counter: ChunkCounter | None, status: RowStatus) -> bool:
    """A settled chunk's counts are a recount of its rows: it holds no row of the status."""
    if counter is None or not counter.settled:
        return False
    if status is RowStatus.COMPLETED:
        return counter.completed == 0
    if status is RowStatus.FAILED:
        return counter.failed == 0
    return True  # every row of a settled chunk is finished


class RowListing:
    def __init__(
        self, ledger: Ledger, s3: S3Client, *, max_chunks: int = MAX_CHUNKS, scan_rows: int = SCAN_ROWS
    ) -> None:
        self._ledger = ledger
        self._s3 = s3
        self._max_chunks = max_chunks
        self._scan_rows = scan_rows

    def page(
        self, batch: BatchState, *, status: RowStatus | None, limit: int, cursor: str | None
    ) -> tuple[list[RowView], str | None]:
        """Up to `limit` rows from the cursor on, and the cursor after them (None at the end).
        InvalidCursor for a cursor that is not one of this batch's."""
        chunks = {c.index: c for c in self._ledger.batches.chunk_plan(batch.batch_id)}
        if not chunks or batch.header is None:
            if cursor is not None:
                raise InvalidCursor("cursor is not one this API returned for this batch")
            return [], None
        order = sorted(chunks)
        at = _position(cursor, chunks) if cursor else Position.start_of(chunks[order[0]])
        counters = {c.index: c for c in self._ledger.chunks.counters(batch.batch_id)} if status else {}
        items: list[RowView] = []
        looked_at = chunks_read = 0
        for index in order[order.index(at.chunk) :]:
            plan = chunks[index]
            here = at if index == at.chunk else Position.start_of(plan)
            if here.offset >= plan.end or (status is not None and _skippable(counters.get(index), status)):
                continue
            if chunks_read == self._max_chunks or looked_at >= self._scan_rows:
                return items, here.cursor()
            chunks_read += 1
            wanted = self._scan_rows - looked_at if status else limit - len(items)
            records, after = self._read(batch, plan, here, wanted)
            looked_at += len(records)
            for n, row in enumerate(self._rows(batch, index, records)):
                if status is not None and row.status is not status:
                    continue
                items.append(row)
                if len(items) == limit:
                    if n + 1 < len(records):
                        nxt = records[n + 1]
                        return items, Position(index, nxt.number, nxt.start, nxt.line).cursor()
                    after = after or (None if index == order[-1] else _end_of(plan))
                    return items, after.cursor() if after else None
            if after is not None:
                return items, after.cursor()
        return items, None

    def _read(
        self, batch: BatchState, plan: ChunkPlan, here: Position, wanted: int
    ) -> tuple[list[CsvRecord], Position | None]:
        """Up to `wanted` valid records from `here`, and the position of the record after them
        (None when the chunk ended). The GET is closed as soon as they are read."""
        found: list[CsvRecord] = []
        with contextlib.closing(read_source(self._s3, batch.source, start=here.offset, end=plan.end)) as body:
            records = data_records(
                split_lines(body),
                width=len(batch.header or []),
                offset=here.offset,
                line=here.line,
                first_number=here.record,
                check=row_checker(batch.header or [], batch.row_rules),
            )
            for record in records:
                if len(found) == wanted:
                    return found, Position(plan.index, record.number, record.start, record.line)
                if record.fields is not None:
                    found.append(record)
        return found, None

    def _rows(self, batch: BatchState, chunk: int, records: list[CsvRecord]) -> Iterator[RowView]:
        if not records:
            return
        stored = self._ledger.rows.rows_between(batch.batch_id, chunk, records[0].number, records[-1].number)
        unfinished = any(
            stored.get(r.number) is None or stored[r.number].status not in _FINISHED for r in records
        )
        starts = self._ledger.rows.starts(batch.batch_id, chunk) if unfinished else {}
        for record in records:
            yield derive_row(batch, chunk, record, stored.get(record.number), starts.get(record.number))


def _end_of(plan: ChunkPlan) -> Position:
    """Past a chunk's last record: the next page goes on with the next chunk."""
    return Position(plan.index, plan.first_record, plan.end, plan.first_line)
