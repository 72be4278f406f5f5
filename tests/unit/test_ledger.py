from __future__ import annotations

from datetime import timedelta

from rowcall.ledger import REOFFER_AFTER_S, Ledger
from rowcall.models import (
    BatchSpec,
    BatchState,
    BatchStatus,
    ChunkPlan,
    DoneMessage,
    RowOutcome,
    RowStatus,
    SourceObject,
    utcnow,
)

from .conftest import Aws


def running_batch(aws: Aws, rows_per_chunk: list[int], batch_id: str = "b_test") -> str:
    ledger = aws.ledger
    ledger.open_batch(
        BatchState(
            batch_id=batch_id,
            name="t",
            source=SourceObject(bucket=aws.bucket, key="uploads/t.csv"),
            spec=BatchSpec(technique_id="t", name="t"),
            status=BatchStatus.VALIDATING,
            created_at="2026-01-01T00:00:00.000Z",
            updated_at="2026-01-01T00:00:00.000Z",
        )
    )
    chunks = [
        ChunkPlan(index=i, start=1, end=2, first_record=1, first_line=2, rows=n)
        for i, n in enumerate(rows_per_chunk)
    ]
    assert ledger.record_plan(batch_id, header=["a"], chunks=chunks, rows_skipped=0)
    return batch_id


DONE = RowOutcome(status=RowStatus.COMPLETED, run_id="run_1", outputs=[{"url": "u"}])


def done_messages(aws: Aws) -> list[DoneMessage]:
    return [DoneMessage.model_validate_json(b) for b in aws.drain(aws.done_queue_url)]


def test_a_duplicate_outcome_changes_nothing(aws: Aws) -> None:
    batch_id = running_batch(aws, [2])
    assert aws.ledger.row_finished(batch_id, 0, 1, DONE, attempt=1)
    assert not aws.ledger.row_finished(batch_id, 0, 1, DONE, attempt=1)
    failed = RowOutcome(status=RowStatus.FAILED, run_id="run_1", error_code="x")
    assert not aws.ledger.row_finished(batch_id, 0, 1, failed, attempt=1)
    counter = aws.ledger.chunk_counter(batch_id, 0)
    assert counter is not None and (counter.completed, counter.failed) == (1, 0)


def test_an_outcome_for_another_run_of_the_row_is_ignored(aws: Aws) -> None:
    batch_id = running_batch(aws, [1])
    aws.ledger.row_started(batch_id, 0, 1, run_id="run_mine", attempt=1, line=2, key="k")
    stranger = RowOutcome(status=RowStatus.COMPLETED, run_id="run_other")
    assert not aws.ledger.row_finished(batch_id, 0, 1, stranger, attempt=1)


def test_a_callback_before_the_worker_recorded_the_run_keeps_the_terminal_state(aws: Aws) -> None:
    batch_id = running_batch(aws, [1])
    assert aws.ledger.row_finished(batch_id, 0, 1, DONE, attempt=1)
    assert not aws.ledger.row_started(batch_id, 0, 1, run_id="run_1", attempt=1, line=2, key="k")
    (row,) = aws.ledger.rows_of_chunk(batch_id, 0)
    assert (row.status, row.line, row.key) == (RowStatus.COMPLETED, 2, "k")


def test_the_last_two_callbacks_racing_finish_the_batch_once(aws: Aws) -> None:
    batch_id = running_batch(aws, [1, 1])
    aws.ledger.mark_running(batch_id)
    # Both outcomes land before either caller looks at the counters: both see a finished batch.
    assert aws.ledger.row_finished(batch_id, 0, 1, DONE, attempt=1)
    assert aws.ledger.row_finished(
        batch_id, 1, 2, RowOutcome(status=RowStatus.FAILED, error_code="e"), attempt=1
    )
    for chunk in (0, 1, 0, 1):
        aws.finisher.after_row_finished(batch_id, chunk)
    batch = aws.ledger.get_batch(batch_id)
    assert batch is not None
    assert (batch.status, batch.completed_count, batch.failed_count, batch.finish_seq) == (
        BatchStatus.PARTIAL,
        1,
        1,
        1,
    )
    assert [(m.batch_id, m.finish_seq) for m in done_messages(aws)] == [(batch_id, 1)]


def test_rows_finishing_before_the_batch_is_sealed_finish_it_when_ingest_seals(aws: Aws) -> None:
    batch_id = running_batch(aws, [1])
    assert aws.ledger.row_finished(batch_id, 0, 1, DONE, attempt=1)
    aws.finisher.after_row_finished(batch_id, 0)  # still `ingesting`: finishing is allowed once settled
    aws.ledger.mark_running(batch_id)
    aws.finisher.finish_if_done(batch_id)
    batch = aws.ledger.get_batch(batch_id)
    assert batch is not None and batch.status is BatchStatus.COMPLETED and batch.finish_seq == 1


