"""A CSV in the bucket to exactly one signed on-done, through the real local stack."""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path

import httpx
import pytest
from standardwebhooks import Webhook

from rowcall.identity import CallbackSigner, secret_list
from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

from .conftest import LocalStack

pytestmark = pytest.mark.e2e
CALLBACK_SECRET_PARAMETER = "/rowcall/callback-secret"  # template.yaml's default

# BOM, CRLF line ends, a quoted newline, embedded commas and quotes, non-ASCII text, a formula.
TRICKY_ROWS = [
    ["sku", "prompt", "image"],
    ["A-1", 'a "quoted" cat, on a mat', "https://img.example/1.png"],
    ["A-2", "two\r\nlines in one cell", "https://img.example/2.png"],
    ["A-3", "naïve café 東京 🚲", "https://img.example/3.png"],
    ["A-4", '=HYPERLINK("x")', "https://img.example/4.png"],
]


def tricky_csv() -> bytes:
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerows(TRICKY_ROWS)
    text = out.getvalue() + "A-5,only two fields\r\n" + 'A-6,"last, row",https://img.example/6.png\r\n'
    return "\ufeff".encode() + text.encode()


def results_of(stack: LocalStack, batch: dict[str, object]) -> list[list[str]]:
    key = batch["results"]["csv_key"]  # type: ignore[index]
    body = stack.s3.get_object(Bucket=stack.info["bucket"], Key=key)["Body"].read().decode("utf-8")
    return list(csv.reader(io.StringIO(body, newline="")))


def test_a_tricky_csv_finishes_with_one_signed_on_done_and_its_results(stack: LocalStack) -> None:
    """Also: a plain-http on-done-url on loopback is delivered, as the local stack allows it
    (AllowLoopbackWebhooks=true); on AWS the same URL is refused at upload."""
    hook = Receiver()
    before = stack.provider_stats()
    try:
        key = "uploads/e2e-tricky.csv"
        stack.s3.put_object(
            Bucket=stack.info["bucket"],
            Key=key,
            Body=tricky_csv(),
            Metadata={
                "key-column": "sku",
                "input-types": "image=imageUrl",
                "on-done-url": hook.url + "/done",
                "batch-name": "tricky",
            },
        )
        batch = stack.batch_for(key)
        assert batch["name"] == "tricky"
        done = stack.wait_terminal(batch["batch_id"])
        assert (done["status"], done["total_count"], done["completed_count"], done["failed_count"]) == (
            "completed",
            5,
            5,
            0,
        )
        assert (done["pending_count"], done["rows_skipped"]) == (0, 1)
        done = stack.wait_notified(batch["batch_id"])
        assert done["notification"]["status"] == "delivered"
        deliveries = hook.wait_for(lambda got: len(got) >= 1)
        assert len(deliveries) == 1
        payload = Webhook(stack.info["webhook_secret"]).verify(deliveries[0].body, deliveries[0].headers)
        assert payload["type"] == "batch.completed"
        assert payload["data"]["batch_id"] == batch["batch_id"]
        rows = results_of(stack, done)
        assert rows[0] == [
            "sku",
            "prompt",
            "image",
            "status",
            "run_id",
            "outputs",
            "error_code",
            "error_message",
            "charged_cost_usd",
            "reused_from",
            "saved_outputs",
        ]
        assert [r[:3] for r in rows[1:4]] == [r[:3] for r in TRICKY_ROWS[1:4]]
        # Each completed run is charged the emulator's run_cost for an open technique (0.04).
        assert all(r[8] == "0.04" for r in rows[1:])
        assert rows[4][1] == '\'=HYPERLINK("x")'
        assert rows[5][:2] == ["A-6", "last, row"]
        assert all(r[3] == "completed" and r[4] for r in rows[1:])
        # Outputs are served by the emulator itself (contract section 5).
        assert json.loads(rows[1][5])[0]["url"].startswith(f"{stack.info['provider_url']}/_media/")
        after = stack.provider_stats()
        assert after["creates"] - before["creates"] == 5
        assert after["unique_idempotency_keys"] - before["unique_idempotency_keys"] == 5
        # One GET per completed run for the outputs its webhook does not carry; never a poll.
        assert after["gets"] - before["gets"] == 5
        assert after["polls"] == before["polls"]
    finally:
        hook.close()


