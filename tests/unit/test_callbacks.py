"""Run webhooks as FLORA sends them: tokens bound to the attempt, failures recorded from the
envelope, completions fetched once (a scripted provider answers the GETs), replays change nothing."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from rowcall.callbacks import CallbackRecorder
from rowcall.fetching import OutputFetcher, RunNotFinished
from rowcall.flora_signature import signature_header
from rowcall.identity import CallbackSigner
from rowcall.models import BatchStatus, FetchMessage, RowStatus, RunWebhook
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


def recorder(aws: Aws, callback_secrets: list[str] | None = None) -> CallbackRecorder:
    return CallbackRecorder(
        ledger=aws.ledger,
        finisher=aws.finisher,
        fetch_queue=aws.fetch_queue,
        callback_secrets=lambda: callback_secrets or [CALLBACK_SECRET],
        provider_signing_secrets=lambda: [PROVIDER_SECRET],
    )


def fetcher(aws: Aws, provider: ScriptedProvider) -> OutputFetcher:
    return OutputFetcher(
        ledger=aws.ledger,
        finisher=aws.finisher,
        provider=ProviderConnection(
            base_url=provider.url, api_key="key", retry=RetryPolicy(attempts=3, base_delay_s=0.01)
        ),
    )


def envelope(run_id: str, status: str = "completed", **failure: str) -> RunWebhook:
    data: dict[str, Any] = {
        "run_id": run_id,
        "run_type": "technique",
        "workspace_id": "ws_1",
        "status": status,
    }
    body = {
        "id": f"whd_{run_id}",
        "type": f"run.{status}",
        "api_version": "2026-06-11",
        "created_at": int(time.time() * 1000),
        "data": data | failure,
    }
    return RunWebhook.model_validate(body)


def fetch_queued(aws: Aws, provider: ScriptedProvider) -> list[FetchMessage]:
    messages = [FetchMessage.model_validate_json(b) for b in aws.drain(aws.fetch_queue_url)]
    work = fetcher(aws, provider)

    async def fetch_all() -> None:
        await asyncio.gather(*(work.fetch(m) for m in messages))

    asyncio.run(fetch_all())
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
    hooks = recorder(aws)
    for record in (1, 2, 3):
        failed = envelope(f"run_{record}", "failed", error_code="generation_failed", error_message="boom")
        result = hooks.record(batch_id, f"0-{record}", 1, failed)
        assert (result.recorded, result.status) == (True, "failed")
    again = hooks.record(batch_id, "0-1", 1, envelope("run_1", "failed", error_code="generation_failed"))
    assert again.recorded is False
    row = next(r for r in aws.ledger.rows_of_chunk(batch_id, 0) if r.record == 1)
    assert (row.status, row.error_code, row.error_message, row.run_id) == (
        RowStatus.FAILED,
        "generation_failed",
        "boom",
        "run_1",
    )
    batch = aws.ledger.get_batch(batch_id)
    assert batch is not None and (batch.status, batch.failed_count) == (BatchStatus.PARTIAL, 3)
    assert provider.requests == [] and aws.drain(aws.fetch_queue_url) == []


def test_a_completion_delivered_twice_is_fetched_once_and_its_outputs_recorded(
    aws: Aws, provider: ScriptedProvider
) -> None:
    batch_id = ingest(aws, ROWS)
    chunk_messages(aws)
    hooks = recorder(aws)
    for record in (1, 2, 3, 1, 2):  # FLORA retried two deliveries
        assert hooks.record(batch_id, f"0-{record}", 1, envelope(f"run_{record}")).status == "fetching"
    provider.by_path = {f"/techniques/tech/runs/run_{n}": run(f"run_{n}") for n in (1, 2, 3)}
    fetched = fetch_queued(aws, provider)
    assert sorted(m.run_id for m in fetched) == ["run_1", "run_2", "run_3"]
    assert sorted(str(r["path"]) for r in provider.requests) == [
        f"/techniques/tech/runs/run_{n}" for n in (1, 2, 3)
    ]
    assert {r["method"] for r in provider.requests} == {"GET"}
    rows = {r.record: r for r in aws.ledger.rows_of_chunk(batch_id, 0)}
    assert rows[2].status is RowStatus.COMPLETED
    assert rows[2].outputs == [{"output_id": "output_0", "type": "imageUrl", "url": "https://cdn/run_2.png"}]
    batch = aws.ledger.get_batch(batch_id)
    assert batch is not None and (batch.status, batch.completed_count) == (BatchStatus.COMPLETED, 3)
    assert len(aws.drain(aws.done_queue_url)) == 1


def test_a_late_webhook_of_an_earlier_attempt_changes_nothing(aws: Aws, provider: ScriptedProvider) -> None:
    batch_id = ingest(aws, ROWS)
    chunk_messages(aws)
    aws.ledger.row_started(batch_id, 0, 1, run_id="run_new", attempt=2, line=2, key="A1")
    hooks = recorder(aws)
    stale = hooks.record(batch_id, "0-1", 1, envelope("run_old", "failed", error_code="generation_failed"))
    assert stale.recorded is False
    hooks.record(batch_id, "0-1", 1, envelope("run_old"))
    provider.script = [run("run_old")]
    fetch_queued(aws, provider)
    (row,) = [r for r in aws.ledger.rows_of_chunk(batch_id, 0) if r.record == 1]
    assert (row.status, row.attempt, row.run_id) == (RowStatus.RUNNING, 2, "run_new")
    assert hooks.record(batch_id, "0-1", 2, envelope("run_new", "failed")).recorded is True


def test_a_run_the_provider_does_not_know_fails_its_row_and_one_still_going_is_retried(
    aws: Aws, provider: ScriptedProvider
) -> None:
    batch_id = ingest(aws, ROWS)
    chunk_messages(aws)
    work = fetcher(aws, provider)
    provider.script = [(404, {}, error("not_found")), run("run_2", "running")]
    gone = asyncio.run(
        work.fetch(FetchMessage(batch_id=batch_id, chunk=0, record=1, attempt=1, run_id="run_1"))
    )
    assert (gone.recorded, gone.status) == (True, RowStatus.FAILED)
    with pytest.raises(RunNotFinished):
        asyncio.run(work.fetch(FetchMessage(batch_id=batch_id, chunk=0, record=2, attempt=1, run_id="run_2")))
    rows = {r.record: r for r in aws.ledger.rows_of_chunk(batch_id, 0)}
    assert rows[1].error_code == "run_not_found" and 2 not in rows


def test_the_signature_check_uses_the_provider_secret_over_the_raw_body(aws: Aws) -> None:
    hooks = recorder(aws)
    body = json.dumps(envelope("run_1").model_dump()).encode()
    now = int(time.time())
    assert hooks.signed_by_provider(signature_header([PROVIDER_SECRET], now, body), body)
    assert not hooks.signed_by_provider(signature_header(["whsec_forged"], now, body), body)
    assert not hooks.signed_by_provider(signature_header([PROVIDER_SECRET], now - 301, body), body)
    assert not hooks.signed_by_provider(None, body)
