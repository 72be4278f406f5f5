"""What the recorder reads per received batch of outcomes: the batch item only when a chunk has
no run left out (a canceled batch can finish only then), not once per received batch.

GetItem requests are counted with a botocore hook on the client the ledger uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rowcall.ledger.keys import batch_key
from rowcall.models import FinishedRun
from rowcall.outcomes import OutcomeRecorder
from rowcall.provider import ProviderConnection
from rowcall_local.provider_emulator import ProviderEmulator
from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

from .conftest import Aws, chunk_messages, ingest
from .loopback_runs import API_KEY, FAST_RETRY, replay_intake, starter
from .test_batch_actions import ROWS, TOTAL, actions, counts, done_messages


@contextmanager
def batch_reads(aws: Aws, batch_id: str) -> Iterator[list[int]]:
    """Counts GetItem requests of the batch item made meanwhile (one entry: the count)."""
    key = batch_key(batch_id)
    seen = [0]

    def count(params: dict[str, Any], **_: Any) -> None:
        if {k: v.get("S") for k, v in params["Key"].items()} == key:
            seen[0] += 1

    events = aws.dynamodb.meta.events
    events.register("provide-client-params.dynamodb.GetItem", count)
    try:
        yield seen
    finally:
        events.unregister("provide-client-params.dynamodb.GetItem", count)


def finished_runs(aws: Aws, provider: ProviderEmulator, callbacks: Receiver, count: int) -> list[FinishedRun]:
    """The finished-run messages the webhook function would queue for the first `count` runs."""
    got = callbacks.wait_for(lambda got: len(got) >= count)
    replay_intake(aws, got)
    return [FinishedRun.model_validate_json(b) for b in aws.drain(aws.finished_run_queue_url)]


def start_all(aws: Aws, provider: ProviderEmulator, callbacks: Receiver) -> str:
    batch_id = ingest(aws, ROWS)
    work = starter(aws, provider, callbacks)
    for message in chunk_messages(aws):
        work.start_chunk(message, lambda: 300.0)
    return batch_id


def recorder(aws: Aws, provider: ProviderEmulator) -> OutcomeRecorder:
    """One per test, as one per container: the batch's technique is read once and cached."""
    connection = ProviderConnection(base_url=provider.url, api_key=API_KEY, retry=FAST_RETRY)
    return OutcomeRecorder(ledger=aws.ledger, finisher=aws.finisher, provider=connection)


def test_the_batch_is_read_once_per_chunk_drained_not_once_per_received_batch(
    aws: Aws, provider: ProviderEmulator, callbacks: Receiver
) -> None:
    batch_id = start_all(aws, provider, callbacks)
    runs = sorted(finished_runs(aws, provider, callbacks, TOTAL), key=lambda m: (m.chunk, m.record))
    record = recorder(aws, provider)
    per_batch = []
    for n, message in enumerate(runs):  # one outcome per received batch: the worst case
        with batch_reads(aws, batch_id) as seen:
            assert not record.record([(str(n), message)]).failed
        per_batch.append(seen[0])
    last_of_chunk = {max(n for n, m in enumerate(runs) if m.chunk == c) for c in {m.chunk for m in runs}}
    # The first received batch reads the batch's technique and its failure threshold (each cached
    # for the container's life). Otherwise the batch is read only when the outcome drains its
    # chunk: once to look for a cancel, once more when the chunk settles (finish_if_done), not
    # once per received batch as before.
    first = 2
    for n, reads in enumerate(per_batch):
        expected_most = (2 if n in last_of_chunk else 0) + (first if n == 0 else 0)
        assert reads <= expected_most, (n, per_batch)
    assert sum(per_batch) <= first + 2 * len(last_of_chunk) < first + len(runs)
    assert counts(aws, batch_id) == ("completed", TOTAL, 0, 0)
    assert [m.finish_seq for m in done_messages(aws)] == [1]


def test_a_canceled_batch_still_finishes_on_the_outcome_of_its_last_run_out(
    aws: Aws, provider: ProviderEmulator, callbacks: Receiver
) -> None:
    batch_id = start_all(aws, provider, callbacks)
    actions(aws).cancel(batch_id)
    runs = finished_runs(aws, provider, callbacks, TOTAL)
    record = recorder(aws, provider)
    for n, message in enumerate(runs[:-1]):
        assert not record.record([(str(n), message)]).failed
        assert done_messages(aws) == []
    with batch_reads(aws, batch_id) as seen:
        assert not record.record([("last", runs[-1])]).failed
    assert seen[0] >= 1  # the outcome that drained the batch's last chunk looked, and finished it
    assert [m.finish_seq for m in done_messages(aws)] == [1]
    assert counts(aws, batch_id) == ("canceled", TOTAL, 0, 0)
