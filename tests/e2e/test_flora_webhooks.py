"""FLORA's real webhook format through the local stack: signed envelopes without outputs, outputs
fetched once, forged/stale/replayed deliveries refused or ignored, given-up deliveries counted."""

from __future__ import annotations

import csv
import io
import json
import time
from typing import Any

import httpx
import pytest

from rowcall.flora_signature import signature_header
from rowcall.identity import CallbackSigner, secret_list
from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

from .conftest import LocalStack

pytestmark = pytest.mark.e2e

ROWS = 40
CALLBACK_SECRET_PARAMETER = "/rowcall/callback-secret"  # template.yaml's default


def upload(stack: LocalStack, key: str, rows: int) -> dict[str, Any]:
    body = "sku,prompt\n" + "".join(f"K{n},prompt {n}\n" for n in range(rows))
    stack.s3.put_object(
        Bucket=stack.info["bucket"],
        Key=key,
        Body=body.encode(),
        Metadata={"reuse": "off", "key-column": "sku"},
    )
    return stack.batch_for(key)


def results(stack: LocalStack, batch: dict[str, Any]) -> list[dict[str, str]]:
    body = stack.s3.get_object(Bucket=stack.info["bucket"], Key=batch["results"]["csv_key"])["Body"].read()
    return list(csv.DictReader(io.StringIO(body.decode(), newline="")))


def callback_signer(stack: LocalStack) -> CallbackSigner:
    """Made from the stack's own secret, read from the embedded AWS as the functions read it."""
    value = stack.client("ssm").get_parameter(Name=CALLBACK_SECRET_PARAMETER, WithDecryption=True)[
        "Parameter"
    ]["Value"]
    return CallbackSigner(secret_list(value))


def post_webhook(
    stack: LocalStack, batch_id: str, row_id: str, body: bytes, *, secret: str, signed_at: int
) -> httpx.Response:
    token = callback_signer(stack).token(batch_id, row_id, 1)
    envelope = json.loads(body)
    return httpx.post(
        f"{stack.info['api_url']}/callbacks/{batch_id}/{row_id}",
        params={"token": token},
        content=body,
        headers={
            "Content-Type": "application/json",
            "Flora-Signature": signature_header([secret], signed_at, body),
            "Flora-Webhook-Id": envelope["id"],
            "Flora-Event": envelope["type"],
        },
        timeout=10,
    )


def envelope(run_id: str, status: str) -> bytes:
    data: dict[str, Any] = {"run_id": run_id, "run_type": "technique", "workspace_id": "ws_e2e"}
    data["status"] = status
    if status == "failed":
        data |= {"error_code": "generation_failed", "error_message": "forged"}
    body = {
        "id": f"whd_replay_{run_id}_{status}",
        "type": f"run.{status}",
        "api_version": "2026-06-11",
        "created_at": int(time.time() * 1000),
        "data": data,
    }
    return json.dumps(body).encode()


def wait_until(condition: Any, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def finished_runs_empty(stack: LocalStack) -> bool:
    sqs = stack.sqs
    url = next(u for u in sqs.list_queues()["QueueUrls"] if "FinishedRunQueue" in u)
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    waiting = ("ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible")
    return all(attributes[name] == "0" for name in waiting)


def test_real_format_webhooks_finish_a_batch_with_outputs_and_no_polls(stack: LocalStack) -> None:
    before = stack.provider_stats()
    batch = upload(stack, "uploads/e2e-flora.csv", ROWS)
    done = stack.wait_terminal(batch["batch_id"])
    assert (done["status"], done["completed_count"], done["failed_count"]) == ("completed", ROWS, 0)
    done = stack.wait_notified(done["batch_id"])
    rows = results(stack, done)
    assert len(rows) == ROWS
    # Outputs are served by the emulator itself (contract section 5), fetched from the run.
    media = f"{stack.info['provider_url']}/_media/"
    assert all(json.loads(r["outputs"])[0]["url"].startswith(media) for r in rows)
    assert len({r["run_id"] for r in rows}) == ROWS
    after = stack.provider_stats()
    delta = {k: after[k] - before[k] for k in after if k != "max_in_flight"}
    assert delta["polls"] == 0
    assert delta["creates"] == ROWS and delta["unique_idempotency_keys"] == ROWS
    assert delta["gets"] <= ROWS
    assert delta["callbacks_sent"] >= ROWS and delta["deliveries_given_up"] == 0


def test_forged_stale_and_replayed_deliveries_change_nothing(stack: LocalStack) -> None:
    batch = upload(stack, "uploads/e2e-flora-replay.csv", 3)
    done = stack.wait_notified(stack.wait_terminal(batch["batch_id"])["batch_id"])
    assert done["status"] == "completed"
    first = results(stack, done)[0]
    batch_id, row_id, run_id = done["batch_id"], "0-1", first["run_id"]
    secret, now = stack.info["provider_webhook_secret"], int(time.time())
    failed = envelope(run_id, "failed")

    forged = post_webhook(stack, batch_id, row_id, failed, secret="whsec_forged", signed_at=now)
    stale = post_webhook(stack, batch_id, row_id, failed, secret=secret, signed_at=now - 301)
    for response in (forged, stale):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_signature"
    bad_token = httpx.post(
        f"{stack.info['api_url']}/callbacks/{batch_id}/{row_id}", params={"token": "1.forged"}, content=failed
    )
    assert bad_token.status_code == 401 and bad_token.json()["error"]["code"] == "invalid_token"

    gets_before = stack.provider_stats()["gets"]
    # Signed correctly, for the row's own run: accepted (FLORA must see 2xx) and changes nothing.
    for status in ("failed", "completed"):
        body = envelope(run_id, status)
        replayed = post_webhook(stack, batch_id, row_id, body, secret=secret, signed_at=now)
        assert replayed.status_code == 200 and replayed.json() == {"accepted": True}
    wait_until(lambda: finished_runs_empty(stack))
    assert stack.provider_stats()["gets"] == gets_before, "a replayed delivery fetched the run again"

    again = stack.wait_batch(batch_id, lambda b: True, 5)
    assert (again["status"], again["completed_count"], again["failed_count"]) == ("completed", 3, 0)
    assert again["notification"]["attempts"] == done["notification"]["attempts"]
    assert results(stack, again)[0]["status"] == "completed"


def test_a_delivery_the_emulator_gives_up_on_is_counted(stack: LocalStack) -> None:
    refusing = Receiver(status=500)
    try:
        before = stack.provider_stats()
        created = httpx.post(
            f"{stack.info['provider_url']}/techniques/tech/runs",
            headers={"Authorization": f"Bearer {stack.info['provider_api_key']}"},
            json={
                "inputs": [{"id": "prompt", "type": "text", "value": "a cat"}],
                "mode": "async",
                "callback_url": refusing.url + "/callbacks/b/0-1?token=t",
                "idempotency_key": f"e2e-given-up-{time.time_ns()}",
            },
            timeout=10,
        )
        assert created.status_code == 201, created.text
        refusing.wait_for(lambda got: len(got) == 4, timeout_s=30)  # the delivery and 3 retries
        wait_until(lambda: stack.provider_stats()["deliveries_given_up"] == before["deliveries_given_up"] + 1)
        after = stack.provider_stats()
        assert after["callbacks_failed"] - before["callbacks_failed"] == 4
        assert len({r.headers["flora-webhook-id"] for r in refusing.got}) == 1
    finally:
        refusing.close()
