"""Worker, callbacks and on-done through the layer, with the provider emulator on loopback."""

from __future__ import annotations

import csv
import io
import json
import random
import time

import pytest
from standardwebhooks import Webhook

from rowcall.ledger import NO_RUN, StartedRun
from rowcall.models import BatchStatus, DoneMessage
from rowcall.ondone import OnDoneDelivery
from rowcall.outbound import webhook_client
from rowcall.queues import DoneQueue
from rowcall.runs import ChunkIncomplete
from rowcall.signing import WebhookSigner
from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

from .conftest import LOOPBACK_ALLOWED, Aws, chunk_messages, ingest
from .loopback_runs import (
    WEBHOOK_SECRET,
    replay,
    start_provider,
    starter,
)
from .scripted_provider import ScriptedProvider, error

ROWS = b'sku,prompt,style\nA1,=SUM(1),plain\nA2,a dog,"bold, loud"\nA3,x\nA4,a fox,\nA5,an owl,\nA6,a bee,\n'


def test_every_row_starts_once_and_a_redelivered_chunk_starts_nothing(aws: Aws, callbacks: Receiver) -> None:
    provider = start_provider()
    try:
        batch_id = ingest(aws, ROWS, **{"key-column": "sku", "input-types": "style=text"})
        messages = chunk_messages(aws)
        assert [m.chunk.rows for m in messages] == [4, 1]
        work = starter(aws, provider, callbacks)
        for message in messages + messages:  # SQS delivers at least once
            work.start_chunk(message, lambda: 300.0)
        stats = provider.stats()
        assert (stats["creates"], stats["unique_idempotency_keys"], stats["duplicate_creates"]) == (5, 5, 0)
        received = callbacks.wait_for(lambda got: len(got) == 5)
        replay(aws, provider, received + received, random.Random(3))  # duplicated and out of order
        batch = aws.ledger.batches.get(batch_id)
        assert batch is not None
        assert (batch.status, batch.completed_count, batch.failed_count, batch.rows_skipped) == (
            BatchStatus.COMPLETED,
            5,
            0,
            1,
        )
        assert {DoneMessage.model_validate_json(b).finish_seq for b in aws.drain(aws.done_queue_url)} == {1}
    finally:
        provider.stop()


def test_429s_and_5xxs_are_retried_until_every_row_has_one_run(aws: Aws, callbacks: Receiver) -> None:
    provider = start_provider(rate_429=0.3, rate_5xx=0.2)
    try:
        ingest(aws, ROWS)
        for message in chunk_messages(aws):
            starter(aws, provider, callbacks).start_chunk(message, lambda: 300.0)
        stats = provider.stats()
        assert stats["unique_idempotency_keys"] == 5
        assert stats["creates"] > 5
    finally:
        provider.stop()


def test_an_unknown_technique_fails_the_batch_on_its_first_rows(aws: Aws, callbacks: Receiver) -> None:
    provider = start_provider()
    try:
        body = b"p\n" + b"".join(f"row {n}\n".encode() for n in range(40))
        batch_id = ingest(aws, body, **{"technique-id": "missing-tech"})
        for message in chunk_messages(aws):
            starter(aws, provider, callbacks).start_chunk(message, lambda: 300.0)
        batch = aws.ledger.batches.get(batch_id)
        assert batch is not None and (batch.status, batch.reason) == (
            BatchStatus.FAILED,
            "technique_not_found",
        )
        assert provider.stats()["creates"] <= 4  # one chunk's first concurrent rows, not all 40
        assert len(aws.drain(aws.done_queue_url)) == 1
    finally:
        provider.stop()


def test_rows_left_when_time_runs_out_are_retried_not_lost(aws: Aws, callbacks: Receiver) -> None:
    provider = start_provider()
    try:
        ingest(aws, ROWS)
        first = chunk_messages(aws)[0]
        with pytest.raises(ChunkIncomplete):
            starter(aws, provider, callbacks).start_chunk(first, lambda: 1.0)
        starter(aws, provider, callbacks).start_chunk(first, lambda: 300.0)
        assert provider.stats()["unique_idempotency_keys"] == 4
    finally:
        provider.stop()


def finish_batch(aws: Aws, callbacks: Receiver, on_done_url: str, fail_rate: float = 0.0) -> str:
    provider = start_provider(fail_rate=fail_rate)
    try:
        batch_id = ingest(aws, ROWS, **{"on-done-url": on_done_url, "key-column": "sku"})
        for message in chunk_messages(aws):
            starter(aws, provider, callbacks).start_chunk(message, lambda: 300.0)
        replay(aws, provider, callbacks.wait_for(lambda got: len(got) == 5))
    finally:
        provider.stop()
    return batch_id


