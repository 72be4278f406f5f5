"""The safety net's sweep: what it repairs, that it asks each silent run once, and that with no
faults it asks nothing."""

from __future__ import annotations

import json
import time
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
    aws.ledger.chunks.add_started(batch_id, 0, len(starts))  # as a worker's StartLog does, first
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


class RowReads:
    """Counts the queries of a batch's row partitions (rows, start pages) made meanwhile."""

    def __init__(self, aws: Aws, batch_id: str) -> None:
        self._events = aws.dynamodb.meta.events
        self._prefix = f"BATCH#{batch_id}#CHUNK#"
        self.count = 0

    def _seen(self, params: dict[str, Any], **_: Any) -> None:
        pk = params.get("ExpressionAttributeValues", {}).get(":pk", {}).get("S", "")
        self.count += pk.startswith(self._prefix)

    def __enter__(self) -> RowReads:
        self._events.register("provide-client-params.dynamodb.Query", self._seen)
        return self

    def __exit__(self, *_: object) -> None:
        self._events.unregister("provide-client-params.dynamodb.Query", self._seen)


def test_a_chunk_whose_counter_moved_lately_is_not_read_and_its_silent_run_is_asked_once_it_is_still(
    aws: Aws, provider: ScriptedProvider
) -> None:
    now = time.time()
    batch_id = started_batch(aws, at=now - 100)  # run_3 has been silent longer than reconcile_after_s
    aws.finisher.record_outcomes(batch_id, 0, completed(1, 2))  # ...but its chunk has just moved
    provider.by_path = {"/techniques/tech/runs/run_3": run("run_3", "completed")}
    with RowReads(aws, batch_id) as reads:
        report = net(aws, provider, now + 30).sweep()
    assert (report.open_chunks, report.looked_into, report.asked, reads.count) == (1, 0, 0, 0)
    with RowReads(aws, batch_id) as reads:
        report = net(aws, provider, time.time() + 61).sweep()  # 61 s after its last movement
    assert (report.looked_into, report.asked, report.recorded) == (1, 1, 1)
    assert reads.count >= 2  # its rows and its start pages, now that nothing has moved for 60 s
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and batch.status is BatchStatus.COMPLETED


def test_a_chunk_only_cycling_for_slots_is_still_and_its_silent_runs_are_asked(
    aws: Aws, provider: ScriptedProvider
) -> None:
    """Its runs may be the silent ones holding the slots it waits for: a delivery that started
    nothing is not movement (otherwise neither would ever end)."""
    now = time.time()
    batch_id = started_batch(aws, at=now)
    # A delivery a moment ago that found no free slot and let go of the chunk, due back in 3 s.
    aws.ledger.table.update(
        {"pk": f"BATCH#{batch_id}", "sk": "CHUNK#000000"},
        "SET #last_start_at = :at",
        values={":at": now + 100},
    )
    provider.by_path = {f"/techniques/tech/runs/run_{r}": run(f"run_{r}", "running") for r in (1, 2, 3)}
    report = net(aws, provider, now + 100).sweep()
    assert (report.looked_into, report.asked, report.chunks_resent) == (1, 3, 0)


def test_a_chunk_no_worker_has_touched_is_sent_again_without_reading_its_rows(
    aws: Aws, provider: ScriptedProvider
) -> None:
    batch_id = ingest(aws, ROWS)
    chunk_messages(aws)  # the message is lost
    with RowReads(aws, batch_id) as reads:
        report = net(aws, provider, time.time() + 61).sweep()
    assert (report.looked_into, report.chunks_resent, reads.count) == (1, 1, 0)
    assert [m.chunk.index for m in chunk_messages(aws)] == [0]


def test_a_chunk_counted_finished_but_not_settled_is_settled_by_the_next_sweep(
    aws: Aws, provider: ScriptedProvider
) -> None:
    """The recorder counted the last outcomes and died before the settle: no waiting for the
    chunk to go still."""
    now = time.time()
    batch_id = started_batch(aws, at=now)
    for record in (1, 2, 3):
        outcome = RowOutcome(status=RowStatus.COMPLETED, run_id=f"run_{record}")
        assert aws.ledger.rows.finish(batch_id, 0, record, outcome, attempt=1)
    aws.ledger.chunks.add_outcomes(batch_id, 0, completed=3, failed=0)
    report = net(aws, provider, now + 1).sweep()
    assert (report.recounted, report.looked_into, report.asked) == (1, 0, 0)
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and (batch.status, batch.completed_count) == (BatchStatus.COMPLETED, 3)
    assert len(aws.drain(aws.done_queue_url)) == 1
