"""`rowcall`'s own refusals, in process: one line on stderr and the exit code, before any request."""

from __future__ import annotations

from pathlib import Path

import pytest

from rowcall_client.cli import EXIT_ERROR, EXIT_USAGE, main


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err
    return lines[0]


@pytest.fixture
def csv(tmp_path: Path) -> Path:
    path = tmp_path / "a.csv"
    path.write_text("photo\nhttps://example.com/a.png\n")
    return path


def test_no_arguments_is_the_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("submit", "list", "status", "rows", "errors", "results", "up"))


@pytest.mark.parametrize(
    ("argv", "code", "line"),
    [
        (["bogus"], EXIT_USAGE, "rowcall: No such command 'bogus'. (see rowcall --help)"),
        (["status"], EXIT_USAGE, "rowcall: Missing argument 'ID'. (see rowcall --help)"),
        (["list", "--limit", "101"], EXIT_USAGE, "--limit"),
        (
            ["reprocess", "b_1", "--rows", " , "],
            EXIT_ERROR,
            "rowcall: --rows: name at least one row id (R1,R2)",
        ),
    ],
)
def test_bad_arguments_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], code: int, line: str
) -> None:
    assert main(argv) == code
    assert line in one_line(capsys)


@pytest.mark.parametrize(
    ("option", "value", "line"),
    [
        (
            "--input-types",
            "photo",
            "rowcall: --input-types: 'photo' is not column=type (e.g. photo=imageUrl)",
        ),
        ("--static-inputs", "[oops", "rowcall: --static-inputs: not JSON (Expecting value at character 1)"),
        ("--input-columns", ";", "rowcall: --input-columns: ';' names no column (write col1;col2)"),
    ],
)
def test_submit_refuses_malformed_metadata_before_any_request(
    capsys: pytest.CaptureFixture[str], csv: Path, tmp_path: Path, option: str, value: str, line: str
) -> None:
    # No stack in tmp_path: the refusal comes before the stack is even looked for.
    assert main(["--state-dir", str(tmp_path), "submit", str(csv), option, value]) == EXIT_ERROR
    assert one_line(capsys) == line


def test_no_local_stack_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--state-dir", str(tmp_path), "list"]) == EXIT_ERROR
    assert one_line(capsys).startswith(
        f"rowcall: no local stack is running ({tmp_path}/stack.json not found)"
    )
