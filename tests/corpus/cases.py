"""The bad-input corpus: each case is a file (committed under files/, or generated here at test
time when it is large), the metadata it is uploaded with, and what it must get (README table).

Unit tests run every case through the Ingestor; the e2e test uploads a subset to the real local
stack. Both read the expectations from here, and the README table is rendered from them, so the
documented outcome is the tested one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

FILES = Path(__file__).resolve().parent / "files"

# The batch caps every case runs under (unit Ingestor limits and the e2e stack's flags), unless a
# case sets its own.
MAX_ROWS = 100
MAX_BYTES = 2 * 1024 * 1024
# Small, so that the chunk plans of these few-row files have more than one chunk.
CHUNK_ROWS = 2

HEADER = "sku,prompt,image"
GOOD_META = {"key-column": "sku", "input-types": "image=imageUrl"}


def _row(n: int, prompt: str | None = None) -> str:
    return f"S{n},{prompt if prompt is not None else f'a red bicycle number {n}'},https://img.example/{n}.png"


def _lines(*lines: str, end: str = "\n") -> bytes:
    return (end.join(lines) + end).encode()


def wide_field_1mb() -> bytes:
    return _lines(HEADER, _row(1), _row(2, "x" * 1024 * 1024), _row(3))


def field_over_limit() -> bytes:
    return _lines(HEADER, _row(1), _row(2, "x" * 9 * 1024 * 1024), _row(3))


def blank_lines_5000() -> bytes:
    blanks = "".join("\n" if n % 2 else "\r\n" for n in range(5000))
    return (f"{HEADER}\n{_row(1)}\n{blanks}S2,two fields\n{_row(3)}\n").encode()


def too_many_rows() -> bytes:
    return _lines(HEADER, *(_row(n) for n in range(1, MAX_ROWS + 2)))


def too_large() -> bytes:
    row = _row(1, "p" * 1000) + "\n"
    return (HEADER + "\n" + row * (MAX_BYTES // len(row) + 1)).encode()


def many_row_errors() -> bytes:
    """250 ragged rows between 250 good ones: more row errors than the ingest writes at once."""
    return _lines(HEADER, *(line for n in range(1, 251) for line in (_row(n), f"S{n}-bad,ragged")))


@dataclass(frozen=True)
class Expect:
    """What a case gets. `status` is the batch's final status, or "ignored" for no batch at all."""

    status: str
    reason: str | None = None
    # A fragment the reason message must hold: the field or line at fault.
    message_has: str | None = None
    # (physical line, code) of every row error, in line order.
    row_errors: tuple[tuple[int, str], ...] = ()
    # The first field of every row that runs, in file order.
    rows: tuple[str, ...] = ()


@dataclass(frozen=True)
class Case:
    name: str
    what: str
    expect: Expect
    file: str | None = None  # under files/; None: the generator makes it
    generate: Callable[[], bytes] | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    key: str | None = None
    max_rows: int = MAX_ROWS
    max_bytes: int = MAX_BYTES

    @property
    def s3_key(self) -> str:
        return self.key or f"uploads/corpus/{self.name}.csv"

    @property
    def file_name(self) -> str:
        return self.file or f"{self.name}.csv"

    @property
    def generated(self) -> bool:
        return self.generate is not None

    def body(self) -> bytes:
        if self.generate is not None:
            return self.generate()
        return (FILES / self.file_name).read_bytes()


def _rows(*numbers: int) -> tuple[str, ...]:
    return tuple(f"S{n}" for n in numbers)


def _failed(reason: str, message_has: str) -> Expect:
    return Expect(status="failed", reason=reason, message_has=message_has)


def _meta(name: str, what: str, metadata: dict[str, str], message_has: str, file: str = "good.csv") -> Case:
    return Case(name, what, _failed("invalid_metadata", message_has), file=file, metadata=metadata)


_REF = {"id": "reference_0", "type": "imageUrl", "value": "https://img.example/ref.png"}

