"""Every bad-input corpus case through the Ingestor (moto in-process): status, reason, row errors,
and the chunk plan read back the way the worker reads it."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from rowcall.csvsplit import data_records, scan_records, split_lines
from rowcall.ingest import IngestLimits, Ingestor, ObjectCreated
from rowcall.models import BatchState, BatchStatus, ChunkMessage, ChunkPlan, DoneMessage
from rowcall.source import read_source
from tests.corpus.cases import BY_NAME, CASES, CHUNK_ROWS, FILES, Case, readme_table

from .conftest import Aws

README = Path(__file__).resolve().parents[2] / "README.md"


def s3_calls(aws: Aws) -> Counter[str]:
    """Counts the S3 operations the code under test makes from here on (HeadObject, GetObject...)."""
    calls: Counter[str] = Counter()

    def count(model: Any, **_: Any) -> None:
        calls[model.name] += 1

    aws.s3.meta.events.register("before-call.s3", count)
    return calls


def ingest_case(aws: Aws, case: Case) -> tuple[BatchState | None, Counter[str]]:
    put = aws.s3.put_object(Bucket=aws.bucket, Key=case.s3_key, Body=case.body(), Metadata=case.metadata)
    calls = s3_calls(aws)
    ingestor = Ingestor(
        s3=aws.s3,
        ledger=aws.ledger,
        chunk_queue=aws.chunk_queue,
        finisher=aws.finisher,
        limits=IngestLimits(
            max_rows=case.max_rows,
            max_bytes=case.max_bytes,
            chunk_rows=CHUNK_ROWS,
            default_technique_id="tech-default",
        ),
    )
    created = ObjectCreated(
        bucket=aws.bucket,
        key=case.s3_key,
        version_id=put["VersionId"],
        sequencer="00A1",
        size=len(case.body()),
    )
    return ingestor.ingest(created), calls


def planned_chunks(aws: Aws) -> list[ChunkPlan]:
    return sorted(
        (ChunkMessage.model_validate_json(b).chunk for b in aws.drain(aws.chunk_queue_url)),
        key=lambda c: c.index,
    )


def first_fields_the_worker_reads(aws: Aws, batch: BatchState, chunks: list[ChunkPlan]) -> list[str]:
    """Each chunk read as the worker reads it (a ranged GET parsed by data_records): it must hold
    exactly `rows` runnable rows, or ingest and worker disagree about which rows run."""
    first_fields: list[str] = []
    for chunk in chunks:
        lines = split_lines(read_source(aws.s3, batch.source, start=chunk.start, end=chunk.end))
        records = data_records(
            lines,
            width=len(batch.header or []),
            offset=chunk.start,
            line=chunk.first_line,
            first_number=chunk.first_record,
        )
        runnable = [r.fields for r in records if r.fields is not None]
        assert len(runnable) == chunk.rows, f"chunk {chunk.index}"
        first_fields += [fields[0] for fields in runnable]
    return first_fields


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_each_corpus_case_gets_its_documented_outcome(aws: Aws, case: Case) -> None:
    expect = case.expect
    batch, calls = ingest_case(aws, case)
    done = [DoneMessage.model_validate_json(b) for b in aws.drain(aws.done_queue_url)]

    if expect.status == "ignored":
        assert batch is None
        assert aws.ledger.batches.list(10, None) == ([], None)
        assert (planned_chunks(aws), done, sum(calls.values())) == ([], [], 0)
        return

    assert batch is not None
    errors = list(aws.ledger.row_errors.of_batch(batch.batch_id))
    assert [(e.line, e.code) for e in errors] == list(expect.row_errors)
    assert all(e.message.startswith(f"line {e.line}: ") for e in errors)
    chunks = planned_chunks(aws)

    if expect.status == "failed":
        assert (batch.status, batch.reason) == (BatchStatus.FAILED, expect.reason)
        assert expect.message_has is not None and expect.message_has in (batch.reason_message or "")
        # Chunk messages are the only way a row reaches the provider: none means nothing was sent.
        assert (chunks, batch.total_count) == ([], None)
        assert [d.batch_id for d in done] == [batch.batch_id]  # a failed batch still notifies once
        if expect.reason == "file_too_large":
            assert calls["GetObject"] == 0, "decided from the object's size, before reading it"
        return

    assert expect.status == "completed"
    assert (batch.status, batch.reason, batch.total_count, batch.rows_skipped) == (
        BatchStatus.RUNNING if expect.rows else BatchStatus.COMPLETED,
        None,
        len(expect.rows),
        len(expect.row_errors),
    )
    assert [c.rows for c in chunks[:-1]] == [CHUNK_ROWS] * (len(chunks) - 1)
    assert first_fields_the_worker_reads(aws, batch, chunks) == list(expect.rows)
    assert calls["GetObject"] == 1 + len(chunks), "ingest reads the file once, the check once per chunk"


def test_the_one_mib_field_reaches_the_worker_whole(aws: Aws) -> None:
    batch, _ = ingest_case(aws, BY_NAME["wide_field_1mb"])
    assert batch is not None
    prompts: list[int] = []
    for chunk in planned_chunks(aws):
        lines = split_lines(read_source(aws.s3, batch.source, start=chunk.start, end=chunk.end))
        records = data_records(
            lines, width=3, offset=chunk.start, line=chunk.first_line, first_number=chunk.first_record
        )
        prompts += [len(r.fields[1]) for r in records if r.fields]
    assert prompts[1] == 1024 * 1024 and len(prompts) == 3


def test_a_rejected_file_keeps_the_row_errors_found_before_the_line_that_rejected_it(aws: Aws) -> None:
    ragged = b"sku,prompt\n" + b"".join(b"S%d,ok\nS%d-bad\n" % (n, n) for n in range(1, 151)) + b"\xe9\n"
    put = aws.s3.put_object(Bucket=aws.bucket, Key="uploads/late-latin1.csv", Body=ragged)
    batch = Ingestor(
        s3=aws.s3,
        ledger=aws.ledger,
        chunk_queue=aws.chunk_queue,
        finisher=aws.finisher,
        limits=IngestLimits(max_rows=1000, max_bytes=10**6, chunk_rows=10, default_technique_id="t"),
    ).ingest(ObjectCreated(bucket=aws.bucket, key="uploads/late-latin1.csv", version_id=put["VersionId"]))
    assert batch is not None and (batch.status, batch.reason) == (BatchStatus.FAILED, "invalid_encoding")
    assert "line 302 " in (batch.reason_message or "")
    # 150 errors: more than one flush of 100, and the last 50 are not lost with the rejection.
    assert [e.line for e in aws.ledger.row_errors.of_batch(batch.batch_id)] == list(range(3, 302, 2))
    assert planned_chunks(aws) == []


@pytest.mark.parametrize("name", sorted(p.name for p in FILES.glob("*.csv")))
def test_any_split_of_a_corpus_file_into_reads_gives_the_same_records(name: str) -> None:
    """S3 hands the file over in pieces; a CRLF or a UTF-8 character cut in two must not matter."""
    data = (FILES / name).read_bytes()

    def records(pieces: list[bytes]) -> list[tuple[int, int, int, int, list[str] | None, str | None]]:
        try:
            got = list(scan_records(split_lines(pieces)))
        except ValueError as exc:  # an encoding refusal is a result too, and must not move
            return [(-1, 0, 0, 0, None, str(exc))]
        return [(r.number, r.line, r.start, r.end, r.fields, r.error and r.error.code) for r in got]

    whole = records([data])
    for size in (1, 2, 3, 5, 7):
        assert records([data[i : i + size] for i in range(0, len(data), size)]) == whole, size


def test_the_corpus_has_enough_files_and_each_committed_file_is_used() -> None:
    committed = {p.name for p in FILES.glob("*.csv")}
    used = {case.file_name for case in CASES}
    assert committed <= used
    assert len(used) >= 25


def test_the_readme_table_is_the_corpus() -> None:
    section = README.read_text().split("## What a bad upload gets", 1)
    assert len(section) == 2, "README lacks the section"
    assert readme_table() in section[1], "README table is stale: paste tests.corpus.cases.readme_table()"
    assert re.search(r"\| case \| file \|", section[1])
