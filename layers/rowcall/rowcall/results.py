"""The results CSV: every uploaded column in its order, then the row's outcome; and the row errors."""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING

from rowcall.csvsplit import scan_records, split_lines, validate_width
from rowcall.ledger import Ledger
from rowcall.models import BatchState, RowError, RowState
from rowcall.source import read_source

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

OUTCOME_COLUMNS = ["status", "run_id", "outputs", "error_code", "error_message"]
ERROR_COLUMNS = ["line", "code", "message"]
# Cells a spreadsheet would evaluate; prefixing a quote makes them text (OWASP CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
SPOOL_BYTES = 32 * 1024 * 1024


def escape_cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_START) else value


def results_key(batch_id: str) -> str:
    return f"results/{batch_id}/results.csv"


def errors_key(batch_id: str) -> str:
    return f"results/{batch_id}/row-errors.csv"


def _rows_in_file_order(ledger: Ledger, batch: BatchState) -> Iterator[RowState]:
    for chunk in range(batch.chunk_count or 0):
        yield from ledger.rows.rows_of_chunk(batch.batch_id, chunk)


def _outcome_cells(row: RowState | None) -> list[str]:
    if row is None:
        return ["pending", "", "", "", ""]
    outputs = json.dumps(row.outputs, separators=(",", ":")) if row.outputs else ""
    return [row.status.value, row.run_id or "", outputs, row.error_code or "", row.error_message or ""]


def write_results_csv(s3: S3Client, ledger: Ledger, batch: BatchState, out: IO[str]) -> int:
    """Merges the source file (read again, streamed) with the ledger's rows, both in file order."""
    header = batch.header or []
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([escape_cell(c) for c in header + OUTCOME_COLUMNS])
    if not header:
        return 0
    rows = _rows_in_file_order(ledger, batch)
    pending_row = next(rows, None)
    written = 0
    records = scan_records(split_lines(read_source(s3, batch.source)), first_number=0)
    next(records, None)  # the header
    for raw in records:
        record = validate_width(raw, len(header))
        if record.fields is None:
            continue
        while pending_row is not None and pending_row.record < record.number:
            pending_row = next(rows, None)
        match = pending_row if pending_row is not None and pending_row.record == record.number else None
        writer.writerow([escape_cell(c) for c in record.fields + _outcome_cells(match)])
        written += 1
    return written


def write_errors_csv(errors: Iterable[RowError], out: IO[str]) -> None:
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(ERROR_COLUMNS)
    for error in errors:
        writer.writerow([escape_cell(str(getattr(error, c))) for c in ERROR_COLUMNS])


def upload_results(s3: S3Client, ledger: Ledger, batch: BatchState) -> tuple[str, str]:
    """Spooled to memory, then disk past 32 MiB; upload_fileobj goes multipart for large files."""
    csv_key, err_key = results_key(batch.batch_id), errors_key(batch.batch_id)
    for key, fill in (
        (csv_key, lambda f: write_results_csv(s3, ledger, batch, f)),
        (err_key, lambda f: write_errors_csv(ledger.row_errors.of_batch(batch.batch_id), f)),
    ):
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, mode="w+b") as spool:
            text = io.TextIOWrapper(spool, encoding="utf-8", newline="")
            fill(text)
            text.flush()
            text.detach()
            spool.seek(0)
            s3.upload_fileobj(
                spool, batch.source.bucket, key, ExtraArgs={"ContentType": "text/csv; charset=utf-8"}
            )
    return csv_key, err_key
