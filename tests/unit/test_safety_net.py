"""The safety net's sweep: what it repairs, that it asks each silent run once, and that with no
faults it asks nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from rowcall.finishing import RowResult
from rowcall.ledger import StartedRun
from rowcall.models import BatchStatus, ChunkMessage, DoneMessage, RowOutcome, RowStatus
from rowcall.provider import ProviderConnection, RetryPolicy
from rowcall.safety_net import SafetyNet, SafetyNetTimes

from .conftest import Aws, chunk_messages, ingest
from .scripted_provider import ScriptedProvider

ROWS = b"sku,prompt\nA1,a cat\nA2,a dog\nA3,a fox\n"
TIMES = SafetyNetTimes(reconcile_after_s=60, callback_deadline_s=600)
T0 = 1_900_000_000.0


@pytest.fixture
def provider() -> Iterator[ScriptedProvider]:
    scripted = ScriptedProvider()
    yield scripted
    scripted.close()


def net(aws: Aws, provider: ScriptedProvider, now: float) -> SafetyNet:
    return SafetyNet(
        ledger=aws.ledger,
        finisher=aws.finisher,
        chunk_queue=aws.chunk_queue,
        done_queue=aws.done_queue,
        provider=ProviderConnection(
            base_url=provider.url, api_key="key", retry=RetryPolicy(attempts=2, base_delay_s=0.01)
        ),
        times=TIMES,
        clock=lambda: now,
    )


def run(run_id: str, status: str) -> tuple[int, dict[str, str], object]:
    body: dict[str, Any] = {"run_id": run_id, "status": status, "created_at": 1}
    if status == "completed":
        body["outputs"] = [{"output_id": "o", "type": "imageUrl", "url": f"https://cdn/{run_id}.png"}]
    return 200, {}, body


def started_batch(aws: Aws, at: float) -> str:
    """A batch whose three rows were all started at `at`."""
    batch_id = ingest(aws, ROWS)
    chunk_messages(aws)
    starts = [StartedRun(record, 1, f"run_{record}", record + 1, at) for record in (1, 2, 3)]
    aws.ledger.rows.record_starts(batch_id, 0, starts, "w1-00001")
    return batch_id


def completed(*records: int) -> list[RowResult]:
    return [RowResult(r, 1, RowOutcome(status=RowStatus.COMPLETED, run_id=f"run_{r}")) for r in records]


def test_with_no_faults_it_asks_the_provider_nothing(aws: Aws, provider: ScriptedProvider) -> None:
    batch_id = started_batch(aws, at=T0)
    report = net(aws, provider, T0 + 30).sweep()  # runs younger than reconcile_after_s
    assert (report.open_chunks, report.findings, report.asked) == (1, 0, 0)
    assert provider.requests == [] and aws.drain(aws.chunk_queue_url) == []
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and batch.status is BatchStatus.RUNNING


def test_a_silent_run_is_asked_for_once_and_its_answer_recorded(aws: Aws, provider: ScriptedProvider) -> None:
    batch_id = started_batch(aws, at=T0)
    aws.finisher.record_outcomes(
        batch_id,
        0,
        [RowResult(r, 1, RowOutcome(status=RowStatus.COMPLETED, run_id=f"run_{r}")) for r in (1, 2)],
    )
    provider.by_path = {"/techniques/tech/runs/run_3": run("run_3", "completed")}
    report = net(aws, provider, T0 + 61).sweep()
    assert (report.asked, report.recorded) == (1, 1)
    rows = {r.record: r for r in aws.ledger.rows.rows_of_chunk(batch_id, 0)}
    assert rows[3].outputs == [{"output_id": "o", "type": "imageUrl", "url": "https://cdn/run_3.png"}]
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and (batch.status, batch.completed_count) == (BatchStatus.COMPLETED, 3)
    assert len(aws.drain(aws.done_queue_url)) == 1
    assert net(aws, provider, T0 + 200).sweep().asked == 0  # nothing open any more


def test_a_run_still_going_is_asked_once_then_times_out_at_the_deadline(
    aws: Aws, provider: ScriptedProvider
) -> None:
    batch_id = started_batch(aws, at=T0)
    provider.by_path = {f"/techniques/tech/runs/run_{r}": run(f"run_{r}", "running") for r in (1, 2, 3)}
    assert net(aws, provider, T0 + 61).sweep().asked == 3
    assert net(aws, provider, T0 + 120).sweep().asked == 0  # asked once: no polling
    assert len(provider.requests) == 3
    report = net(aws, provider, T0 + 601).sweep()
    assert (report.asked, report.timed_out) == (0, 3)
    rows = list(aws.ledger.rows.rows_of_chunk(batch_id, 0))
    assert {(r.status, r.error_code) for r in rows} == {(RowStatus.FAILED, "callback_timeout")}
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and (batch.status, batch.failed_count) == (BatchStatus.PARTIAL, 3)


def test_a_chunk_whose_message_was_lost_is_sent_again(aws: Aws, provider: ScriptedProvider) -> None:
    batch_id = ingest(aws, ROWS)
    (lost,) = chunk_messages(aws)  # dead-lettered, never consumed
    counter = aws.ledger.chunks.counter(batch_id, 0)
    assert counter is not None and counter.created_at is not None
    assert net(aws, provider, counter.created_at + 30).sweep().chunks_resent == 0
    assert net(aws, provider, counter.created_at + 61).sweep().chunks_resent == 1
    assert [ChunkMessage.model_validate_json(b) for b in aws.drain(aws.chunk_queue_url)] == [lost]


def test_outcomes_written_but_never_counted_are_found_by_a_recount(
    aws: Aws, provider: ScriptedProvider
) -> None:
    batch_id = started_batch(aws, at=T0)
    for record in (1, 2, 3):  # the recorder died after its row writes, before its count
        assert aws.ledger.rows.finish(batch_id, 0, record, RowOutcome(status=RowStatus.COMPLETED), attempt=1)
    report = net(aws, provider, T0 + 5).sweep()
    assert report.recounted == 1 and provider.requests == []
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and (batch.status, batch.completed_count) == (BatchStatus.COMPLETED, 3)


def test_a_stuck_on_done_is_handed_to_the_notifier_again(aws: Aws, provider: ScriptedProvider) -> None:
    from datetime import datetime

    batch_id = started_batch(aws, at=T0)
    aws.finisher.record_outcomes(
        batch_id,
        0,
        [RowResult(r, 1, RowOutcome(status=RowStatus.COMPLETED, run_id=f"run_{r}")) for r in (1, 2, 3)],
    )
    aws.drain(aws.done_queue_url)  # ...and its sender died before the notifier saw it
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and batch.finished_at is not None
    finished = datetime.fromisoformat(batch.finished_at.replace("Z", "+00:00")).timestamp()
    later = net(aws, provider, finished + 120)
    later._ledger = type(aws.ledger)(
        aws.dynamodb, aws.table, clock=lambda: datetime.fromtimestamp(finished + 120).astimezone()
    )
    assert later.sweep().on_dones_resent == 1
    assert [json.loads(b) for b in aws.drain(aws.done_queue_url)] == [
        DoneMessage(batch_id=batch_id, finish_seq=1).model_dump()
    ]


def test_the_open_chunks_of_a_failed_batch_leave_the_index(aws: Aws, provider: ScriptedProvider) -> None:
    batch_id = started_batch(aws, at=T0)
    aws.finisher.fail(batch_id, "technique_not_found", "404")
    assert net(aws, provider, T0 + 5).sweep().closed == 1
    assert list(aws.ledger.chunks.open_chunks()) == []


def test_a_quiet_ingest_fails_only_once_no_attempt_of_its_event_can_still_run(
    aws: Aws, provider: ScriptedProvider
) -> None:
    """Lambda keeps a throttled or retried S3 event up to the ingest's MaximumEventAgeInSeconds and
    an attempt then runs up to its timeout: the batch fails `ingest_interrupted` only after both."""
    import time

    from rowcall.safety_net import ingest_stall_after

    done = aws.ledger.batches.get(ingest(aws, ROWS))
    assert done is not None
    stalled, _ = aws.ledger.batches.open(
        done.model_copy(update={"batch_id": "b-stalled", "status": BatchStatus.VALIDATING})
    )
    quiet_since = time.time()
    stall_s = ingest_stall_after(max_event_age_s=3600, ingest_timeout_s=900)
    assert stall_s >= 3600 + 900
    times = SafetyNetTimes(reconcile_after_s=60, callback_deadline_s=600, ingest_stall_s=stall_s)

    def sweep_at(now: float) -> BatchStatus:
        SafetyNet(
            ledger=aws.ledger,
            finisher=aws.finisher,
            chunk_queue=aws.chunk_queue,
            done_queue=aws.done_queue,
            provider=ProviderConnection(base_url=provider.url, api_key="key"),
            times=times,
            clock=lambda: now,
        ).sweep()
        batch = aws.ledger.batches.get(stalled.batch_id)
        assert batch is not None
        return batch.status

    # The retry of an event that waited almost its full age may still be running: not yet.
    assert sweep_at(quiet_since + 3600 + 900 - 60) is BatchStatus.VALIDATING
    assert sweep_at(quiet_since + stall_s + 1) is BatchStatus.FAILED
    failed = aws.ledger.batches.get(stalled.batch_id)
    assert failed is not None and failed.reason == "ingest_interrupted"
