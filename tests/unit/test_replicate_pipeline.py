"""Replicate batches through the layer (moto for AWS, a fake of Replicate's API on httpx's
MockTransport): the pre-flight's refusals, at most one prediction per row attempt when a worker
died between its intent and its start page, the webhook's prediction recorded without a GET."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import httpx
import pytest

from rowcall.callbacks import CallbackIntake
from rowcall.ingest import IngestLimits, Ingestor, ObjectCreated
from rowcall.models import BatchStatus, FinishedRun, RowStatus
from rowcall.outbound import webhook_client
from rowcall.outcomes import OutcomeRecorder
from rowcall.provider import ProviderConnection
from rowcall.providers.port import RetryPolicy
from rowcall.providers.replicate import ReplicateConnection, ReplicateDeliveries
from rowcall.runs import RunStarter
from rowcall.saved_outputs import OutputSaver

from .conftest import LOOPBACK_ALLOWED, Aws, chunk_messages
from .loopback_runs import SIGNER
from .test_replicate_provider import SECRET, TOKEN, VERSION, FakeReplicate, prediction_body, signed

MODEL = "acme/painter"
ROWS = b"prompt\na cat\na dog\n"
CALLBACKS = "https://hooks.example"


@dataclass(frozen=True)
class FakeConnection(ReplicateConnection):
    """Replicate's connection, its HTTP answered by the fake."""

    fake: FakeReplicate = field(default_factory=FakeReplicate)

    def http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.fake.handler))


def connection(fake: FakeReplicate) -> FakeConnection:
    return FakeConnection(
        base_url="https://api.replicate.com",
        api_token=TOKEN,
        retry=RetryPolicy(attempts=3, base_delay_s=0.001, max_delay_s=0.002),
        fake=fake,
    )


# FLORA is never asked in these tests: any request to it fails.
NO_FLORA = ProviderConnection(base_url="http://127.0.0.1:9", api_key="x", retry=RetryPolicy(attempts=1))


def ingest(aws: Aws, fake: FakeReplicate | None, body: bytes = ROWS, **meta: str) -> str:
    put = aws.s3.put_object(Bucket=aws.bucket, Key="uploads/rows.csv", Body=body, Metadata=meta)
    batch = Ingestor(
        s3=aws.s3,
        ledger=aws.ledger,
        chunk_queue=aws.chunk_queue,
        finisher=aws.finisher,
        limits=IngestLimits(max_rows=1000, max_bytes=10**6, chunk_rows=4, default_technique_id="tech"),
        destinations=LOOPBACK_ALLOWED,
        provider=NO_FLORA,
        replicate=None if fake is None else connection(fake),
    ).ingest(ObjectCreated(bucket=aws.bucket, key="uploads/rows.csv", version_id=put["VersionId"]))
    assert batch is not None
    return batch.batch_id


def replicate_batch(aws: Aws, fake: FakeReplicate, technique: str = MODEL, **meta: str) -> str:
    return ingest(aws, fake, **{"provider": "replicate", "technique-id": technique} | meta)


def starter(aws: Aws, fake: FakeReplicate, daily_budget_usd: float | None = None) -> RunStarter:
    return RunStarter(
        daily_budget_usd=daily_budget_usd,
        s3=aws.s3,
        ledger=aws.ledger,
        finisher=aws.finisher,
        provider=NO_FLORA,
        signer=SIGNER,
        callback_base_url=CALLBACKS,
        concurrency=4,
        replicate=connection(fake),
    )


def callback_url(batch_id: str, record: int) -> str:
    row_id = f"0-{record}"
    return f"{CALLBACKS}/callbacks/{batch_id}/{row_id}?token={SIGNER.token(batch_id, row_id, 1)}"


# -- pre-flight ------------------------------------------------------------------------------


def test_a_stack_without_a_replicate_token_refuses_the_batch_before_any_run(aws: Aws) -> None:
    batch_id = ingest(aws, None, **{"provider": "replicate", "technique-id": MODEL})
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and (batch.status, batch.reason) == (BatchStatus.FAILED, "provider_unauthorized")
    assert chunk_messages(aws) == []