def test_a_thousand_row_batch_with_metadata_counts_every_row(stack: LocalStack) -> None:
    hook = Receiver()
    try:
        out = io.StringIO(newline="")
        writer = csv.writer(out)
        writer.writerow(["id", "prompt", "ref"])
        for n in range(1, 1001):
            writer.writerow([f"R{n:04d}", f"prompt number {n}", f"https://img.example/{n}.png"])
        key = "uploads/e2e-thousand.csv"
        started = time.monotonic()
        stack.s3.put_object(
            Bucket=stack.info["bucket"],
            Key=key,
            Body=out.getvalue().encode(),
            Metadata={
                "technique-id": "tech-e2e",
                "key-column": "id",
                "input-columns": "prompt;ref",
                "input-types": "ref=imageUrl",
                "static-inputs": '[{"id":"reference_0","type":"imageUrl","value":"https://img.example/ref.png"}]',
                "on-done-url": hook.url + "/done",
            },
        )
        batch = stack.batch_for(key)
        done = stack.wait_terminal(batch["batch_id"], timeout_s=300)
        elapsed = time.monotonic() - started
        assert (done["status"], done["total_count"], done["completed_count"]) == ("completed", 1000, 1000)
        assert done["technique_id"] == "tech-e2e"
        done = stack.wait_notified(batch["batch_id"])
        assert len(hook.wait_for(lambda got: len(got) >= 1)) == 1
        rows = results_of(stack, done)
        assert len(rows) == 1001 and [r[0] for r in rows[1:3]] == ["R0001", "R0002"]
        print(f"\n1,000-row batch: {elapsed:.1f}s upload-to-completed, {1000 / elapsed:.0f} rows/s")
    finally:
        hook.close()


def test_the_api_wants_its_token_and_answers_unknown_batches_with_404(stack: LocalStack) -> None:
    anonymous = httpx.get(stack.info["api_url"] + "/batches", timeout=10)
    assert anonymous.status_code == 401 and "error" in anonymous.json()
    with stack.api as api:
        missing = api.get("/batches/b_nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "batch_not_found"


def test_a_forged_callback_is_refused_over_http(stack: LocalStack) -> None:
    forged = httpx.post(
        stack.info["api_url"] + "/callbacks/b_nope/0-1?token=forged",
        json={"run_id": "run_x", "status": "completed"},
        timeout=10,
    )
    assert forged.status_code == 401 and forged.json()["error"]["code"] == "invalid_token"


def test_a_rejected_file_fails_its_batch_with_a_reason(stack: LocalStack) -> None:
    key = "uploads/e2e-empty.csv"
    stack.s3.put_object(Bucket=stack.info["bucket"], Key=key, Body=b"")
    batch = stack.wait_terminal(stack.batch_for(key)["batch_id"])
    assert (batch["status"], batch["reason"]) == ("failed", "empty_file")


def callback_tokens(stack: LocalStack, callback_secret: str) -> set[str]:
    """The callback token of every row the ledger holds (what the worker put in callback URLs)."""
    signer = CallbackSigner(secret_list(callback_secret))
    tokens = set()
    for page in stack.client("dynamodb").get_paginator("scan").paginate(TableName=stack.info["table"]):
        for item in page["Items"]:
            pk, sk = item["pk"]["S"], item["sk"]["S"]
            if "#CHUNK#" in pk and sk.startswith("ROW#"):
                batch_id, chunk = pk.removeprefix("BATCH#").split("#CHUNK#")
                row_id = f"{int(chunk)}-{int(sk.removeprefix('ROW#'))}"
                tokens.add(signer.token(batch_id, row_id, int(item.get("attempt", {}).get("N", "1"))))
            elif pk.startswith("REUSE#"):
                # A completed run's token also carried its content key (`rowcall.reuse`).
                content_key = pk.removeprefix("REUSE#")
                tokens.add(signer.token(item["batch_id"]["S"], item["row_id"]["S"], 1, content_key))
    return tokens


def test_logs_hold_no_secrets(stack: LocalStack) -> None:
    """Every log line of this run (each function's log, moto's, the provider's and `rowcall up`'s
    own up.log), after the batches above: none of the four secrets, the API token, nor any
    callback token."""
    paths = list(stack.state_dir.rglob("*.log"))
    assert {"WebhookFunction", "WorkerFunction", "NotifierFunction", "up"} <= {p.stem for p in paths}
    logs = "".join(p.read_text(errors="replace") for p in paths)
    ssm = stack.client("ssm")
    callback_secret = ssm.get_parameter(Name=CALLBACK_SECRET_PARAMETER, WithDecryption=True)["Parameter"][
        "Value"
    ]
    secrets = {
        "provider_api_key": stack.info["provider_api_key"],
        "provider_webhook_secret": stack.info["provider_webhook_secret"],
        "replicate_api_token": stack.info["replicate_api_token"],
        "replicate_webhook_secret": stack.info["replicate_webhook_secret"],
        "webhook_secret": stack.info["webhook_secret"],
        "callback_secret": callback_secret,
        "api_token": stack.info["api_token"],
    }
    for name, value in secrets.items():
        assert value not in logs, f"{name} was logged"
        assert value.removeprefix("whsec_") not in logs, f"{name}'s key was logged"
    tokens = callback_tokens(stack, callback_secret)
    assert len(tokens) >= 1005, "the batches above made fewer rows than expected"
    leaked = [t for t in tokens if t.rsplit(".", 1)[1] in logs]
    assert leaked == [], f"{len(leaked)} callback tokens were logged"
    assert re.search(r"token(=|%3D)\d+(\.|%2E)[A-Za-z0-9_-]{20}", logs) is None, "a callback URL was logged"
    assert Path(stack.state_dir / "stack.json").exists()


def test_an_unknown_route_answers_in_the_api_error_shape(stack: LocalStack) -> None:
    with stack.api as api:
        response = api.get("/no/such/route")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
