"""The results CSV: every uploaded column in its order, then the row's outcome; and the row errors."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from rowcall.csvsplit import scan_records, split_lines, validate_width
from rowcall.input_checks import row_checker
from rowcall.ledger import Ledger
from rowcall.models import BatchState, RowError, RowState, usd_text
from rowcall.row_listing import row_charged_usd
from rowcall.source import read_source
from rowcall.streaming_upload import StreamingUpload

if TYPE_CHECKING:
    from _typeshed import SupportsWrite
    from mypy_boto3_s3 import S3Client

OUTCOME_COLUMNS = [
    "status",
    "run_id",
    "outputs",
    "error_code",
    "error_message",
    "charged_cost_usd",
    "reused_from",
    "saved_outputs",
]
ERROR_COLUMNS = ["line", "code", "message"]
# Cells a spreadsheet would evaluate; prefixing a quote makes them text (OWASP CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
CONTENT_TYPE = "text/csv; charset=utf-8"


def escape_cell(value: str) -> str:
    return "'" + value if value.startswith(_FORMULA_START) else value


def results_key(batch_id: str) -> str:
    return f"results/{batch_id}/results.csv"


def errors_key(batch_id: str) -> str:
    return f"results/{batch_id}/row-errors.csv"


def _rows_in_file_order(ledger: Ledger, batch: BatchState) -> Iterator[RowState]:
    """One query page of one chunk's rows in memory at a time (row keys sort in file order)."""
    for chunk in range(batch.chunk_count or 0):
        yield from ledger.rows.outcomes_of_chunk(batch.batch_id, chunk)


def _outcome_cells(batch: BatchState, row: RowState | None) -> list[str]:
    if row is None:
        return ["pending"] + [""] * (len(OUTCOME_COLUMNS) - 1)
    outputs = json.dumps(row.outputs, separators=(",", ":")) if row.outputs else ""
    charged = row_charged_usd(batch, row)
    saved = [s["key"] for s in row.saved_outputs if s.get("key")]
    return [
        row.status.value,
        row.run_id or "",
        outputs,
        row.error_code or "",
        row.error_message or "",
        "" if charged is None else usd_text(charged),
        (row.reused_from or {}).get("batch_id", ""),
        json.dumps(saved, separators=(",", ":")) if saved else "",
    ]


def write_results_csv(s3: S3Client, ledger: Ledger, batch: BatchState, out: SupportsWrite[str]) -> int:
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
    check = row_checker(header, batch.row_rules)
    for raw in records:
        record = validate_width(raw, len(header))
        record = record if check is None else check(record)
        if record.fields is None:
            continue
        while pending_row is not None and pending_row.record < record.number:
            pending_row = next(rows, None)
        match = pending_row if pending_row is not None and pending_row.record == record.number else None
        writer.writerow([escape_cell(c) for c in record.fields + _outcome_cells(batch, match)])
        written += 1
    return written


def write_errors_csv(errors: Iterable[RowError], out: SupportsWrite[str]) -> None:
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(ERROR_COLUMNS)
    for error in errors:
        writer.writerow([escape_cell(str(getattr(error, c))) for c in ERROR_COLUMNS])


def upload_results(s3: S3Client, ledger: Ledger, batch: BatchState) -> tuple[str, str]:
    """Both files streamed to S3 as they are rendered: memory holds one part and one page of
    rows whatever the batch's size, and nothing is written to /tmp."""
    csv_key, err_key = results_key(batch.batch_id), errors_key(batch.batch_id)
    bucket = batch.source.bucket
    with StreamingUpload(s3, bucket, csv_key, content_type=CONTENT_TYPE) as out:
        write_results_csv(s3, ledger, batch, out)
    with StreamingUpload(s3, bucket, err_key, content_type=CONTENT_TYPE) as out:
        write_errors_csv(ledger.row_errors.of_batch(batch.batch_id), out)
    return csv_key, err_key
