"""The ledger's transitions: each once, whatever is repeated, lost or raced."""

from __future__ import annotations

import base64
import json
from datetime import timedelta

import boto3
import pytest
from botocore.stub import Stubber

from rowcall.finishing import RowResult
from rowcall.ledger import Ledger, RetryPolicy
from rowcall.ledger.batches import REOFFER_AFTER_S, decode_cursor
from rowcall.ledger.table import expression_arguments
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
    ledger.batches.open(
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
    assert ledger.batches.record_plan(batch_id, header=["a"], chunks=chunks, rows_skipped=0)
    return batch_id


DONE = RowOutcome(status=RowStatus.COMPLETED, run_id="run_1", outputs=[{"url": "u"}])
FAILED = RowOutcome(status=RowStatus.FAILED, error_code="e")


def done(record: int, run: str = "run_1", attempt: int = 1) -> RowResult:
    return RowResult(record, attempt, DONE.model_copy(update={"run_id": run}))


def done_messages(aws: Aws) -> list[DoneMessage]:
    return [DoneMessage.model_validate_json(b) for b in aws.drain(aws.done_queue_url)]


def test_a_duplicate_outcome_changes_nothing_and_is_not_counted(aws: Aws) -> None:
    batch_id = running_batch(aws, [2])
    assert aws.finisher.record_outcomes(batch_id, 0, [done(1)]) == 1
    assert aws.finisher.record_outcomes(batch_id, 0, [done(1)]) == 0
    failed = RowOutcome(status=RowStatus.FAILED, run_id="run_1", error_code="x")
    assert aws.finisher.record_outcomes(batch_id, 0, [RowResult(1, 1, failed)]) == 0
    counter = aws.ledger.chunks.counter(batch_id, 0)
    assert counter is not None and (counter.completed, counter.failed) == (1, 0)


def test_outcomes_of_one_batch_of_messages_are_counted_in_one_write(aws: Aws) -> None:
    batch_id = running_batch(aws, [3])
    assert aws.finisher.record_outcomes(batch_id, 0, [done(1, "r1"), done(2, "r2"), done(1, "r1")]) == 2
    counter = aws.ledger.chunks.counter(batch_id, 0)
    assert counter is not None and (counter.completed, counter.failed, counter.settled) == (2, 0, False)


def test_an_outcome_for_another_run_or_attempt_of_the_row_is_ignored(aws: Aws) -> None:
    batch_id = running_batch(aws, [2])
    assert aws.ledger.rows.finish(batch_id, 0, 1, DONE, attempt=1)
    stranger = RowOutcome(status=RowStatus.FAILED, run_id="run_other", error_code="x")
    assert not aws.ledger.rows.finish(batch_id, 0, 1, stranger, attempt=1)
    # A row reprocessed to attempt 2 waits for attempt 2 only.
    aws.ledger.table.update(
        {"pk": "BATCH#b_test#CHUNK#000000", "sk": "ROW#000000002"},
        "SET #status = :pending, #attempt = :two",
        values={":pending": "pending", ":two": 2},
    )
    assert not aws.ledger.rows.finish(batch_id, 0, 2, FAILED, attempt=1)
    assert aws.ledger.rows.finish(batch_id, 0, 2, FAILED, attempt=2)


def test_the_last_two_outcomes_racing_finish_the_batch_once(aws: Aws) -> None:
    batch_id = running_batch(aws, [1, 1])
    aws.ledger.batches.mark_running(batch_id)
    # Both rows land before either caller counts: both counts see a finished chunk.
    assert aws.ledger.rows.finish(batch_id, 0, 1, DONE, attempt=1)
    assert aws.ledger.rows.finish(batch_id, 1, 2, FAILED, attempt=1)
    counters = [
        aws.ledger.chunks.add_outcomes(batch_id, 0, completed=1, failed=0),
        aws.ledger.chunks.add_outcomes(batch_id, 1, completed=0, failed=1),
    ]
    for counter in counters + counters:
        aws.finisher.after_outcomes(batch_id, counter)
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None
    assert (batch.status, batch.completed_count, batch.failed_count, batch.finish_seq) == (
        BatchStatus.PARTIAL,
        1,
        1,
        1,
    )
    assert [(m.batch_id, m.finish_seq) for m in done_messages(aws)] == [(batch_id, 1)]


def test_a_count_repeated_after_a_lost_answer_does_not_settle_a_chunk_early(aws: Aws) -> None:
    batch_id = running_batch(aws, [2])
    aws.ledger.batches.mark_running(batch_id)
    assert aws.ledger.rows.finish(batch_id, 0, 1, DONE, attempt=1)
    aws.ledger.chunks.add_outcomes(batch_id, 0, completed=1, failed=0)
    repeated = aws.ledger.chunks.add_outcomes(batch_id, 0, completed=1, failed=0)  # botocore's retry
    assert repeated is not None and repeated.finished == 2
    aws.finisher.after_outcomes(batch_id, repeated)
    counter = aws.ledger.chunks.counter(batch_id, 0)
    assert counter is not None and (counter.completed, counter.settled) == (1, False)  # recounted
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and batch.status is BatchStatus.RUNNING
    assert aws.finisher.record_outcomes(batch_id, 0, [done(2, "run_2")]) == 1
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and (batch.status, batch.completed_count) == (BatchStatus.COMPLETED, 2)


def test_a_count_lost_in_a_crash_is_found_by_the_recount(aws: Aws) -> None:
    batch_id = running_batch(aws, [1])
    aws.ledger.batches.mark_running(batch_id)
    assert aws.ledger.rows.finish(batch_id, 0, 1, DONE, attempt=1)  # ...and the process dies
    aws.finisher.recount(batch_id, 0)
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and (batch.status, batch.completed_count) == (BatchStatus.COMPLETED, 1)
    assert len(done_messages(aws)) == 1


def test_rows_finishing_before_the_batch_is_sealed_finish_it_when_ingest_seals(aws: Aws) -> None:
    batch_id = running_batch(aws, [1])
    aws.finisher.record_outcomes(batch_id, 0, [done(1)])  # still `ingesting`: allowed once settled
    aws.ledger.batches.mark_running(batch_id)
    aws.finisher.finish_if_done(batch_id)
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and batch.status is BatchStatus.COMPLETED and batch.finish_seq == 1


def test_open_work_is_listed_until_it_is_done(aws: Aws) -> None:
    batch_id = running_batch(aws, [1, 1])
    assert set(aws.ledger.chunks.open_chunks()) == {(batch_id, 0), (batch_id, 1)}
    assert aws.ledger.batches.open_batches() == [batch_id]  # still ingesting
    aws.ledger.batches.mark_running(batch_id)
    assert aws.ledger.batches.open_batches() == []
    aws.finisher.record_outcomes(batch_id, 0, [done(1)])
    assert set(aws.ledger.chunks.open_chunks()) == {(batch_id, 1)}
    aws.finisher.record_outcomes(batch_id, 1, [done(1, "run_2")])
    assert list(aws.ledger.chunks.open_chunks()) == []
    assert aws.ledger.batches.open_batches() == [batch_id]  # its on-done is not delivered yet
    aws.ledger.notifications.settle(batch_id, 1, status="delivered", attempts=1)
    assert aws.ledger.batches.open_batches() == []


def test_a_claimed_notification_cannot_be_claimed_twice(aws: Aws) -> None:
    batch_id = running_batch(aws, [1])
    aws.finisher.record_outcomes(batch_id, 0, [done(1)])
    message = DoneMessage(batch_id=batch_id, finish_seq=1)
    assert aws.ledger.notifications.claim(message, lease_seconds=60, now_epoch=1000) is not None
    assert aws.ledger.notifications.claim(message, lease_seconds=60, now_epoch=1001) is None
    # A delivery that died is taken over once its lease has run out.
    assert aws.ledger.notifications.claim(message, lease_seconds=60, now_epoch=1100) is not None


def test_a_second_planning_pass_does_not_reset_counts_already_made(aws: Aws) -> None:
    batch_id = running_batch(aws, [2])
    assert aws.finisher.record_outcomes(batch_id, 0, [done(1)]) == 1
    # A duplicate S3 event that was still scanning reaches the same plan afterwards.
    chunks = [ChunkPlan(index=0, start=1, end=2, first_record=1, first_line=2, rows=2)]
    assert not aws.ledger.batches.record_plan(batch_id, header=["a"], chunks=chunks, rows_skipped=0)
    counter = aws.ledger.chunks.counter(batch_id, 0)
    assert counter is not None and counter.completed == 1


def test_a_refusal_is_recorded_with_its_row_in_one_write(aws: Aws) -> None:
    batch_id = running_batch(aws, [1])
    refused = RowOutcome(status=RowStatus.FAILED, error_code="invalid_input", error_message="bad prompt")
    assert aws.finisher.record_outcomes(batch_id, 0, [RowResult(1, 1, refused, line=2, key="K1")]) == 1
    (row,) = aws.ledger.rows.rows_of_chunk(batch_id, 0)
    assert (row.status, row.line, row.key, row.error_code, row.run_id) == (
        RowStatus.FAILED,
        2,
        "K1",
        "invalid_input",
        None,
    )


def test_an_on_done_whose_sender_died_is_offered_again_once_it_is_stale(aws: Aws) -> None:
    batch_id = running_batch(aws, [1])
    assert aws.ledger.rows.finish(batch_id, 0, 1, DONE, attempt=1)
    counter = aws.ledger.chunks.add_outcomes(batch_id, 0, completed=1, failed=0)
    assert counter is not None
    assert aws.ledger.chunks.settle(batch_id, counter, aws.ledger.rows.rows_of_chunk(batch_id, 0))
    assert aws.ledger.batches.finish_if_done(batch_id) is not None  # its sender "dies" before sending
    assert aws.ledger.batches.finish_if_done(batch_id) is None  # fresh: the sender may still be at it
    later = Ledger(aws.dynamodb, aws.table, clock=lambda: utcnow() + timedelta(seconds=REOFFER_AFTER_S + 1))
    assert later.batches.finish_if_done(batch_id) == DoneMessage(batch_id=batch_id, finish_seq=1)


def test_a_retry_arriving_in_the_second_its_lease_ends_is_claimed(aws: Aws) -> None:
    batch_id = running_batch(aws, [1])
    aws.finisher.record_outcomes(batch_id, 0, [done(1)])
    first = DoneMessage(batch_id=batch_id, finish_seq=1)
    notifications = aws.ledger.notifications
    assert notifications.claim(first, lease_seconds=60, now_epoch=1000.2) is not None
    notifications.settle(batch_id, 1, status="retrying", attempts=1, retry_at_epoch=1005.2)
    retry = DoneMessage(batch_id=batch_id, finish_seq=1, attempt=1)
    assert notifications.claim(retry, lease_seconds=60, now_epoch=1004.9) is None
    assert notifications.claim(retry, lease_seconds=60, now_epoch=1005.3) is not None


def test_the_started_runs_of_a_chunk_are_kept_in_pages(aws: Aws) -> None:
    from rowcall.ledger import StartedRun

    batch_id = running_batch(aws, [3])
    rows = aws.ledger.rows
    rows.record_starts(
        batch_id, 0, [StartedRun(1, 1, "run_1", 2, 10.0), StartedRun(2, 1, None, 3, 10.5)], "a"
    )
    rows.record_starts(batch_id, 0, [StartedRun(3, 1, "run_3", 4, 11.0)], "b")
    starts = rows.starts(batch_id, 0)
    assert sorted(starts) == [1, 2, 3]
    assert (starts[1].run_id, starts[2].run_id, starts[3].line) == ("run_1", None, 4)


def _stubbed_client() -> tuple[object, Stubber]:
    client = boto3.client(
        "dynamodb", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    return client, Stubber(client)


FAST = RetryPolicy(attempts=3, base_s=0.001, max_s=0.002)


def test_a_transaction_cancelled_by_a_conflict_is_retried() -> None:
    client, stubber = _stubbed_client()
    conflict = {"CancellationReasons": [{"Code": "None"}, {"Code": "TransactionConflict"}]}
    stubber.add_client_error(
        "transact_write_items",
        service_error_code="TransactionCanceledException",
        response_meta={},
        modeled_fields=conflict,
    )
    stubber.add_response("transact_write_items", {})
    table = Ledger(client, "t", retry=FAST).table  # type: ignore[arg-type]
    with stubber:
        assert table.transact([table.update_item({"pk": "p", "sk": "s"}, "SET #a = :v", values={":v": 1})])
    stubber.assert_no_pending_responses()


@pytest.mark.parametrize(
    "code", ["TransactionConflictException", "ThrottlingException", "ProvisionedThroughputExceededException"]
)
def test_a_single_write_refused_under_load_is_retried_with_a_bound(code: str) -> None:
    client, stubber = _stubbed_client()
    for _ in range(FAST.attempts):
        stubber.add_client_error("update_item", service_error_code=code, http_status_code=400)
    with stubber, pytest.raises(client.exceptions.ClientError):  # type: ignore[attr-defined]
        Ledger(client, "t", retry=FAST).rows.finish("b", 0, 1, DONE, attempt=1)  # type: ignore[arg-type]
    stubber.assert_no_pending_responses()
    client, stubber = _stubbed_client()
    stubber.add_client_error("update_item", service_error_code=code, http_status_code=400)
    stubber.add_response("update_item", {"Attributes": {}})
    with stubber:
        assert Ledger(client, "t", retry=FAST).rows.finish("b", 0, 1, DONE, attempt=1)  # type: ignore[arg-type]


def test_expression_maps_hold_exactly_what_the_expressions_use() -> None:
    assert expression_arguments("SET #a = :v", None, values={":v": 1}) == {
        "ExpressionAttributeNames": {"#a": "a"},
        "ExpressionAttributeValues": {":v": {"N": "1"}},
    }
    assert expression_arguments("REMOVE x") == {}
    with pytest.raises(ValueError, match="unused"):
        expression_arguments("SET #a = :v", values={":v": 1, ":w": 2})


def test_a_cursor_for_another_index_is_refused() -> None:
    forged = base64.urlsafe_b64encode(json.dumps({"pk": "BATCH#x", "sk": "META"}).encode()).decode()
    with pytest.raises(ValueError):
        decode_cursor(forged)


def test_slots_are_never_granted_past_the_cap_even_when_asked_at_once(aws: Aws) -> None:
    from concurrent.futures import ThreadPoolExecutor

    slots = aws.ledger.slots
    with ThreadPoolExecutor(8) as pool:
        granted = list(pool.map(lambda _: slots.acquire(4, 10), range(8)))
    assert sum(granted) == 10
    acquired, released = slots.held()
    assert acquired - released == 10
    assert slots.acquire(1, 10) == 0  # full: wait for a release
    slots.release(3, shard=2)
    assert slots.acquire(5, 10) == 3
