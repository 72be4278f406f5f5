"""results.csv and row-errors.csv go to S3 as they are rendered: parts of at least 5 MiB, nothing
left behind on failure, and memory that does not grow with the batch."""

from __future__ import annotations

import csv
import io
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse

from rowcall.ingest import IngestLimits, Ingestor, ObjectCreated
from rowcall.models import RowOutcome, RowStatus, SourceObject
from rowcall.results import errors_key, results_key, upload_results, write_errors_csv, write_results_csv
from rowcall.streaming_upload import MIN_PART_BYTES, StreamingUpload
from rowcall_local.moto_process import MotoProcess

from .conftest import LOOPBACK_ALLOWED, Aws, chunk_messages
from .synthetic_batch import RecordingS3, RowPages, Shape, batch_state, ledger, source_lines

MIB = 1024 * 1024
CSV = "text/csv; charset=utf-8"


def wide_batch(aws: Aws, rows: int, cell_bytes: int) -> str:
    """Rows with one wide cell each, so a few dozen rows make several parts; the last row is bad."""
    lines = ["sku,prompt"] + [f"S{n},{('=' if n % 7 == 0 else 'p') + 'x' * cell_bytes}" for n in range(rows)]
    body = ("\r\n".join(lines) + "\r\nonly,two,many\r\n").encode()
    put = aws.s3.put_object(Bucket=aws.bucket, Key="uploads/wide.csv", Body=body)
    batch = Ingestor(
        s3=aws.s3,
        ledger=aws.ledger,
        chunk_queue=aws.chunk_queue,
        finisher=aws.finisher,
        limits=IngestLimits(max_rows=1000, max_bytes=10**9, chunk_rows=8, default_technique_id="tech"),
        destinations=LOOPBACK_ALLOWED,
    ).ingest(ObjectCreated(bucket=aws.bucket, key="uploads/wide.csv", version_id=put["VersionId"]))
    assert batch is not None
    for message in chunk_messages(aws):
        plan = message.chunk
        for record in range(plan.first_record, plan.first_record + plan.rows):
            outcome = RowOutcome(status=RowStatus.COMPLETED, run_id=f"run_{record}", outputs=[{"v": record}])
            if record % 5 == 0:
                outcome = RowOutcome(status=RowStatus.FAILED, error_code="refused", error_message="=no")
            if record % 3:  # every third row stays pending
                aws.ledger.rows.finish(batch.batch_id, plan.index, record, outcome, attempt=1)
    return batch.batch_id


def test_results_go_up_in_parts_of_at_least_5_mib_and_equal_the_rendering(aws: Aws) -> None:
    batch_id = wide_batch(aws, rows=40, cell_bytes=512 * 1024)
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None
    s3 = RecordingS3(aws.s3)

    assert upload_results(s3, aws.ledger, batch) == (results_key(batch_id), errors_key(batch_id))

    rendered = io.StringIO(newline="")
    write_results_csv(aws.s3, aws.ledger, batch, rendered)
    stored = aws.s3.get_object(Bucket=aws.bucket, Key=results_key(batch_id))
    assert stored["Body"].read() == rendered.getvalue().encode()
    assert stored["ContentType"] == CSV
    parts = s3.log.sizes[results_key(batch_id)]
    assert len(parts) >= 3 and all(p >= MIN_PART_BYTES for p in parts[:-1]) and parts[-1] > 0
    assert sum(parts) == stored["ContentLength"]
    rows = list(csv.reader(io.StringIO(rendered.getvalue(), newline="")))
    assert rows[8][1].startswith("'=x") and rows[3][2] == "pending"
    assert rows[2][2:] == ["completed", "run_2", '[{"v":2}]', "", "", "", "", ""]
    assert rows[10][2:] == ["failed", "", "", "refused", "'=no", "0", "", ""]

    errors = io.StringIO(newline="")
    write_errors_csv(aws.ledger.row_errors.of_batch(batch_id), errors)
    assert aws.s3.get_object(Bucket=aws.bucket, Key=errors_key(batch_id))["Body"].read() == (
        errors.getvalue().encode()
    )
    assert s3.log.sizes[errors_key(batch_id)] == [len(errors.getvalue())]  # one PutObject
    assert s3.log.completed == [results_key(batch_id)] and s3.log.aborted == []
    assert "Uploads" not in aws.s3.list_multipart_uploads(Bucket=aws.bucket)