CASES: tuple[Case, ...] = (
    Case(
        "good", "the control: three good rows", Expect("completed", rows=_rows(1, 2, 3)), metadata=GOOD_META
    ),
    Case("empty", "0 bytes", _failed("empty_file", "no header")),
    Case("blank_lines_only", "only line ends (LF and CRLF)", _failed("empty_file", "no header")),
    Case("bom_only", "a UTF-8 BOM and a line end", _failed("empty_file", "no header")),
    Case("header_only", "a header, CRLF, no rows", Expect("completed")),
    Case("header_only_no_line_end", "a header without a line end", Expect("completed")),
    Case("blank_header_name", "header `sku,,image`", _failed("invalid_header", "column 2 has no name")),
    Case("duplicate_header", "header names `prompt` twice", _failed("invalid_header", "duplicate column")),
    Case(
        "header_unterminated_quote",
        "the header opens a quote it never closes",
        _failed("invalid_header", "never closed"),
    ),
    Case(
        "bom",
        "UTF-8 BOM before the header; `key-column: sku` (the first column)",
        Expect("completed", rows=_rows(1, 2, 3)),
        metadata={"key-column": "sku"},
    ),
    Case(
        "crlf",
        "CRLF line ends, a two-field row on line 3",
        Expect("completed", row_errors=((3, "column_count"),), rows=_rows(1, 3, 4)),
    ),
    Case(
        "lone_cr",
        "lone-CR line ends (old Mac Excel), a two-field row on line 4",
        Expect("completed", row_errors=((4, "column_count"),), rows=_rows(1, 2, 4)),
    ),
    Case(
        "mixed_line_ends",
        "LF, CRLF and CR mixed, no final line end, a one-field row on line 5",
        Expect("completed", row_errors=((5, "column_count"),), rows=_rows(1, 2, 3, 4)),
    ),
    Case(
        "quoted_newlines",
        'quoted cells holding LF, CRLF and CR, `""` and commas; a two-field row on line 7',
        Expect("completed", row_errors=((7, "column_count"),), rows=_rows(1, 2, 4)),
    ),
    Case(
        "too_many_columns",
        "a four-field row (line 3) and a trailing comma (line 5)",
        Expect("completed", row_errors=((3, "column_count"), (5, "column_count")), rows=_rows(1, 3)),
    ),
    Case(
        "too_few_columns",
        "a two-field row (line 3) and a whitespace-only line (line 4)",
        Expect("completed", row_errors=((3, "column_count"), (4, "column_count")), rows=_rows(1, 4)),
    ),
    Case(
        "stray_quote",
        'text after a closing quote (line 3); a `5"` inside an unquoted cell is fine',
        Expect("completed", row_errors=((3, "invalid_quote"),), rows=_rows(1, 3)),
    ),
    Case(
        "unterminated_quote",
        "line 4 opens a quote never closed; it swallows the rest of the file",
        Expect("completed", row_errors=((4, "unterminated_quote"),), rows=_rows(1, 2)),
    ),
    Case(
        "empty_rows",
        "rows of only commas (lines 3-5), as spreadsheets export formatted empty rows",
        Expect(
            "completed",
            row_errors=((3, "empty_row"), (4, "empty_row"), (5, "empty_row")),
            rows=_rows(1, 5),
        ),
    ),
    Case(
        "all_rows_ragged",
        "every data row has the wrong number of fields",
        Expect("completed", row_errors=((2, "column_count"), (3, "column_count"), (4, "column_count"))),
    ),
    Case(
        "invalid_utf8",
        "bytes `FF FE` inside line 3",
        _failed("invalid_encoding", "line 3 is not valid UTF-8 (byte 0xFF at byte 8"),
    ),
    Case(
        "latin1",
        "Latin-1 `café` on line 2",
        _failed("invalid_encoding", "line 2 is not valid UTF-8 (byte 0xE9"),
    ),
    Case("utf16", "UTF-16 with its BOM", _failed("invalid_encoding", "line 1 is not valid UTF-8 (byte 0xFF")),
    Case("nul_byte", "a NUL byte inside line 3", _failed("invalid_encoding", "line 3 contains a NUL byte")),
    Case(
        "xlsx_renamed",
        "a zip (an .xlsx) renamed .csv",
        _failed("invalid_encoding", "line 1 is not valid UTF-8"),
    ),
    Case(
        "wide_field_1mb",
        "a 1 MiB prompt on line 3",
        Expect("completed", rows=_rows(1, 2, 3)),
        generate=wide_field_1mb,
    ),
    Case(
        "wide_key_1mb",
        "wide_field_1mb with `key-column: prompt`: a 1 MiB row key (its name is cut to 1,024 characters)",
        Expect("completed", rows=_rows(1, 2, 3)),
        generate=wide_field_1mb,
        metadata={"key-column": "prompt"},
    ),
    Case(
        "field_over_limit",
        "a 9 MiB cell on line 3, over the 8 MiB field limit",
        Expect("completed", row_errors=((3, "field_too_large"),), rows=_rows(1, 3)),
        generate=field_over_limit,
        max_bytes=16 * 1024 * 1024,
    ),
    Case(
        "blank_lines_5000",
        "5,000 blank lines (LF and CRLF) between rows, then a two-field row",
        Expect("completed", row_errors=((5003, "column_count"),), rows=_rows(1, 3)),
        generate=blank_lines_5000,
    ),
    Case(
        "many_row_errors",
        "250 good rows each followed by a ragged one",
        Expect(
            "completed",
            row_errors=tuple((n, "column_count") for n in range(3, 502, 2)),
            rows=_rows(*range(1, 251)),
        ),
        generate=many_row_errors,
        max_rows=1000,
    ),
    Case(
        "too_many_rows",
        f"{MAX_ROWS + 1} rows under `--max-rows {MAX_ROWS}`",
        _failed("row_count_exceeded", f"line {MAX_ROWS + 2} is data row {MAX_ROWS + 1}"),
        generate=too_many_rows,
    ),
    Case(
        "too_large",
        f"{MAX_BYTES:,} bytes + 1 row under `--max-bytes {MAX_BYTES}`",
        _failed("file_too_large", f"at most {MAX_BYTES:,}"),
        generate=too_large,
    ),
    Case(
        "outside_uploads",
        "a good CSV put under `elsewhere/`, not `uploads/`",
        Expect("ignored"),
        file="good.csv",
        key="elsewhere/outside_uploads.csv",
    ),
    Case(
        "folder_marker",
        "`uploads/corpus/folder/`, the 0-byte object a console makes for a folder",
        Expect("ignored"),
        file="empty.csv",
        key="uploads/corpus/folder/",
    ),
    _meta(
        "meta_input_types_syntax",
        "`input-types: image:imageUrl`",
        {"input-types": "image:imageUrl"},
        "input-types: 'image:imageUrl' is not column=type",
    ),
    _meta(
        "meta_input_types_unknown",
        "`input-types: image=gif`",
        {"input-types": "image=gif"},
        "input-types: unknown type(s) ['gif']",
    ),
    _meta(
        "meta_input_types_no_column",
        "`input-types: photo=imageUrl`, no column `photo`",
        {"input-types": "photo=imageUrl"},
        "input-types: ['photo'] not column(s) of the header",
    ),
    _meta(
        "meta_static_inputs_not_json",
        "`static-inputs: https://img.example/ref.png`",
        {"static-inputs": "https://img.example/ref.png"},
        "static-inputs: not JSON",
    ),
    _meta(
        "meta_static_inputs_not_list",
        "`static-inputs` is one JSON object, not a list",
        {"static-inputs": json.dumps(_REF)},
        "static-inputs: must be a JSON list",
    ),
    _meta(
        "meta_static_inputs_bad_entry",
        "`static-inputs` entry without `type`",
        {"static-inputs": json.dumps([{"id": "reference_0", "value": "https://img.example/ref.png"}])},
        "static-inputs[0]: type: Field required",
    ),
    _meta(
        "meta_static_inputs_clash",
        "`static-inputs` id `prompt`, also a column",
        {"static-inputs": json.dumps([{"id": "prompt", "type": "text", "value": "x"}])},
        "static-inputs: id(s) ['prompt'] are also input columns",
    ),
    _meta(
        "meta_key_column_no_column",
        "`key-column: id`, no column `id`",
        {"key-column": "id"},
        "key-column: 'id' is not a column of the header (sku, prompt, image)",
    ),
    _meta(
        "meta_input_columns_no_column",
        "`input-columns: prompt;caption`, no column `caption`",
        {"input-columns": "prompt;caption"},
        "input-columns: ['caption'] not column(s)",
    ),
    _meta(
        "meta_input_columns_empty",
        "`input-columns: ;`",
        {"input-columns": ";"},
        "input-columns: ';' names no column",
    ),
    _meta(
        "meta_key_column_only_column",
        "`key-column: sku` on a one-column file",
        {"key-column": "sku"},
        "key-column: 'sku' is the only column",
        file="single_column.csv",
    ),
    _meta(
        "meta_on_done_url_not_http",
        "`on-done-url: ftp://hooks.example/done`",
        {"on-done-url": "ftp://hooks.example/done"},
        "on-done-url: 'ftp://hooks.example/done' is not an http(s) URL",
    ),
    _meta(
        "meta_on_done_url_no_host",
        "`on-done-url: https:///done`",
        {"on-done-url": "https:///done"},
        "on-done-url: 'https:///done' is not an http(s) URL with a host",
    ),
    _meta(
        "meta_on_done_url_plain_http",
        "`on-done-url: http://93.184.216.34/done` (plain http to a public host)",
        {"on-done-url": "http://93.184.216.34/done"},
        "on-done-url: must be https",
    ),
    _meta(
        "meta_on_done_url_metadata",
        "`on-done-url: https://169.254.169.254/latest/meta-data/`, the instance metadata service",
        {"on-done-url": "https://169.254.169.254/latest/meta-data/"},
        "on-done-url: host 169.254.169.254 is a link-local address (cloud instance metadata)",
    ),
    _meta(
        "meta_on_done_url_private_v6",
        "`on-done-url: https://[fd00:ec2::254]/`, the metadata service over IPv6",
        {"on-done-url": "https://[fd00:ec2::254]/"},
        "on-done-url: host fd00:ec2::254 is a unique-local address (cloud instance metadata)",
    ),
)

