"""Streaming CSV records with the byte range and physical line of each, so chunks are byte ranges.

csv.reader pulls lines lazily, so counting the bytes of the lines handed to it gives exact record
boundaries without buffering the file. Ingest, worker and results parse with these same functions,
which is what makes a chunk's byte range mean the same rows to all three: every rule that skips a
row lives here, never in only one of them.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from rowcall.models import RowError

# Wide cells (long prompts, data URLs) are legitimate; the default 128 KiB limit is not a row rule.
MAX_FIELD_BYTES = 8 * 1024 * 1024
csv.field_size_limit(MAX_FIELD_BYTES)

_BOM = "\ufeff"


class CsvEncodingError(ValueError):
    """The bytes are not UTF-8 text: the whole file is rejected (`invalid_encoding`).

    Rejecting the file rather than skipping the lines is deliberate: a file with one non-UTF-8 byte
    is almost always wholly in another encoding (Latin-1/cp1252 from Excel, UTF-16), so skipping
    would run exactly the ASCII rows and silently drop every row with an accent.
    """

    def __init__(self, line: int, detail: str = "is not valid UTF-8") -> None:
        super().__init__(f"line {line} {detail}")
        self.line = line


@dataclass(frozen=True, slots=True)
class CsvRecord:
    number: int
    line: int
    start: int
    end: int
    fields: list[str] | None
    error: RowError | None


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Bytes in, lines out, each keeping its line end (a line may be the unterminated last one).

    A line ends at LF, CRLF or a lone CR (old Mac and some Excel exports): the same three that
    csv.reader and text editors accept, so physical line numbers match what the user sees.
    """
    pending = b""
    for chunk in chunks:
        if not chunk:
            continue
        # bytes.splitlines breaks at exactly those three (str's knows more), in C: about five
        # times faster than a regex over the chunk.
        lines = (pending + chunk if pending else chunk).splitlines(keepends=True)
        # A last line without LF is unfinished, or ends in a CR whose LF may be in the next
        # chunk: decide when it arrives.
        pending = b"" if lines[-1].endswith(b"\n") else lines.pop()
        yield from lines
    if pending:
        yield pending


class _LineFeed:
    """Decodes lines for csv.reader while counting the bytes and lines it has been handed."""

    def __init__(self, byte_lines: Iterable[bytes], offset: int, line: int) -> None:
        self._lines = iter(byte_lines)
        self.offset = offset
        self.next_line = line
        self._strip_bom = offset == 0

    def __iter__(self) -> _LineFeed:
        return self

    def __next__(self) -> str:
        raw = next(self._lines)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            detail = f"is not valid UTF-8 (byte 0x{raw[exc.start]:02X} at byte {exc.start + 1} of the line)"
            raise CsvEncodingError(self.next_line, detail) from None
        if "\x00" in text:
            # csv accepts NUL since 3.11, but no UTF-8 text file holds one: it is a UTF-16 file
            # without a BOM, a spreadsheet or other binary renamed .csv, or a damaged upload.
            raise CsvEncodingError(self.next_line, "contains a NUL byte: the file is binary or UTF-16")
        if self._strip_bom:
            self._strip_bom = False
            text = text.removeprefix(_BOM)
        self.offset += len(raw)
        self.next_line += 1
        return text


def _row_error(message: str, line: int) -> RowError:
    if "unexpected end of data" in message:
        # csv reads on to the end of the file looking for the closing quote, so everything after
        # this line is part of the one broken record; the rows before it are unaffected.
        return RowError(
            line=line,
            code="unterminated_quote",
            message=f"line {line}: a quoted field opened here is never closed",
        )
    if "field larger than field limit" in message:
        return RowError(
            line=line,
            code="field_too_large",
            message=f"line {line}: a field is longer than {MAX_FIELD_BYTES:,} characters",
        )
    if "expected after" in message:
        return RowError(line=line, code="invalid_quote", message=f"line {line}: malformed quoting: {message}")
    return RowError(line=line, code="malformed_row", message=f"line {line}: {message}")


def scan_records(
    byte_lines: Iterable[bytes], *, offset: int = 0, line: int = 1, first_number: int = 0
) -> Iterator[CsvRecord]:
    """Every non-blank record with its byte range; malformed ones carry an error instead of fields.

    The first record of a file (offset 0) is its header; callers number records so that the
    header is 0 and data records count from 1.
    """
    feed = _LineFeed(byte_lines, offset, line)
    reader = csv.reader(feed, strict=True)
    number = first_number
    while True:
        start, start_line = feed.offset, feed.next_line
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield CsvRecord(number, start_line, start, feed.offset, None, _row_error(str(exc), start_line))
            number += 1
            continue
        if not fields:
            continue
        yield CsvRecord(number, start_line, start, feed.offset, fields, None)
        number += 1


def validate_width(record: CsvRecord, width: int) -> CsvRecord:
    """A data record must have exactly one field per header column, and not all of them empty.

    A row of only commas is what spreadsheets export for formatted but empty rows; running it
    would send the provider empty inputs, so it is skipped like a blank line, but reported.
    """
    if record.fields is None:
        return record
    if len(record.fields) != width:
        error = RowError(
            line=record.line,
            code="column_count",
            message=f"line {record.line}: expected {width} fields, found {len(record.fields)}",
        )
    elif not any(record.fields):
        error = RowError(
            line=record.line, code="empty_row", message=f"line {record.line}: every field is empty"
        )
    else:
        return record
    return CsvRecord(record.number, record.line, record.start, record.end, None, error)


def data_records(
    byte_lines: Iterable[bytes],
    *,
    width: int,
    offset: int,
    line: int,
    first_number: int,
    check: Callable[[CsvRecord], CsvRecord] | None = None,
) -> Iterator[CsvRecord]:
    """Data records of a byte range that starts on a record boundary, validated against the header
    (and by `check`, the batch's row rules: the same records ingest skipped are skipped)."""
    for record in scan_records(byte_lines, offset=offset, line=line, first_number=first_number):
        checked = validate_width(record, width)
        yield checked if check is None else check(checked)
