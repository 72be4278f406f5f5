"""FLORA's two readings of a repeated idempotency key, as the worker and the safety net meet them.

`duplicate` (the SDK): 409 `idempotency_duplicate`, no run id. `replay` (FLORA's idempotency page):
the original run object again; the same key with another body is 422 `idempotency_conflict`.
Where the provider replays, a row whose worker died between the provider's answer and its start
page gets its run id back when the chunk is created again, so the safety net can ask for it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from rowcall.ledger import Ledger
from rowcall.models import BatchStatus, RowStatus
from rowcall.provider import ProviderConnection, RetryPolicy
from rowcall.runs import RunStarter
from rowcall.safety_net import SafetyNet, SafetyNetTimes
from rowcall_local.provider_emulator import ProviderEmulator, ProviderFaults
from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

from .conftest import Aws, chunk_messages, ingest
from .loopback_runs import API_KEY, PROVIDER_SECRET, starter
from .scripted_provider import ScriptedProvider, error

ONE_ROW = b"prompt\nonly row\n"
TIMES = SafetyNetTimes(reconcile_after_s=60, callback_deadline_s=600)


@pytest.fixture
def scripted() -> Iterator[ScriptedProvider]:
    provider = ScriptedProvider()
    yield provider
    provider.close()


def net(aws: Aws, provider_url: str, now: float) -> SafetyNet:
    return SafetyNet(
        ledger=aws.ledger,
        finisher=aws.finisher,
        chunk_queue=aws.chunk_queue,
        done_queue=aws.done_queue,
        provider=ProviderConnection(
            base_url=provider_url, api_key=API_KEY, retry=RetryPolicy(attempts=2, base_delay_s=0.01)
        ),
        times=TIMES,
        clock=lambda: now,
    )


def run_object(run_id: str, status: str, created_at_s: float) -> dict[str, Any]:
    body: dict[str, Any] = {"run_id": run_id, "status": status, "created_at": int(created_at_s * 1000)}
    if status == "completed":
        body["outputs"] = [{"output_id": "o", "type": "imageUrl", "url": f"https://cdn/{run_id}.png"}]
    return body


def died_before_its_start_page(aws: Aws, batch_id: str, at: float) -> None:
    """A delivery that wrote its intent for the row and was killed after sending the create."""
    aws.ledger.rows.record_intents(batch_id, 0, [1], "dead-00001", at)


def test_a_replayed_run_is_recorded_with_its_id_counted_once_and_asked_for_by_the_safety_net(
    aws: Aws, scripted: ScriptedProvider, callbacks: Receiver
) -> None:
    batch_id = ingest(aws, ONE_ROW)
    (message,) = chunk_messages(aws)
    created = time.time() - 1000  # the dead delivery's create, 1,000 s ago: its intent is stale
    died_before_its_start_page(aws, batch_id, created)
    scripted.script = [(201, {}, run_object("run_first", "pending", created))]
    report = starter(aws, scripted, callbacks).start_chunk(message, lambda: 300.0)
    assert (report.started, report.already_started, report.refused) == (0, 1, 0)
    assert [r["method"] for r in scripted.requests] == ["POST"]
    (start,) = aws.ledger.rows.starts(batch_id, 0).values()
    assert (start.record, start.run_id) == (1, "run_first")
    counter = aws.ledger.chunks.counter(batch_id, 0)
    assert counter is not None and counter.started == 1

    # Its webhook was lost too: the safety net asks for the run it now knows, once.
    scripted.by_path = {
        "/techniques/tech/runs/run_first": (200, {}, run_object("run_first", "completed", created))
    }
    swept = net(aws, scripted.url, time.time() + TIMES.reconcile_after_s + 1).sweep()
    assert (swept.asked, swept.recorded, swept.timed_out) == (1, 1, 0)
    (row,) = aws.ledger.rows.rows_of_chunk(batch_id, 0)
    assert (row.status, row.run_id) == (RowStatus.COMPLETED, "run_first")
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and batch.status is BatchStatus.COMPLETED


def test_a_fresh_create_is_counted_as_started(
    aws: Aws, scripted: ScriptedProvider, callbacks: Receiver
) -> None:
    ingest(aws, ONE_ROW)
    (message,) = chunk_messages(aws)
    scripted.script = [(201, {}, run_object("run_new", "pending", time.time()))]
    report = starter(aws, scripted, callbacks).start_chunk(message, lambda: 300.0)
    assert (report.started, report.already_started) == (1, 0)


def test_an_idempotency_conflict_is_a_run_that_exists_not_a_failed_row(
    aws: Aws, scripted: ScriptedProvider, callbacks: Receiver
) -> None:
    """Only the row's own earlier create can hold its key (`{batch}.{row}.{attempt}`), with a
    callback URL since changed (a rotated callback secret): a run exists and its webhook comes."""
    batch_id = ingest(aws, ONE_ROW)
    (message,) = chunk_messages(aws)
    died_before_its_start_page(aws, batch_id, time.time() - 1000)
    scripted.script = [(422, {}, error("idempotency_conflict"))]
    report = starter(aws, scripted, callbacks).start_chunk(message, lambda: 300.0)
    assert (report.started, report.already_started, report.refused) == (0, 1, 0)
    assert list(aws.ledger.rows.rows_of_chunk(batch_id, 0)) == []  # no outcome written
    (start,) = aws.ledger.rows.starts(batch_id, 0).values()
    assert start.has_run and start.run_id is None
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and batch.status is BatchStatus.RUNNING


class Killed(BaseException):
    """The worker's process dies (not an error it could handle)."""