def test_a_claimed_notification_cannot_be_claimed_twice(aws: Aws) -> None:
    batch_id = running_batch(aws, [1])
    aws.ledger.row_finished(batch_id, 0, 1, DONE, attempt=1)
    aws.finisher.after_row_finished(batch_id, 0)
    message = DoneMessage(batch_id=batch_id, finish_seq=1)
    assert aws.ledger.claim_notification(message, lease_seconds=60, now_epoch=1000) is not None
    assert aws.ledger.claim_notification(message, lease_seconds=60, now_epoch=1001) is None
    # A delivery that died is taken over once its lease has run out.
    assert aws.ledger.claim_notification(message, lease_seconds=60, now_epoch=1100) is not None


def test_a_second_planning_pass_does_not_reset_counts_already_made(aws: Aws) -> None:
    batch_id = running_batch(aws, [2])
    assert aws.ledger.row_finished(batch_id, 0, 1, DONE, attempt=1)
    # A duplicate S3 event that was still scanning reaches the same plan afterwards.
    chunks = [ChunkPlan(index=0, start=1, end=2, first_record=1, first_line=2, rows=2)]
    assert not aws.ledger.record_plan(batch_id, header=["a"], chunks=chunks, rows_skipped=0)
    counter = aws.ledger.chunk_counter(batch_id, 0)
    assert counter is not None and counter.completed == 1


def test_a_refusal_is_recorded_with_its_row_in_one_write(aws: Aws) -> None:
    batch_id = running_batch(aws, [1])
    refused = RowOutcome(status=RowStatus.FAILED, error_code="invalid_input", error_message="bad prompt")
    assert aws.ledger.row_finished(batch_id, 0, 1, refused, line=2, key="K1", attempt=1)
    (row,) = aws.ledger.rows_of_chunk(batch_id, 0)
    assert (row.status, row.line, row.key, row.error_code, row.run_id) == (
        RowStatus.FAILED,
        2,
        "K1",
        "invalid_input",
        None,
    )


def test_an_on_done_whose_sender_died_is_offered_again_once_it_is_stale(aws: Aws) -> None:
    batch_id = running_batch(aws, [1])
    aws.ledger.row_finished(batch_id, 0, 1, DONE, attempt=1)
    counter = aws.ledger.chunk_counter(batch_id, 0)
    assert counter is not None and aws.ledger.settle_chunk(batch_id, counter)
    assert aws.ledger.finish_if_done(batch_id) is not None  # its sender "dies" before sending
    assert aws.ledger.finish_if_done(batch_id) is None  # fresh: the sender may still be at it
    later = Ledger(aws.dynamodb, aws.table, clock=lambda: utcnow() + timedelta(seconds=REOFFER_AFTER_S + 1))
    assert later.finish_if_done(batch_id) == DoneMessage(batch_id=batch_id, finish_seq=1)


def test_a_retry_arriving_in_the_second_its_lease_ends_is_claimed(aws: Aws) -> None:
    batch_id = running_batch(aws, [1])
    aws.ledger.row_finished(batch_id, 0, 1, DONE, attempt=1)
    aws.finisher.after_row_finished(batch_id, 0)
    first = DoneMessage(batch_id=batch_id, finish_seq=1)
    assert aws.ledger.claim_notification(first, lease_seconds=60, now_epoch=1000.2) is not None
    aws.ledger.settle_notification(batch_id, 1, status="retrying", attempts=1, retry_at_epoch=1005.2)
    retry = DoneMessage(batch_id=batch_id, finish_seq=1, attempt=1)
    assert aws.ledger.claim_notification(retry, lease_seconds=60, now_epoch=1004.9) is None
    assert aws.ledger.claim_notification(retry, lease_seconds=60, now_epoch=1005.3) is not None


def test_a_transaction_cancelled_by_a_conflict_is_retried() -> None:
    import boto3
    from botocore.stub import Stubber

    client = boto3.client(
        "dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    stubber = Stubber(client)
    conflict = {"CancellationReasons": [{"Code": "None"}, {"Code": "TransactionConflict"}]}
    stubber.add_client_error(
        "transact_write_items",
        service_error_code="TransactionCanceledException",
        response_meta={},
        modeled_fields=conflict,
    )
    stubber.add_response("transact_write_items", {})
    with stubber:
        assert Ledger(client, "t").row_finished("b", 0, 1, DONE, attempt=1)
    stubber.assert_no_pending_responses()


def test_a_cursor_for_another_index_is_refused() -> None:
    import base64
    import json

    import pytest

    from rowcall.ledger import decode_cursor

    forged = base64.urlsafe_b64encode(json.dumps({"pk": "BATCH#x", "sk": "META"}).encode()).decode()
    with pytest.raises(ValueError):
        decode_cursor(forged)