@pytest.mark.parametrize(
    ("technique", "token", "reason"),
    [("acme/missing-model", TOKEN, "technique_not_found"), (MODEL, "wrong", "provider_unauthorized")],
)
def test_the_pre_flight_fails_an_unknown_model_or_a_refused_token(
    aws: Aws, technique: str, token: str, reason: str
) -> None:
    fake = FakeReplicate()
    conn = connection(fake)
    if token != TOKEN:
        conn = FakeConnection(base_url=conn.base_url, api_token=token, retry=conn.retry, fake=fake)
    put = aws.s3.put_object(
        Bucket=aws.bucket,
        Key="uploads/rows.csv",
        Body=ROWS,
        Metadata={"provider": "replicate", "technique-id": technique},
    )
    batch = Ingestor(
        s3=aws.s3,
        ledger=aws.ledger,
        chunk_queue=aws.chunk_queue,
        finisher=aws.finisher,
        limits=IngestLimits(max_rows=1000, max_bytes=10**6, chunk_rows=4, default_technique_id="tech"),
        provider=NO_FLORA,
        replicate=conn,
    ).ingest(ObjectCreated(bucket=aws.bucket, key="uploads/rows.csv", version_id=put["VersionId"]))
    assert batch is not None and (batch.status, batch.reason) == (BatchStatus.FAILED, reason)
    assert fake.posts() == [] and chunk_messages(aws) == []


def test_a_budget_on_replicate_fails_budget_unsupported_before_any_run(aws: Aws) -> None:
    fake = FakeReplicate()
    batch_id = replicate_batch(aws, fake, **{"max-cost-usd": "5"})
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and (batch.status, batch.reason) == (BatchStatus.FAILED, "budget_unsupported")
    assert "max-cost-usd" in (batch.reason_message or "")
    assert fake.requests == [] and chunk_messages(aws) == []


def test_a_replicate_batch_has_no_price(aws: Aws) -> None:
    fake = FakeReplicate()
    batch_id = replicate_batch(aws, fake)
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and batch.status is BatchStatus.RUNNING
    assert (batch.run_cost_micro_usd, batch.estimated_cost_micro_usd) == (None, None)
    assert [r.url.path for r in fake.requests] == [f"/v1/models/{MODEL}"]


# -- at most one prediction per row attempt ------------------------------------------------


def test_rows_are_created_once_each_with_their_webhook(aws: Aws) -> None:
    fake = FakeReplicate()
    batch_id = replicate_batch(aws, fake)
    (message,) = chunk_messages(aws)
    report = starter(aws, fake).start_chunk(message, lambda: 300.0)
    assert (report.started, report.already_started) == (2, 0)
    assert sorted(json.loads(p.content)["webhook"] for p in fake.posts()) == sorted(
        callback_url(batch_id, r) for r in (1, 2)
    )
    assert fake.lists() == []  # nothing was intended before: no search


def test_a_row_whose_prediction_was_made_before_the_worker_died_is_not_created_again(aws: Aws) -> None:
    fake = FakeReplicate()
    batch_id = replicate_batch(aws, fake)
    (message,) = chunk_messages(aws)
    intended = time.time() - 1000  # the dead delivery's intent: stale, so the row is taken up
    aws.ledger.rows.record_intents(batch_id, 0, [1, 2], "dead-00001", intended)
    # Row 1's create reached Replicate before the worker died; row 2's never left. Its webhook
    # does not show in the list (as on Replicate): its model, input and time tell it.
    fake.clock = lambda: intended + 2
    made = fake.prediction(MODEL, VERSION, {"prompt": "a cat"}, callback_url(batch_id, 1))
    fake.clock = time.time
    report = starter(aws, fake).start_chunk(message, lambda: 300.0)
    assert (report.started, report.already_started, report.found_created) == (1, 1, 1)
    (post,) = fake.posts()
    assert json.loads(post.content)["webhook"] == callback_url(batch_id, 2)
    starts = aws.ledger.rows.starts(batch_id, 0)
    assert starts[1].run_id == made["id"] and starts[2].run_id not in (None, made["id"])
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and batch.duplicate_runs == 0

    # The chunk delivered once more: both rows have runs now, nothing is created or searched.
    lists = len(fake.lists())
    again = starter(aws, fake).start_chunk(message, lambda: 300.0)
    assert (again.started, again.skipped_known) == (0, 2)
    assert len(fake.posts()) == 1 and len(fake.lists()) == lists


