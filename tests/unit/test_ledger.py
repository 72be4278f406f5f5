from __future__ import annotations

from rowcall.models import (
    BatchSpec,
    BatchState,
    BatchStatus,
    ChunkPlan,
    DoneMessage,
    RowOutcome,
    RowStatus,
    SourceObject,
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
    assert aws.ledger.row_finished(batch_id, 0, 1, DONE)
    assert not aws.ledger.row_finished(batch_id, 0, 1, DONE)
    failed = RowOutcome(status=RowStatus.FAILED, run_id="run_1", error_code="x")
    assert not aws.ledger.row_finished(batch_id, 0, 1, failed)
    counter = aws.ledger.chunk_counter(batch_id, 0)
    assert counter is not None and (counter.completed, counter.failed) == (1, 0)


def test_an_outcome_for_another_run_of_the_row_is_ignored(aws: Aws) -> None:
    batch_id = running_batch(aws, [1])
    aws.ledger.row_started(batch_id, 0, 1, run_id="run_mine", attempt=1, line=2, key="k")
    stranger = RowOutcome(status=RowStatus.COMPLETED, run_id="run_other")
    assert not aws.ledger.row_finished(batch_id, 0, 1, stranger)


def test_a_callback_before_the_worker_recorded_the_run_keeps_the_terminal_state(aws: Aws) -> None:
    batch_id = running_batch(aws, [1])
    assert aws.ledger.row_finished(batch_id, 0, 1, DONE)
    assert not aws.ledger.row_started(batch_id, 0, 1, run_id="run_1", attempt=1, line=2, key="k")
    (row,) = aws.ledger.rows_of_chunk(batch_id, 0)
    assert (row.status, row.line, row.key) == (RowStatus.COMPLETED, 2, "k")


def test_the_last_two_callbacks_racing_finish_the_batch_once(aws: Aws) -> None:
    batch_id = running_batch(aws, [1, 1])
    aws.ledger.mark_running(batch_id)
    # Both outcomes land before either caller looks at the counters: both see a finished batch.
    assert aws.ledger.row_finished(batch_id, 0, 1, DONE)
    assert aws.ledger.row_finished(batch_id, 1, 2, RowOutcome(status=RowStatus.FAILED, error_code="e"))
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
    messages = done_messages(aws)
    # The first finish sends it; later calls re-send it while unclaimed, all for the same finish.
    assert {(m.batch_id, m.finish_seq) for m in messages} == {(batch_id, 1)}


def test_rows_finishing_before_the_batch_is_sealed_finish_it_when_ingest_seals(aws: Aws) -> None:
    batch_id = running_batch(aws, [1])
    assert aws.ledger.row_finished(batch_id, 0, 1, DONE)
    aws.finisher.after_row_finished(batch_id, 0)  # still `ingesting`: finishing is allowed once settled
    aws.ledger.mark_running(batch_id)
    aws.finisher.finish_if_done(batch_id)
    batch = aws.ledger.get_batch(batch_id)
    assert batch is not None and batch.status is BatchStatus.COMPLETED and batch.finish_seq == 1


def test_a_claimed_notification_cannot_be_claimed_twice(aws: Aws) -> None:
    batch_id = running_batch(aws, [1])
    aws.ledger.row_finished(batch_id, 0, 1, DONE)
    aws.finisher.after_row_finished(batch_id, 0)
    message = DoneMessage(batch_id=batch_id, finish_seq=1)
    assert aws.ledger.claim_notification(message, lease_seconds=60, now_epoch=1000) is not None
    assert aws.ledger.claim_notification(message, lease_seconds=60, now_epoch=1001) is None
    # A delivery that died is taken over once its lease has run out.
    assert aws.ledger.claim_notification(message, lease_seconds=60, now_epoch=1100) is not None
