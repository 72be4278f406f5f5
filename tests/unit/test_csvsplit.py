from __future__ import annotations

import csv
import io

from rowcall.csvsplit import CsvEncodingError, data_records, scan_records, split_lines

TRICKY = (
    "\ufeffid,prompt,note\r\n"
    '1,"a cat, on a mat","says ""hi"""\r\n'
    '2,"two\r\nlines",naïve café 東京\r\n'
    "3,short\r\n"
    '4,"x"y,bad quote\r\n'
    "\r\n"
    "5,last,row"
).encode()


def chunks_of(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_records_match_the_csv_module_and_carry_exact_byte_ranges() -> None:
    records = list(scan_records(split_lines(chunks_of(TRICKY, 7))))
    expected = list(csv.reader(io.StringIO(TRICKY.decode("utf-8-sig"), newline="")))
    good = [r.fields for r in records if r.fields is not None]
    assert good == [row for row in expected if row and row[0] != "4"]
    assert [r.number for r in records] == [0, 1, 2, 3, 4, 5]
    assert [r.line for r in records] == [1, 2, 3, 5, 6, 8]
    bad = [r for r in records if r.error]
    assert [(e.error.code, e.line) for e in bad if e.error] == [("invalid_quote", 6)]
    for record in records[1:]:
        piece = TRICKY[record.start : record.end].decode()
        if record.fields is not None:
            assert next(csv.reader(io.StringIO(piece, newline=""))) == record.fields


def test_a_byte_range_parses_to_the_same_records_as_the_whole_file() -> None:
    whole = list(scan_records(split_lines([TRICKY])))
    start, end = whole[2].start, whole[5].end
    part = list(
        data_records(
            split_lines(chunks_of(TRICKY[start:end], 5)),
            width=3,
            offset=start,
            line=whole[2].line,
            first_number=whole[2].number,
        )
    )
    assert [(r.number, r.line, r.start, r.end) for r in part] == [
        (r.number, r.line, r.start, r.end) for r in whole[2:6]
    ]
    assert [r.error.code for r in part if r.error] == ["column_count", "invalid_quote"]


def test_unterminated_quote_is_a_row_error_at_the_line_it_opens() -> None:
    data = b'a,b\n1,2\n3,"never closed\n4,5\n'
    records = list(scan_records(split_lines([data])))
    assert records[-1].error is not None
    assert (records[-1].error.code, records[-1].line) == ("unterminated_quote", 3)


def test_invalid_utf8_names_the_line() -> None:
    data = b"a,b\n1,2\n3,\xff\n"
    try:
        list(scan_records(split_lines([data])))
    except CsvEncodingError as exc:
        assert exc.line == 3
    else:
        raise AssertionError("expected CsvEncodingError")


def test_a_lone_cr_ends_a_line_and_a_crlf_cut_between_reads_stays_one_line_end() -> None:
    assert list(split_lines([b"a,b\r1,2\r", b"\n3,4\r", b"5,6"])) == [b"a,b\r", b"1,2\r\n", b"3,4\r", b"5,6"]
    records = list(scan_records(split_lines([b"a,b\r1,2\r\r\n3,4"])))
    assert [(r.line, r.fields) for r in records] == [(1, ["a", "b"]), (2, ["1", "2"]), (4, ["3", "4"])]


def test_a_nul_byte_refuses_the_file_at_its_line() -> None:
    try:
        list(scan_records(split_lines([b"a,b\n1,2\n3,\x004\n"])))
    except CsvEncodingError as exc:
        assert exc.line == 3 and "NUL" in str(exc)
    else:
        raise AssertionError("expected CsvEncodingError")


def test_a_row_of_only_empty_fields_is_an_error_a_row_with_one_value_is_not() -> None:
    records = list(data_records(split_lines([b",,\n,x,\n"]), width=3, offset=0, line=2, first_number=1))
    assert [(r.line, r.error and r.error.code) for r in records] == [(2, "empty_row"), (3, None)]