def test_a_row_not_found_in_the_list_is_created(aws: Aws) -> None:
    fake = FakeReplicate(page_size=1)
    batch_id = replicate_batch(aws, fake)
    (message,) = chunk_messages(aws)
    aws.ledger.rows.record_intents(batch_id, 0, [1], "dead-00001", time.time() - 1000)
    fake.clock = lambda: time.time() - 5000  # older than the intent: the walk stops at it
    fake.prediction(MODEL, VERSION, {"prompt": "a cat"}, callback_url(batch_id, 1))
    fake.clock = time.time
    fake.prediction(MODEL, VERSION, {"prompt": "a cat"}, "https://elsewhere.example/hook")
    report = starter(aws, fake).start_chunk(message, lambda: 300.0)
    assert (report.started, report.found_created) == (2, 0)
    assert len(fake.posts()) == 2
    assert len(fake.lists()) == 2  # one page with the other prediction, one with the old one


def deliver(
    aws: Aws, fake: FakeReplicate, batch_id: str, prediction: dict[str, object], record: int = 1
) -> None:
    """The prediction's webhook through the intake and the recorder, as the functions would."""
    intake = CallbackIntake(
        finished_runs=aws.finished_runs,
        callback_secrets=lambda: ["callback-secret"],
        provider_signing_secrets=lambda: ["whsec_flora"],
        batch_provider=lambda b: "replicate",
        replicate_signing_secrets=lambda: [SECRET],
    )
    body = json.dumps(prediction | {"status": "succeeded", "output": "https://r.delivery/x.png"}).encode()
    reader = intake.reader_for("replicate")
    assert reader is not None and reader.verify(signed(body), body)
    intake.accept_delivery(batch_id, f"0-{record}", 1, reader.parse(body))
    messages = [FinishedRun.model_validate_json(b) for b in aws.drain(aws.finished_run_queue_url)]
    recorder = OutcomeRecorder(
        ledger=aws.ledger, finisher=aws.finisher, provider=NO_FLORA, replicate=connection(fake)
    )
    assert not recorder.record([(str(n), m) for n, m in enumerate(messages)]).failed


def test_a_duplicate_prediction_is_counted_on_the_batch_when_its_webhook_comes(aws: Aws) -> None:
    """Two predictions were made for row 1's attempt before this delivery (the list shows their
    webhooks here): the oldest is recorded as the row's run; the other's webhook, when it comes,
    is dropped as a second outcome and counted. A repeated delivery of one run is not counted."""
    fake = FakeReplicate(shows_webhook=True)
    batch_id = replicate_batch(aws, fake)
    (message,) = chunk_messages(aws)
    aws.ledger.rows.record_intents(batch_id, 0, [1], "dead-00001", time.time() - 1000)
    first = fake.prediction(MODEL, VERSION, {"prompt": "a cat"}, callback_url(batch_id, 1))
    second = fake.prediction(MODEL, VERSION, {"prompt": "a cat"}, callback_url(batch_id, 1))
    report = starter(aws, fake).start_chunk(message, lambda: 300.0)
    assert (report.found_created, report.duplicates, report.started) == (1, 1, 1)
    assert aws.ledger.rows.starts(batch_id, 0)[1].run_id == first["id"]  # the oldest is the row's
    deliver(aws, fake, batch_id, first)
    deliver(aws, fake, batch_id, first)  # Replicate retried it: the same run, not a duplicate
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and batch.duplicate_runs == 0
    deliver(aws, fake, batch_id, second)
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and batch.duplicate_runs == 1
    (row,) = [r for r in aws.ledger.rows.rows_of_chunk(batch_id, 0) if r.record == 1]
    assert (row.status, row.run_id) == (RowStatus.COMPLETED, first["id"])


