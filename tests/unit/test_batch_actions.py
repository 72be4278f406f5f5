"""Cancel, reprocess and resume through the layer, with races run on real threads.

Each race ends in one outcome: one winner of the batch's conditional write, one on-done per
finish (one done message per finish_seq), counts that match the rows, and no run created twice.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from typing import Any

import pytest

from rowcall.api import BatchQueries
from rowcall.batch_actions import BatchActions, BatchNotFound, UnknownRows, WrongState
from rowcall.identity import row_id_for
from rowcall.ingest import Ingestor
from rowcall.models import BatchState, BatchStatus, DoneMessage, RowStatus
from rowcall.ondone import event_type
from rowcall.provider import ProviderConnection
from rowcall.runs import RunStarter
from rowcall.safety_net import SafetyNet, SafetyNetTimes
from rowcall_local import moto_fidelity
from rowcall_local.provider_emulator import ProviderEmulator
from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

from .conftest import Aws, chunk_messages, ingest
from .loopback_runs import API_KEY, FAST_RETRY, SIGNER, replay, start_provider, starter

# Real DynamoDB applies each request atomically; moto's in-process backend does not lock, so
# two racing conditional writes could both pass. The embedded AWS of `rowcall up` has this lock.
moto_fidelity.make_dynamodb_requests_atomic()

# Three chunks of four rows (the unit ingest's chunk size), ten rows in all.
ROWS = b"sku,prompt\n" + b"".join(f"K{n},prompt {n}\n".encode() for n in range(10))
TOTAL = 10


def connection(provider: ProviderEmulator) -> ProviderConnection:
    return ProviderConnection(base_url=provider.url, api_key=API_KEY, retry=FAST_RETRY)


def actions(aws: Aws) -> BatchActions:
    return BatchActions(aws.ledger, aws.chunk_queue, aws.finisher)


def done_messages(aws: Aws) -> list[DoneMessage]:
    return [DoneMessage.model_validate_json(b) for b in aws.drain(aws.done_queue_url)]


def view(aws: Aws, batch_id: str) -> dict[str, Any]:
    """The API's batch, with the status the ledger holds: no notifier runs here to write the
    results CSV, which a finished status waits for in the API (tests/unit/test_saved_outputs.py)."""
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None
    return BatchQueries(aws.ledger).get(batch_id) | {"status": batch.status.value}


def counts(aws: Aws, batch_id: str) -> tuple[str, int, int, int]:
    got = view(aws, batch_id)
    return got["status"], got["completed_count"], got["failed_count"], got["pending_count"]


def race(*calls: Callable[[], object]) -> list[object]:
    """Run the calls at once on threads; each one's result or the exception it raised."""
    results: list[object] = [None] * len(calls)
    gate = threading.Barrier(len(calls))

    def run(n: int) -> None:
        gate.wait()
        try:
            results[n] = calls[n]()
        except Exception as exc:
            results[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return results


def start_queued(aws: Aws, work: RunStarter) -> None:
    for message in chunk_messages(aws):
        work.start_chunk(message, lambda: 300.0)


def run_batch(aws: Aws, provider: ProviderEmulator, callbacks: Receiver) -> str:
    """Ingest, start every row, deliver every webhook twice: the batch finishes once."""
    batch_id = ingest(aws, ROWS)
    start_queued(aws, starter(aws, provider, callbacks))
    got = callbacks.wait_for(lambda got: len(got) == TOTAL)
    replay(aws, provider, got + got)
    return batch_id


def failed_rows(aws: Aws, batch_id: str) -> list[str]:
    found = []
    for chunk in range(3):
        for row in aws.ledger.rows.rows_of_chunk(batch_id, chunk):
            if row.status is RowStatus.FAILED:
                found.append(row_id_for(chunk, row.record))
    return found


@pytest.fixture
def failing() -> Iterator[ProviderEmulator]:
    """A provider that fails about half of the runs (its choice is per run, not per row)."""
    provider = start_provider(fail_rate=0.5)
    yield provider
    provider.stop()


@pytest.fixture
def partial_batch(aws: Aws, failing: ProviderEmulator, callbacks: Receiver) -> str:
    """A batch finished `partial`, its on-done message taken."""
    batch_id = run_batch(aws, failing, callbacks)
    assert [m.finish_seq for m in done_messages(aws)] == [1]
    assert view(aws, batch_id)["status"] == "partial"
    return batch_id


def test_reprocess_reruns_the_failed_rows_with_new_keys_and_finishes_once_more(
    aws: Aws, callbacks: Receiver, failing: ProviderEmulator, partial_batch: str
) -> None:
    batch_id = partial_batch
    status, completed, failed, _ = counts(aws, batch_id)
    assert status == "partial" and failed > 0 and completed + failed == TOTAL
    first_attempt = callbacks.got[:]

    reopened = actions(aws).reprocess(batch_id, None)
    assert reopened.status is BatchStatus.RUNNING
    # The rows to rerun are pending at once, before any worker has reopened its chunk.
    assert counts(aws, batch_id) == ("running", completed, 0, failed)
    with pytest.raises(WrongState) as refused:
        actions(aws).reprocess(batch_id, None)
    assert refused.value.code == "batch_not_finished"

    start_queued(aws, starter(aws, failing, callbacks))
    assert counts(aws, batch_id) == ("running", completed, 0, failed)
    got = callbacks.wait_for(lambda got: len(got) == TOTAL + failed)
    replay(aws, failing, got[TOTAL:] + got[TOTAL:] + first_attempt)  # late old webhooks too
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and batch.finish_seq == 2
    after = counts(aws, batch_id)
    assert after[1] + after[2] == TOTAL and after[1] >= completed and after[3] == 0
    assert [m.finish_seq for m in done_messages(aws)] == [2]
    stats = failing.stats()
    assert stats["unique_idempotency_keys"] == TOTAL + failed
    assert stats["duplicate_creates"] == 0
    for chunk in range(3):
        for row in aws.ledger.rows.rows_of_chunk(batch_id, chunk):
            assert row.attempt == (2 if row.reopen_seq else 1)


def test_reprocess_racing_late_webhooks_of_the_previous_attempt_changes_nothing_twice(
    aws: Aws, callbacks: Receiver, failing: ProviderEmulator, partial_batch: str
) -> None:
    batch_id = partial_batch
    old = callbacks.got[:]
    # Two failed rows and row 0-1 (completed, or a third failed one).
    named = list(dict.fromkeys([*failed_rows(aws, batch_id)[:2], row_id_for(0, 1)]))
    work = starter(aws, failing, callbacks)

    def reprocess_and_start() -> None:
        actions(aws).reprocess(batch_id, named)
        start_queued(aws, work)

    results = race(reprocess_and_start, lambda: replay(aws, failing, old))
    assert results == [None, None]
    got = callbacks.wait_for(lambda got: len(got) == TOTAL + len(named))
    replay(aws, failing, got[TOTAL:] + old)
    status, completed, failed, pending = counts(aws, batch_id)
    assert completed + failed == TOTAL and pending == 0 and status in ("completed", "partial")
    assert [m.finish_seq for m in done_messages(aws)] == [2]
    assert failing.stats()["duplicate_creates"] == 0
    rerun = [aws.ledger.rows.get(batch_id, int(r.split("-")[0]), int(r.split("-")[1])) for r in named]
    assert all(r is not None and r.attempt == 2 and r.finished for r in rerun)


def test_two_reprocess_calls_at_once_reopen_the_batch_once(
    aws: Aws, callbacks: Receiver, failing: ProviderEmulator, partial_batch: str
) -> None:
    batch_id = partial_batch
    failed = counts(aws, batch_id)[2]
    results = race(
        lambda: actions(aws).reprocess(batch_id, None), lambda: actions(aws).reprocess(batch_id, None)
    )
    refused = [r for r in results if isinstance(r, WrongState)]
    assert len(refused) == 1 and refused[0].code == "batch_not_finished"
    messages = chunk_messages(aws)
    assert len(messages) == len({m.chunk.index for m in messages})  # each reopening chunk once
    work = starter(aws, failing, callbacks)
    for message in messages + messages:
        work.start_chunk(message, lambda: 300.0)
    got = callbacks.wait_for(lambda got: len(got) == TOTAL + failed)
    replay(aws, failing, got[TOTAL:] + got[TOTAL:])
    assert [m.finish_seq for m in done_messages(aws)] == [2]
    assert failing.stats()["unique_idempotency_keys"] == TOTAL + failed
    assert failing.stats()["duplicate_creates"] == 0


def test_reprocess_refuses_what_it_cannot_do(
    aws: Aws, callbacks: Receiver, provider: ProviderEmulator
) -> None:
    batch_id = run_batch(aws, provider, callbacks)
    with pytest.raises(WrongState) as nothing:
        actions(aws).reprocess(batch_id, None)
    assert nothing.value.code == "nothing_to_reprocess"
    with pytest.raises(WrongState) as empty:
        actions(aws).reprocess(batch_id, [])
    assert empty.value.code == "nothing_to_reprocess"
    with pytest.raises(UnknownRows) as unknown:
        actions(aws).reprocess(batch_id, ["0-1", "7-1", "0-99", "nonsense"])
    assert unknown.value.row_ids == ["7-1", "0-99", "nonsense"]
    with pytest.raises(BatchNotFound):
        actions(aws).reprocess("b_missing", None)
    with pytest.raises(WrongState) as finished:
        actions(aws).cancel(batch_id)
    assert finished.value.code == "batch_not_running"
    assert view(aws, batch_id)["status"] == "completed"


def test_a_cancel_stops_a_worker_between_groups_and_finishes_once_the_runs_out_are_recorded(
    aws: Aws, callbacks: Receiver, provider: ProviderEmulator
) -> None:
    batch_id = ingest(aws, ROWS)
    messages = chunk_messages(aws)
    work = RunStarter(
        s3=aws.s3,
        ledger=aws.ledger,
        finisher=aws.finisher,
        provider=connection(provider),
        signer=SIGNER,
        callback_base_url=callbacks.url,
        concurrency=1,
    )
    work.start_chunk(messages[0], lambda: 300.0)  # four runs out
    calls = [0]

    def cancel_during_the_first_group() -> float:
        calls[0] += 1
        if calls[0] == 2:  # the first group's deadline check: its status read is done
            actions(aws).cancel(batch_id)
        return 300.0

    report = work.start_chunk(messages[1], cancel_during_the_first_group)
    assert report.started == 1 and report.stopped == "canceled"
    assert work.start_chunk(messages[2], lambda: 300.0).not_open == "canceled"
    assert provider.stats()["creates"] == 5
    canceled = view(aws, batch_id)
    assert canceled["status"] == "canceled" and canceled["notification"]["status"] == "none"
    assert done_messages(aws) == []  # five runs still out

    got = callbacks.wait_for(lambda got: len(got) == 5)
    replay(aws, provider, got[:4])
    assert done_messages(aws) == []
    replay(aws, provider, got + got)
    assert [m.finish_seq for m in done_messages(aws)] == [1]
    assert counts(aws, batch_id) == ("canceled", 5, 0, 5)
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and event_type(batch) == "batch.canceled"


def test_cancel_racing_the_last_webhook_ends_one_way_with_one_on_done(
    aws: Aws, callbacks: Receiver, provider: ProviderEmulator
) -> None:
    for round_ in range(2):
        batch_id = ingest(aws, ROWS)  # a new version of the object: a new batch each round
        start_queued(aws, starter(aws, provider, callbacks))
        got = callbacks.wait_for(lambda got, n=round_: len(got) == TOTAL * (n + 1))[TOTAL * round_ :]
        replay(aws, provider, got[:-1])
        results = race(partial(actions(aws).cancel, batch_id), partial(replay, aws, provider, [got[-1]] * 2))
        status, completed, failed, pending = counts(aws, batch_id)
        assert (completed, failed, pending) == (TOTAL, 0, 0)
        if isinstance(results[0], WrongState):
            assert status == "completed" and results[0].code == "batch_not_running"
        else:
            assert status == "canceled"
        assert [m.finish_seq for m in done_messages(aws)] == [1]


def test_cancel_twice_and_resume_twice_have_one_winner(
    aws: Aws, callbacks: Receiver, provider: ProviderEmulator
) -> None:
    batch_id = ingest(aws, ROWS)
    chunk_messages(aws)
    assert aws.ledger.batches.pause(batch_id, "insufficient_credits", "402")
    resumed = race(lambda: actions(aws).resume(batch_id), lambda: actions(aws).resume(batch_id))
    assert sorted(type(r).__name__ for r in resumed) == ["BatchState", "WrongState"]
    assert len(chunk_messages(aws)) == 3  # the open chunks, sent once
    canceled = race(lambda: actions(aws).cancel(batch_id), lambda: actions(aws).cancel(batch_id))
    assert sorted(type(r).__name__ for r in canceled) == ["BatchState", "WrongState"]
    # Nothing had started: the cancel finished the batch itself.
    assert [m.finish_seq for m in done_messages(aws)] == [1]
    assert counts(aws, batch_id) == ("canceled", 0, 0, TOTAL)
    with pytest.raises(WrongState) as again:
        actions(aws).reprocess(batch_id, None)
    assert again.value.code == "batch_not_reprocessable"


def test_a_reprocess_whose_call_died_before_sending_its_chunks_is_finished_by_the_safety_net(
    aws: Aws, callbacks: Receiver, failing: ProviderEmulator, partial_batch: str
) -> None:
    batch_id = partial_batch
    failed = counts(aws, batch_id)[2]
    actions(aws).reprocess(batch_id, None)
    chunk_messages(aws)  # lost with the API call
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None
    clock = [_epoch(batch.updated_at) + 120]
    net = SafetyNet(
        ledger=aws.ledger,
        finisher=aws.finisher,
        chunk_queue=aws.chunk_queue,
        done_queue=aws.done_queue,
        provider=connection(failing),
        times=SafetyNetTimes(reconcile_after_s=60, callback_deadline_s=600),
        clock=lambda: clock[0],
    )
    assert net.sweep().chunks_resent == len(batch.reprocess.chunks if batch.reprocess else {})
    start_queued(aws, starter(aws, failing, callbacks))
    got = callbacks.wait_for(lambda got: len(got) == TOTAL + failed)
    replay(aws, failing, got[TOTAL:])
    assert [m.finish_seq for m in done_messages(aws)] == [2]
    assert net.sweep().chunks_resent == 0


def test_a_worker_cut_off_while_reopening_a_chunk_is_finished_by_the_next_delivery(
    aws: Aws, callbacks: Receiver, failing: ProviderEmulator, partial_batch: str
) -> None:
    batch_id = partial_batch
    failed = failed_rows(aws, batch_id)
    actions(aws).reprocess(batch_id, None)
    plan = aws.ledger.batches.get(batch_id).reprocess  # type: ignore[union-attr]
    assert plan is not None
    # The first delivery reopened one row, then died (its chunk still settled).
    chunk, record = (int(part) for part in failed[0].split("-"))
    assert aws.ledger.rows.reopen(batch_id, chunk, record, seq=plan.seq, at=0.0)
    assert not aws.ledger.rows.reopen(batch_id, chunk, record, seq=plan.seq, at=0.0)
    assert counts(aws, batch_id)[2:] == (0, len(failed))
    messages = chunk_messages(aws)
    work = starter(aws, failing, callbacks)
    for message in messages + messages:
        work.start_chunk(message, lambda: 300.0)
    got = callbacks.wait_for(lambda got: len(got) == TOTAL + len(failed))
    replay(aws, failing, got[TOTAL:])
    rows = [aws.ledger.rows.get(batch_id, *(int(p) for p in r.split("-"))) for r in failed]
    assert all(r is not None and r.attempt == 2 for r in rows)
    status, completed, failed_now, pending = counts(aws, batch_id)
    assert status in ("completed", "partial") and completed + failed_now == TOTAL and pending == 0
    assert [m.finish_seq for m in done_messages(aws)] == [2]
    assert failing.stats()["unique_idempotency_keys"] == TOTAL + len(failed)


def _epoch(moment: str) -> float:
    return datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()


def test_a_batch_canceled_while_its_file_is_validated_starts_nothing_and_notifies_once(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan = Ingestor._scan

    def cancel_during_the_scan(self: Ingestor, batch: BatchState, *rest: Any) -> Any:
        assert actions(aws).cancel(batch.batch_id).status is BatchStatus.CANCELED
        return scan(self, batch, *rest)

    monkeypatch.setattr(Ingestor, "_scan", cancel_during_the_scan)
    batch_id = ingest(aws, ROWS)
    assert chunk_messages(aws) == []  # the plan is written, its chunks are never sent
    assert [m.finish_seq for m in done_messages(aws)] == [1]
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and (batch.status, batch.cancel_pending, event_type(batch)) == (
        BatchStatus.CANCELED,
        False,
        "batch.canceled",
    )
    # The counters the plan wrote leave the index of open work at the next sweep.
    assert len(list(aws.ledger.chunks.open_chunks())) == 3
    net = SafetyNet(
        ledger=aws.ledger,
        finisher=aws.finisher,
        chunk_queue=aws.chunk_queue,
        done_queue=aws.done_queue,
        provider=ProviderConnection(base_url="http://127.0.0.1:9", api_key=API_KEY),
        times=SafetyNetTimes(reconcile_after_s=60, callback_deadline_s=600),
    )
    assert net.sweep().closed == 3
    assert list(aws.ledger.chunks.open_chunks()) == []
    assert chunk_messages(aws) == [] and done_messages(aws) == []