def test_a_failure_half_way_aborts_the_upload_and_writes_nothing(aws: Aws) -> None:
    s3 = RecordingS3(aws.s3)
    writer = StreamingUpload(s3, aws.bucket, "results/x.csv", content_type=CSV, part_bytes=MIN_PART_BYTES)
    with pytest.raises(RuntimeError), writer as out:
        out.write("x" * (MIN_PART_BYTES + 10))
        assert s3.log.sizes["results/x.csv"] == [MIN_PART_BYTES + 10]
        raise RuntimeError("the ledger went away")
    assert s3.log.aborted == ["results/x.csv"]
    assert "Uploads" not in aws.s3.list_multipart_uploads(Bucket=aws.bucket)
    assert "Contents" not in aws.s3.list_objects_v2(Bucket=aws.bucket, Prefix="results/")


def test_a_part_answered_slow_down_is_sent_again(aws: Aws) -> None:
    """S3's 503 SlowDown (what --aws-fault-rate injects) on the first UploadPart: botocore's
    default retries send the part again from its start, and the object is whole."""
    refused: list[str] = []

    def slow_down_once(request: Any, **_: Any) -> AWSResponse | None:
        if refused:
            return None
        refused.append(request.url)
        body = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
        return AWSResponse(request.url, 503, {"Content-Type": "application/xml"}, _Raw(body))

    aws.s3.meta.events.register_first("before-send.s3.UploadPart", slow_down_once)
    text = "".join(f"{n:09d}\r\n" for n in range(700_000))  # 7 MB: two parts
    with StreamingUpload(
        aws.s3, aws.bucket, "results/r.csv", content_type=CSV, part_bytes=MIN_PART_BYTES
    ) as out:
        out.write(text[: 6 * MIB])
        out.write(text[6 * MIB :])
    assert len(refused) == 1 and "partNumber=1" in refused[0]
    assert aws.s3.get_object(Bucket=aws.bucket, Key="results/r.csv")["Body"].read() == text.encode()


class _Raw(io.BytesIO):
    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.getvalue()


@pytest.fixture(scope="module")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """S3 in moto's server process (strict, as `rowcall up` runs it), so the objects it keeps are
    not in this process's traced memory."""
    server = MotoProcess(Path(tmp_path_factory.mktemp("moto")) / "moto.log")
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=server.start(),
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        s3.create_bucket(Bucket="scale")
        yield s3
    finally:
        server.stop()


def traced_peak_of_results(s3: Any, shape: Shape) -> tuple[int, list[int]]:
    key = f"uploads/{shape.rows}.csv"
    with StreamingUpload(s3, "scale", key, content_type=CSV) as out:
        for line in source_lines(shape):
            out.write(line.decode())
    batch = batch_state(shape, SourceObject(bucket="scale", key=key), batch_id=f"b{shape.rows}")
    pages = RowPages(shape, batch_id=batch.batch_id)
    recording = RecordingS3(s3)
    tracemalloc.start()
    try:
        upload_results(recording, ledger(pages), batch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert pages.items == shape.rows - shape.rows // shape.pending_every
    return peak, recording.log.sizes[results_key(batch.batch_id)]


def test_memory_stays_flat_from_n_to_4n_rows(moto_s3: Any) -> None:
    """8 KB prompts make 1,100 rows ~8.6 MB of results and 4,400 rows ~34 MB (five parts): the
    peak is one part's buffer, a page of rows and a source chunk either way, never the file."""
    small, small_parts = traced_peak_of_results(
        moto_s3, Shape(rows=1_100, prompt_bytes=8_000, chunk_rows=500)
    )
    large, large_parts = traced_peak_of_results(
        moto_s3, Shape(rows=4_400, prompt_bytes=8_000, chunk_rows=500)
    )
    assert len(small_parts) == 2 and len(large_parts) == 5
    assert all(p >= MIN_PART_BYTES for p in large_parts[:-1])
    assert large < 16 * MIB < 2 * 16 * MIB < sum(large_parts), (small, large, sum(large_parts))
    assert large < small + 2 * MIB, (small, large)
