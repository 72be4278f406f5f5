"""Run webhooks as FLORA sends them: tokens bound to the attempt, one queued message per run,
failures recorded from the envelope, completions fetched once (a scripted provider answers the
GETs), late and repeated deliveries change nothing."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rowcall.callbacks import CallbackIntake
from rowcall.flora_signature import signature_header
from rowcall.identity import CallbackSigner
from rowcall.models import BatchStatus, FinishedRun, RowStatus, RunWebhook
from rowcall.outcomes import OutcomeRecorder
from rowcall.provider import ProviderConnection, RetryPolicy

from .conftest import Aws, chunk_messages, ingest
from .scripted_provider import ScriptedProvider, error

CALLBACK_SECRET = "callback-secret"
PROVIDER_SECRET = "whsec_provider-signing-secret"
ROWS = b"sku,prompt\nA1,a cat\nA2,a dog\nA3,a fox\n"


@pytest.fixture
def provider() -> Iterator[ScriptedProvider]:
    scripted = ScriptedProvider()
    yield scripted
    scripted.close()


def intake(aws: Aws) -> CallbackIntake:
    return CallbackIntake(
        finished_runs=aws.finished_runs,
        callback_secrets=lambda: [CALLBACK_SECRET],
        provider_signing_secrets=lambda: [PROVIDER_SECRET],
    )


def recorder(aws: Aws, provider: ScriptedProvider) -> OutcomeRecorder:
    return OutcomeRecorder(
        ledger=aws.ledger,
        finisher=aws.finisher,
        provider=ProviderConnection(
            base_url=provider.url, api_key="key", retry=RetryPolicy(attempts=3, base_delay_s=0.01)
        ),
    )


def envelope(run_id: str, status: str = "completed", **failure: str) -> RunWebhook:
    data: dict[str, Any] = {"run_id": run_id, "run_type": "technique", "workspace_id": "ws_1"}
    body = {
        "id": f"whd_{run_id}",
        "type": f"run.{status}",
        "api_version": "2026-06-11",
        "created_at": int(time.time() * 1000),
        "data": data | {"status": status} | failure,
    }
    return RunWebhook.model_validate(body)


def accept(aws: Aws, batch_id: str, record: int, attempt: int, webhook: RunWebhook) -> FinishedRun:
    return intake(aws).accept(batch_id, f"0-{record}", attempt, webhook)


def record_queued(aws: Aws, provider: ScriptedProvider) -> list[FinishedRun]:
    """Drain the finished-run queue into the recorder, as the recorder function would."""
    messages = [FinishedRun.model_validate_json(b) for b in aws.drain(aws.finished_run_queue_url)]
    report = recorder(aws, provider).record([(str(n), m) for n, m in enumerate(messages)])
    assert not report.failed
    return messages


def run(run_id: str, status: str = "completed") -> tuple[int, dict[str, str], object]:
    body: dict[str, Any] = {"run_id": run_id, "status": status, "progress": 100, "created_at": 1}
    if status == "completed":
        body["outputs"] = [{"output_id": "output_0", "type": "imageUrl", "url": f"https://cdn/{run_id}.png"}]
    return 200, {}, body


def test_the_token_is_bound_to_batch_row_and_attempt_and_survives_a_rotation() -> None:
    old = CallbackSigner(["old-secret"])
    token = old.token("b_1", "0-1", 2)
    assert old.verify("b_1", "0-1", token) == 2
    assert old.verify("b_1", "0-2", token) is None
    assert old.verify("b_2", "0-1", token) is None
    assert old.verify("b_1", "0-1", "1" + token[1:]) is None  # the attempt is signed too
    assert old.verify("b_1", "0-1", token.split(".", 1)[1]) is None
    rotated = CallbackSigner(["new-secret", "old-secret"])
    assert rotated.verify("b_1", "0-1", token) == 2  # a URL handed out before the rotation
    assert rotated.token("b_1", "0-1", 2) != token  # new URLs are signed with the new secret
    assert CallbackSigner(["new-secret"]).verify("b_1", "0-1", token) is None


def test_a_failed_run_is_recorded_from_the_envelope_without_asking_the_provider(
    aws: Aws, provider: ScriptedProvider
) -> None:
    batch_id = ingest(aws, ROWS)
    chunk_messages(aws)
    for record in (1, 2, 3, 1):  # FLORA retried the first delivery
        failed = envelope(f"run_{record}", "failed", error_code="generation_failed", error_message="boom")
        accept(aws, batch_id, record, 1, failed)
    assert len(record_queued(aws, provider)) == 3
    row = next(r for r in aws.ledger.rows.rows_of_chunk(batch_id, 0) if r.record == 1)
    assert (row.status, row.error_code, row.error_message, row.run_id) == (
        RowStatus.FAILED,
        "generation_failed",
        "boom",
        "run_1",
    )
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and (batch.status, batch.failed_count) == (BatchStatus.PARTIAL, 3)
    assert provider.requests == []


def test_a_completion_delivered_twice_is_fetched_once_and_its_outputs_recorded(
    aws: Aws, provider: ScriptedProvider
) -> None:
    batch_id = ingest(aws, ROWS)
    chunk_messages(aws)
    for record in (1, 2, 3, 1, 2):  # FLORA retried two deliveries
        accept(aws, batch_id, record, 1, envelope(f"run_{record}"))
    provider.by_path = {f"/techniques/tech/runs/run_{n}": run(f"run_{n}") for n in (1, 2, 3)}
    recorded = record_queued(aws, provider)
    assert sorted(m.run_id for m in recorded) == ["run_1", "run_2", "run_3"]
    assert sorted(str(r["path"]) for r in provider.requests) == [
        f"/techniques/tech/runs/run_{n}" for n in (1, 2, 3)
    ]
    assert {r["method"] for r in provider.requests} == {"GET"}
    rows = {r.record: r for r in aws.ledger.rows.rows_of_chunk(batch_id, 0)}
    assert rows[2].status is RowStatus.COMPLETED
    assert rows[2].outputs == [{"output_id": "output_0", "type": "imageUrl", "url": "https://cdn/run_2.png"}]
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and (batch.status, batch.completed_count) == (BatchStatus.COMPLETED, 3)
    assert len(aws.drain(aws.done_queue_url)) == 1


def test_a_late_webhook_of_an_earlier_attempt_changes_nothing(aws: Aws, provider: ScriptedProvider) -> None:
    batch_id = ingest(aws, ROWS)
    chunk_messages(aws)
    # Row 1 was reprocessed: attempt 2 is running as run_new.
    aws.ledger.table.update(
        {"pk": f"BATCH#{batch_id}#CHUNK#000000", "sk": "ROW#000000001"},
        "SET #status = :running, #attempt = :two, #run_id = :run",
        values={":running": "running", ":two": 2, ":run": "run_new"},
    )
    accept(aws, batch_id, 1, 1, envelope("run_old", "failed", error_code="generation_failed"))
    accept(aws, batch_id, 2, 1, envelope("run_2"))
    provider.by_path = {"/techniques/tech/runs/run_2": run("run_2")}
    record_queued(aws, provider)
    accept(aws, batch_id, 2, 1, envelope("run_other"))  # another run for a finished row: not its run
    provider.by_path["/techniques/tech/runs/run_other"] = run("run_other")
    record_queued(aws, provider)
    rows = {r.record: r for r in aws.ledger.rows.rows_of_chunk(batch_id, 0)}
    assert (rows[1].status, rows[1].attempt, rows[1].run_id) == (RowStatus.RUNNING, 2, "run_new")
    assert (rows[2].status, rows[2].run_id) == (RowStatus.COMPLETED, "run_2")
    accept(aws, batch_id, 1, 2, envelope("run_new", "failed"))
    record_queued(aws, provider)
    assert (
        next(r for r in aws.ledger.rows.rows_of_chunk(batch_id, 0) if r.record == 1).status
        is RowStatus.FAILED
    )


def test_a_run_the_provider_does_not_know_fails_its_row_and_one_still_going_is_retried(
    aws: Aws, provider: ScriptedProvider
) -> None:
    batch_id = ingest(aws, ROWS)
    chunk_messages(aws)
    provider.by_path = {
        "/techniques/tech/runs/run_1": (404, {}, error("not_found")),
        "/techniques/tech/runs/run_2": run("run_2", "running"),
    }
    unknown = FinishedRun(
        batch_id=batch_id, chunk=0, record=1, attempt=1, run_id="run_1", status=RowStatus.COMPLETED
    )
    going = unknown.model_copy(update={"record": 2, "run_id": "run_2"})
    report = recorder(aws, provider).record([("m1", unknown), ("m2", going)])
    assert (report.failed, report.recorded) == ({"m2"}, 1)
    rows = {r.record: r for r in aws.ledger.rows.rows_of_chunk(batch_id, 0)}
    assert rows[1].error_code == "run_not_found" and 2 not in rows


def test_outcomes_of_a_received_batch_are_counted_once_per_chunk(
    aws: Aws, provider: ScriptedProvider
) -> None:
    batch_id = ingest(aws, ROWS)
    chunk_messages(aws)
    for record in (1, 2, 3):
        accept(aws, batch_id, record, 1, envelope(f"run_{record}", "failed", error_code="generation_failed"))
    record_queued(aws, provider)
    counter = aws.ledger.chunks.counter(batch_id, 0)
    assert counter is not None and (counter.failed, counter.settled) == (3, True)


def test_the_signature_check_uses_the_provider_secret_over_the_raw_body(aws: Aws) -> None:
    hooks = intake(aws)
    body = json.dumps(envelope("run_1").model_dump()).encode()
    now = int(time.time())
    assert hooks.signed_by_provider(signature_header([PROVIDER_SECRET], now, body), body)
    assert not hooks.signed_by_provider(signature_header(["whsec_forged"], now, body), body)
    assert not hooks.signed_by_provider(signature_header([PROVIDER_SECRET], now - 301, body), body)
    assert not hooks.signed_by_provider(None, body)