def kill_before_start_pages(work: RunStarter) -> None:
    ledger: Ledger = work._ledger

    def dies(*args: object, **kwargs: object) -> None:
        raise Killed

    ledger.rows.record_starts = dies  # type: ignore[method-assign]


@pytest.mark.parametrize(("mode", "ends"), [("replay", "completed"), ("duplicate", "callback_timeout")])
def test_a_worker_killed_after_the_providers_answer_with_the_webhook_lost(
    aws: Aws, callbacks: Receiver, mode: str, ends: str
) -> None:
    provider = ProviderEmulator(
        API_KEY,
        ProviderFaults(delay_ms=(0, 5), seed=3, drop_callback_rate=1.0, idempotency=mode),  # type: ignore[arg-type]
        webhook_secret=PROVIDER_SECRET,
        allow_loopback_callbacks=True,
    )
    provider.start()
    try:
        batch_id = ingest(aws, ONE_ROW)
        (message,) = chunk_messages(aws)
        dying = starter(aws, provider, callbacks)
        kill_before_start_pages(dying)
        with pytest.raises(Killed):
            dying.start_chunk(message, lambda: 300.0)
        assert provider.stats()["creates"] == 1
        # The sweep finds the row never started in a still chunk and sends the chunk again.
        now = time.time()
        assert net(aws, provider.url, now + TIMES.reconcile_after_s + 1).sweep().chunks_resent == 1
        (again,) = chunk_messages(aws)
        redelivery = starter(aws, provider, callbacks)
        redelivery._intent_valid_s = 0.0  # the intent has gone stale by now
        redelivery.start_chunk(again, lambda: 300.0)
        stats = provider.stats()
        assert (stats["creates"], stats["unique_idempotency_keys"], stats["duplicate_creates"]) == (2, 1, 1)
        # No webhook comes. Replay gave the run id back, so the safety net asks for the run;
        # a 409 did not, so the row can only time out.
        later = now + TIMES.callback_deadline_s + 1
        net(aws, provider.url, now + 2 * (TIMES.reconcile_after_s + 1)).sweep()
        net(aws, provider.url, later).sweep()
        (row,) = aws.ledger.rows.rows_of_chunk(batch_id, 0)
        assert (row.status.value if row.error_code is None else row.error_code) == ends
        batch = aws.ledger.batches.get(batch_id)
        assert batch is not None and batch.status.is_terminal
    finally:
        provider.stop()