def delivery(aws: Aws, clock: list[float] | None = None) -> OnDoneDelivery:
    now = clock or [1_800_000_000.0]
    return OnDoneDelivery(
        s3=aws.s3,
        sns=aws.sns,
        ledger=aws.ledger,
        done_queue=aws.done_queue,
        http=webhook_client(LOOPBACK_ALLOWED, timeout_s=5),
        signer=WebhookSigner(WEBHOOK_SECRET),
        topic_arn=aws.topic_arn,
        clock=lambda: now[0],
        retry_schedule_s=(1, 1),
    )


def receive_within(aws: Aws, timeout_s: float = 10) -> list[str]:
    """Retries are sent with an SQS delay; wait for them to become visible."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        bodies = aws.drain(aws.done_queue_url)
        if bodies:
            return bodies
        time.sleep(0.05)
    raise AssertionError("no message on the done queue")


def test_on_done_is_signed_delivered_once_with_a_results_csv(aws: Aws, callbacks: Receiver) -> None:
    hook = Receiver()
    try:
        batch_id = finish_batch(aws, callbacks, hook.url + "/done")
        messages = [DoneMessage.model_validate_json(b) for b in aws.drain(aws.done_queue_url)]
        for message in messages + messages:
            delivery(aws).deliver(message)
        assert len(hook.got) == 1
        got = hook.got[0]
        payload = json.loads(got.body)
        assert payload["type"] == "batch.completed" and payload["data"]["batch_id"] == batch_id
        assert payload["data"]["completed_count"] == 5
        results = aws.s3.get_object(Bucket=aws.bucket, Key=f"results/{batch_id}/results.csv")["Body"].read()
        rows = list(csv.reader(io.StringIO(results.decode(), newline="")))
        assert rows[0] == [
            "sku",
            "prompt",
            "style",
            "status",
            "run_id",
            "outputs",
            "error_code",
            "error_message",
            "charged_cost_usd",
            "reused_from",
            "saved_outputs",
        ]
        assert [r[0] for r in rows[1:]] == ["A1", "A2", "A4", "A5", "A6"]
        assert rows[1][1] == "'=SUM(1)"
        assert rows[2][2] == "bold, loud"
        assert all(r[3] == "completed" and r[4].startswith("run_") for r in rows[1:])
        errors = aws.s3.get_object(Bucket=aws.bucket, Key=f"results/{batch_id}/row-errors.csv")["Body"].read()
        assert errors.decode().splitlines()[1].startswith("4,column_count,")
    finally:
        hook.close()


def test_on_done_signature_verifies_with_the_standard_webhooks_library(aws: Aws, callbacks: Receiver) -> None:
    hook = Receiver()
    try:
        finish_batch(aws, callbacks, hook.url + "/done")
        message = DoneMessage.model_validate_json(aws.drain(aws.done_queue_url)[0])
        delivery(aws, [time.time()]).deliver(message)
        got = hook.got[0]
        assert Webhook(WEBHOOK_SECRET).verify(got.body, got.headers)["type"] == "batch.completed"
    finally:
        hook.close()


def test_a_failing_endpoint_is_retried_later_with_the_same_webhook_id(aws: Aws, callbacks: Receiver) -> None:
    hook = Receiver(status=503)
    try:
        batch_id = finish_batch(aws, callbacks, hook.url + "/done", fail_rate=1.0)
        message = DoneMessage.model_validate_json(aws.drain(aws.done_queue_url)[0])
        clock = [1_800_000_000.0]
        first = delivery(aws, clock).deliver(message)
        assert (first.status, first.attempts) == ("retrying", 1)
        (retry_body,) = receive_within(aws)
        retry = DoneMessage.model_validate_json(retry_body)
        assert retry.attempt == 1
        assert delivery(aws, clock).deliver(retry).status == "waiting"  # too early: waits again
        assert [DoneMessage.model_validate_json(b) for b in receive_within(aws)] == [retry]
        hook.status = 200
        clock[0] += 2
        assert delivery(aws, clock).deliver(retry).status == "delivered"
        assert len({r.headers["webhook-id"] for r in hook.got}) == 1 and len(hook.got) == 2
        assert json.loads(hook.got[-1].body)["data"]["status"] == "partial"
        batch = aws.ledger.batches.get(batch_id)
        assert batch is not None and batch.notification.status == "delivered"
        assert batch.notification.attempts == 2
    finally:
        hook.close()


class DoneQueueThatFailsOnce(DoneQueue):
    def __init__(self, inner: DoneQueue) -> None:
        self._inner, self.failed = inner, False

    def send(self, message: DoneMessage, delay_seconds: int = 0) -> None:
        if not self.failed:
            self.failed = True
            raise ConnectionError("SQS unreachable")
        self._inner.send(message, delay_seconds)


def test_a_retry_whose_message_was_never_sent_is_sent_by_the_redelivered_original(
    aws: Aws, callbacks: Receiver
) -> None:
    hook = Receiver(status=503)
    try:
        finish_batch(aws, callbacks, hook.url + "/done")
        original = DoneMessage.model_validate_json(aws.drain(aws.done_queue_url)[0])
        clock = [1_800_000_000.0]
        flaky = delivery(aws, clock)
        flaky._done = DoneQueueThatFailsOnce(aws.done_queue)
        with pytest.raises(ConnectionError):
            flaky.deliver(original)  # attempt 1 failed and was recorded; its retry was not sent
        assert delivery(aws, clock).deliver(original).status == "waiting"
        (resent,) = [DoneMessage.model_validate_json(b) for b in receive_within(aws)]
        assert resent.attempt == 1
        hook.status = 200
        clock[0] += 2
        assert delivery(aws, clock).deliver(resent).status == "delivered"
    finally:
        hook.close()


def test_a_refused_row_fails_with_the_providers_code_and_the_batch_still_finishes(
    aws: Aws, callbacks: Receiver
) -> None:
    scripted = ScriptedProvider()
    scripted.script = [(422, {}, error("invalid_input"))]
    try:
        batch_id = ingest(aws, b"prompt\nonly row\n")
        (message,) = chunk_messages(aws)
        assert starter(aws, scripted, callbacks).start_chunk(message, lambda: 300.0).refused == 1
    finally:
        scripted.close()
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and (batch.status, batch.failed_count) == (BatchStatus.PARTIAL, 1)
    (row,) = aws.ledger.rows.rows_of_chunk(batch_id, 0)
    assert (row.status.value, row.error_code, row.line, row.key) == ("failed", "invalid_input", 2, "1")
    assert len(aws.drain(aws.done_queue_url)) == 1


def test_a_chunk_delivered_twice_at_once_asks_the_provider_once(aws: Aws, callbacks: Receiver) -> None:
    from rowcall.runs import ChunkBusy

    provider = start_provider()
    try:
        batch_id = ingest(aws, ROWS)
        first = chunk_messages(aws)[0]
        # Another delivery of the same chunk is still at work.
        assert aws.ledger.chunks.claim(batch_id, 0, holder="other", until_epoch=time.time() + 60)
        with pytest.raises(ChunkBusy):
            starter(aws, provider, callbacks).start_chunk(first, lambda: 300.0)
        assert provider.stats()["creates"] == 0
        aws.ledger.chunks.release(batch_id, 0, holder="other")
        assert starter(aws, provider, callbacks).start_chunk(first, lambda: 300.0).started == 4
        # A holder that died frees the chunk when its time is up.
        assert aws.ledger.chunks.claim(batch_id, 1, holder="dead", until_epoch=time.time() - 5)
        assert aws.ledger.chunks.claim(batch_id, 1, holder="next", until_epoch=time.time() + 60)
    finally:
        provider.stop()


def test_rows_a_crashed_worker_was_creating_wait_for_their_webhooks_not_a_second_create(
    aws: Aws, callbacks: Receiver
) -> None:
    provider = start_provider()
    try:
        batch_id = ingest(aws, ROWS)
        first = chunk_messages(aws)[0]
        rows = aws.ledger.rows
        # A worker died after sending creates for records 1 and 2 (intent written, no start page);
        # record 4's create had been answered 402 (its intent resolved: no run).
        rows.record_intents(batch_id, 0, [1, 2, 4], "dead-00001", time.time())
        rows.record_starts(batch_id, 0, [StartedRun(4, 1, NO_RUN, 5, time.time() + 0.001)], "dead-00002")
        report = starter(aws, provider, callbacks).start_chunk(first, lambda: 300.0)
        assert (report.skipped_known, report.started) == (2, 2)  # 4 and 5 start, 1 and 2 wait
        # Once the intent is stale, the rows are created (a 409 would say a run exists).
        stale = starter(aws, provider, callbacks)
        stale._intent_valid_s = 0.0
        aws.drain(aws.chunk_queue_url)
        assert stale.start_chunk(first, lambda: 300.0).started == 2
        assert provider.stats()["duplicate_creates"] == 0
    finally:
        provider.stop()


def test_a_chunk_sent_back_to_wait_counts_as_active_until_its_copy_is_due(aws: Aws) -> None:
    batch_id = ingest(aws, ROWS)
    assert aws.ledger.chunks.claim(batch_id, 0, holder="w", until_epoch=time.time() + 60)
    aws.ledger.chunks.release(batch_id, 0, holder="w", back_in_s=30)
    counter = aws.ledger.chunks.counter(batch_id, 0)
    assert counter is not None and counter.worker_until is None
    assert counter.last_start_at is not None and counter.last_start_at > time.time() + 25
    assert aws.ledger.chunks.claim(batch_id, 0, holder="w2", until_epoch=time.time() + 60)
    aws.ledger.chunks.release(batch_id, 0, holder="w2")
    counter = aws.ledger.chunks.counter(batch_id, 0)
    assert counter is not None and counter.last_start_at is not None
    assert counter.last_start_at <= time.time()