def test_the_daily_budget_does_not_count_replicate_runs(aws: Aws) -> None:
    """DailyBudgetUsd bounds the sum of run_cost: Replicate publishes none (contract §5b)."""
    fake = FakeReplicate()
    batch_id = replicate_batch(aws, fake)
    (message,) = chunk_messages(aws)
    report = starter(aws, fake, daily_budget_usd=0.01).start_chunk(message, lambda: 300.0)
    assert (report.started, report.paused) == (2, False)
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and batch.status is BatchStatus.RUNNING


def test_a_402_pauses_the_batch_insufficient_credits(aws: Aws) -> None:
    fake = FakeReplicate()
    batch_id = replicate_batch(aws, fake)
    (message,) = chunk_messages(aws)
    credit = (402, {}, {"title": "Insufficient credit", "detail": "top up", "status": 402}, False)
    fake.scripted[f"POST /v1/models/{MODEL}/predictions"] = [credit, credit]
    starter(aws, fake).start_chunk(message, lambda: 300.0)
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and (batch.status, batch.reason) == (BatchStatus.PAUSED, "insufficient_credits")


# -- the webhook -------------------------------------------------------------------------------


def test_a_signed_prediction_is_recorded_with_its_outputs_and_nothing_is_fetched(aws: Aws) -> None:
    fake = FakeReplicate()
    batch_id = replicate_batch(aws, fake)
    (message,) = chunk_messages(aws)
    starter(aws, fake).start_chunk(message, lambda: 300.0)
    intake = CallbackIntake(
        finished_runs=aws.finished_runs,
        callback_secrets=lambda: ["callback-secret"],
        provider_signing_secrets=lambda: ["whsec_flora"],
        batch_provider=lambda b: "replicate" if b == batch_id else None,
        replicate_signing_secrets=lambda: [SECRET],
    )
    reader = intake.reader_for(intake.provider_of(batch_id))
    assert isinstance(reader, ReplicateDeliveries)
    body = prediction_body()
    assert reader.verify(signed(body), body)
    assert not reader.verify({"Flora-Signature": "t=1,v1=00"}, body)  # the batch decides how
    requests_before = len(fake.requests)
    intake.accept_delivery(batch_id, "0-1", 1, reader.parse(body))
    messages = [FinishedRun.model_validate_json(b) for b in aws.drain(aws.finished_run_queue_url)]
    recorder = OutcomeRecorder(
        ledger=aws.ledger, finisher=aws.finisher, provider=NO_FLORA, replicate=connection(fake)
    )
    report = recorder.record([(str(n), m) for n, m in enumerate(messages)])
    assert not report.failed and report.recorded == 1
    assert len(fake.requests) == requests_before  # no GET after the webhook
    (row,) = aws.ledger.rows.rows_of_chunk(batch_id, 0)
    assert (row.status, row.run_id, row.charged_cost_micro_usd) == (RowStatus.COMPLETED, "p0007", None)
    assert row.outputs == [
        {"output_id": "output_0", "type": "imageUrl", "url": "https://r.delivery/x/out-0.webp"}
    ]


def test_a_text_output_is_saved_as_a_txt_object_once(aws: Aws) -> None:
    """Replicate's `output` that is no URL (a language model's answer) is one `text` output: its
    value is stored as it is, create-only like every copy."""
    saver = OutputSaver(
        s3=aws.s3,
        bucket=aws.bucket,
        ledger=aws.ledger,
        finisher=aws.finisher,
        http=webhook_client(LOOPBACK_ALLOWED),
        max_output_bytes=1024,
        sleep=lambda attempt: None,
    )
    output = {"output_id": "output_0", "type": "text", "value": "a cat, in words"}
    saved = saver.save_output("b_text", "row-1", output, redelivered=False)
    assert saved["key"] == "outputs/b_text/row-1/output_0.txt" and saved["bytes"] == 15
    got = aws.s3.get_object(Bucket=aws.bucket, Key=saved["key"])
    assert got["Body"].read() == b"a cat, in words" and got["ContentType"] == "text/plain"
    again = saver.save_output("b_text", "row-1", output, redelivered=True)
    assert (again["key"], again["sha256"]) == (saved["key"], saved["sha256"])
    too_big = saver.save_output("b_text", "row-2", output | {"value": "x" * 2000}, redelivered=False)
    assert "error" in too_big
