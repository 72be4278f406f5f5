from __future__ import annotations

import json

import pytest

from rowcall.ingest import IngestLimits, Ingestor, ObjectCreated
from rowcall.models import BatchStatus, ChunkMessage, DoneMessage
from rowcall.queues import ChunkQueue

from .conftest import Aws


def upload(aws: Aws, key: str, body: bytes, **metadata: str) -> ObjectCreated:
    put = aws.s3.put_object(Bucket=aws.bucket, Key=key, Body=body, Metadata=metadata)
    return ObjectCreated(
        bucket=aws.bucket, key=key, version_id=put["VersionId"], sequencer="00A1", size=len(body)
    )


def ingestor(
    aws: Aws,
    *,
    chunk_rows: int = 10,
    max_rows: int = 1000,
    max_bytes: int = 10**6,
    queue: ChunkQueue | None = None,
) -> Ingestor:
    return Ingestor(
        s3=aws.s3,
        ledger=aws.ledger,
        chunk_queue=queue or aws.chunk_queue,
        finisher=aws.finisher,
        limits=IngestLimits(
            max_rows=max_rows, max_bytes=max_bytes, chunk_rows=chunk_rows, default_technique_id="tech-default"
        ),
    )


def csv_bytes(rows: int, *, bad_lines: tuple[int, ...] = ()) -> bytes:
    lines = ["sku,prompt"]
    for n in range(1, rows + 1):
        lines.append(f"S{n},prompt {n}")
        if n in bad_lines:
            lines.append("only-one-field")
    return ("\n".join(lines) + "\n").encode()


def chunk_messages(aws: Aws) -> list[ChunkMessage]:
    return [ChunkMessage.model_validate_json(b) for b in aws.drain(aws.chunk_queue_url)]


def test_ingest_plans_chunks_records_row_errors_and_sends_each_chunk_once(aws: Aws) -> None:
    created = upload(aws, "uploads/a.csv", csv_bytes(25, bad_lines=(3, 12)), **{"key-column": "sku"})
    batch = ingestor(aws).ingest(created)
    assert batch is not None
    assert (batch.status, batch.total_count, batch.rows_skipped, batch.chunk_count) == (
        BatchStatus.RUNNING,
        25,
        2,
        3,
    )
    messages = chunk_messages(aws)
    assert sorted(m.chunk.rows for m in messages) == [5, 10, 10]
    assert sorted(m.chunk.index for m in messages) == [0, 1, 2]
    errors = list(aws.ledger.row_errors.of_batch(batch.batch_id))
    assert [(e.line, e.code) for e in errors] == [(5, "column_count"), (15, "column_count")]


def test_the_same_s3_event_twice_is_one_batch(aws: Aws) -> None:
    created = upload(aws, "uploads/a.csv", csv_bytes(12))
    first = ingestor(aws).ingest(created)
    second = ingestor(aws).ingest(created)
    assert first is not None and second is not None
    assert first.batch_id == second.batch_id
    assert len(chunk_messages(aws)) == 2
    batches, _ = aws.ledger.batches.list(10, None)
    assert len(batches) == 1


def test_uploading_the_same_file_again_is_a_new_batch(aws: Aws) -> None:
    first = ingestor(aws).ingest(upload(aws, "uploads/a.csv", csv_bytes(3)))
    second = ingestor(aws).ingest(upload(aws, "uploads/a.csv", csv_bytes(3)))
    assert first is not None and second is not None and first.batch_id != second.batch_id


class FailingAfter(ChunkQueue):
    """A queue whose sender dies after some sends, as an invocation cut off mid-way would."""

    def __init__(self, inner: ChunkQueue, sends: int) -> None:
        self._inner, self._left = inner, sends

    def send(self, messages):  # type: ignore[no-untyped-def]
        if self._left == 0:
            raise TimeoutError("invocation cut off")
        self._left -= 1
        self._inner.send(messages)


def test_an_ingest_cut_off_half_way_resumes_without_sending_a_chunk_twice(aws: Aws) -> None:
    created = upload(aws, "uploads/big.csv", csv_bytes(35))
    with pytest.raises(TimeoutError):
        ingestor(aws, chunk_rows=1, queue=FailingAfter(aws.chunk_queue, sends=2)).ingest(created)
    batch = aws.ledger.batches.get(ingestor(aws).ingest(created).batch_id)  # type: ignore[union-attr]
    assert batch is not None and batch.status is BatchStatus.RUNNING
    indexes = [m.chunk.index for m in chunk_messages(aws)]
    assert sorted(indexes) == list(range(35))


def test_a_header_only_file_completes_with_no_rows(aws: Aws) -> None:
    batch = ingestor(aws).ingest(upload(aws, "uploads/h.csv", b"sku,prompt\r\n"))
    assert batch is not None
    assert (batch.status, batch.total_count) == (BatchStatus.COMPLETED, 0)
    done = [DoneMessage.model_validate_json(b) for b in aws.drain(aws.done_queue_url)]
    assert [d.batch_id for d in done] == [batch.batch_id]