BY_NAME = {case.name: case for case in CASES}


def _outcome(expect: Expect) -> str:
    if expect.status == "ignored":
        return "ignored: no batch, nothing read"
    if expect.status == "failed":
        return f"`failed`, `{expect.reason}`: “{expect.message_has}…”"
    runs = f"`{expect.status}`, {len(expect.rows)} row{'s' if len(expect.rows) != 1 else ''} run"
    if not expect.row_errors:
        return runs
    codes = sorted({code for _, code in expect.row_errors})
    lines = [str(line) for line, _ in expect.row_errors]
    shown = ", ".join(lines) if len(lines) <= 4 else f"{lines[0]}, {lines[1]}, … {lines[-1]} ({len(lines)})"
    at = "line" if len(lines) == 1 else "lines"
    return f"{runs}; row errors `{'`, `'.join(codes)}` at {at} {shown}"


def readme_table() -> str:
    """The README's "What a bad upload gets" table, rendered from the cases above."""
    lines = ["| case | file | what it is | outcome |", "| --- | --- | --- | --- |"]
    for case in CASES:
        where = f"`{case.file_name}`" + ("" if case.key is None else f" at `{case.key}`")
        generated = " (generated)" if case.generated else ""
        lines.append(f"| {case.name} | {where}{generated} | {case.what} | {_outcome(case.expect)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import sys

    # python -m tests.corpus.cases DIR: writes every case's file (generated ones too) into DIR.
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for case in CASES:
        (out / case.file_name).write_bytes(case.body())