@pytest.mark.parametrize(
    ("body", "limits", "meta", "reason"),
    [
        (b"", {}, {}, "empty_file"),
        (b"a,a\n1,2\n", {}, {}, "invalid_header"),
        (b"a,b\n1,2\n", {}, {"key-column": "nope"}, "invalid_metadata"),
        (b"a,b\n1,\xff\n", {}, {}, "invalid_encoding"),
        (csv_bytes(5), {"max_rows": 4}, {}, "row_count_exceeded"),
        (csv_bytes(5), {"max_bytes": 10}, {}, "file_too_large"),
        (b"a,b\n1,2\n", {}, {"static-inputs": "not json"}, "invalid_metadata"),
    ],
)
def test_a_rejected_file_fails_the_batch_and_starts_nothing(
    aws: Aws, body: bytes, limits: dict[str, int], meta: dict[str, str], reason: str
) -> None:
    batch = ingestor(aws, **limits).ingest(upload(aws, "uploads/bad.csv", body, **meta))
    assert batch is not None
    assert (batch.status, batch.reason) == (BatchStatus.FAILED, reason)
    assert batch.reason_message
    assert chunk_messages(aws) == []
    assert [json.loads(b)["batch_id"] for b in aws.drain(aws.done_queue_url)] == [batch.batch_id]


def test_a_deferred_chunk_is_hidden_for_its_backoff_only(aws: Aws) -> None:
    from rowcall.queues import RedeliverySchedule

    aws.sqs.set_queue_attributes(QueueUrl=aws.chunk_queue_url, Attributes={"VisibilityTimeout": "0"})
    aws.sqs.send_message(QueueUrl=aws.chunk_queue_url, MessageBody="{}")
    got = aws.sqs.receive_message(QueueUrl=aws.chunk_queue_url, AttributeNames=["All"])["Messages"][0]
    arn = aws.sqs.get_queue_attributes(QueueUrl=aws.chunk_queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    schedule = RedeliverySchedule(aws.sqs)
    assert schedule.retry_later(arn, got["ReceiptHandle"], receive_count=1) == 30
    assert aws.sqs.receive_message(QueueUrl=aws.chunk_queue_url).get("Messages", []) == []
    assert [schedule.delay_for(n) for n in (2, 3, 6, 20)] == [60, 120, 900, 900]


def test_an_on_done_lost_by_a_dying_ingest_is_sent_by_its_retry(aws: Aws) -> None:
    from datetime import timedelta

    from rowcall.finishing import BatchFinisher
    from rowcall.ledger import Ledger
    from rowcall.ledger.batches import REOFFER_AFTER_S
    from rowcall.models import utcnow
    from rowcall.queues import DoneQueue

    class Unreachable(DoneQueue):
        def send(self, message: DoneMessage, delay_seconds: int = 0) -> None:
            raise ConnectionError("SQS unreachable")

    created = upload(aws, "uploads/h.csv", b"sku,prompt\n")
    dying = ingestor(aws)
    dying._finisher = BatchFinisher(aws.ledger, Unreachable(aws.sqs, aws.done_queue_url))
    with pytest.raises(ConnectionError):
        dying.ingest(created)  # finished the empty batch, died handing over its on-done
    later = Ledger(aws.dynamodb, aws.table, clock=lambda: utcnow() + timedelta(seconds=REOFFER_AFTER_S + 1))
    retry = ingestor(aws)
    retry._finisher = BatchFinisher(later, aws.done_queue)
    batch = retry.ingest(created)
    assert batch is not None and batch.status is BatchStatus.COMPLETED
    assert [DoneMessage.model_validate_json(b).batch_id for b in aws.drain(aws.done_queue_url)] == [
        batch.batch_id
    ]


@pytest.mark.parametrize("status", [403, 404])
def test_an_upload_deleted_before_its_ingest_is_gone_on_403_or_404(aws: Aws, status: int) -> None:
    """S3 answers a HEAD of a deleted version 404 to a caller with s3:ListBucket and 403 to one
    without, as the ingest role is: both are the object gone, not an error to retry into the failure
    queue (the embedded S3 answers 403 so under --enforce-iam: tests/e2e/test_least_privilege.py)."""
    from botocore.stub import Stubber

    ingestor = Ingestor(
        s3=aws.s3,
        ledger=aws.ledger,
        chunk_queue=aws.chunk_queue,
        finisher=aws.finisher,
        limits=IngestLimits(max_rows=10, max_bytes=10**6, chunk_rows=4, default_technique_id="tech"),
    )
    with Stubber(aws.s3) as stubbed:
        stubbed.add_client_error("head_object", service_error_code=str(status), http_status_code=status)
        gone = ingestor.ingest(ObjectCreated(bucket=aws.bucket, key="uploads/gone.csv", version_id="v1"))
        stubbed.assert_no_pending_responses()
    assert gone is None
    assert aws.ledger.batches.list(10, None)[0] == []
    # Any other refusal is still an error: Lambda retries it, then the failure queue holds it.
    with Stubber(aws.s3) as stubbed, pytest.raises(Exception, match="SlowDown"):
        stubbed.add_client_error("head_object", service_error_code="SlowDown", http_status_code=503)
        ingestor.ingest(ObjectCreated(bucket=aws.bucket, key="uploads/gone.csv", version_id="v1"))
