"""A batch on Replicate through the real local stack (contract §5b): predictions created once each
through the model route, their webhooks (the predictions themselves, signed per Standard Webhooks)
recorded with no GET and no poll, outputs saved into the bucket before they vanish from
Replicate's URLs, one on-done; forged, stale and wrong-secret deliveries 401; a budget refused."""

from __future__ import annotations

import base64
import csv
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from rowcall.identity import CallbackSigner, secret_list
from rowcall.signing import WebhookSigner
from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

from .conftest import LocalStack, running_stack

pytestmark = pytest.mark.e2e

ROWS = 6
CALLBACK_SECRET_PARAMETER = "/rowcall/callback-secret"  # template.yaml's default


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # Outputs vanish 60 s after their prediction, as Replicate's do after an hour.
    with running_stack(
        tmp_path_factory.mktemp("rowcall-replicate"),
        "--provider-delay-ms",
        "5:60",
        "--provider-output-ttl-s",
        "60",
    ) as started:
        yield started


def replicate_stats(stack: LocalStack) -> dict[str, int]:
    stats: dict[str, int] = httpx.get(stack.info["replicate_url"] + "/_stats", timeout=10).json()
    return stats


def upload(stack: LocalStack, key: str, rows: int, **meta: str) -> dict[str, Any]:
    body = "sku,prompt\n" + "".join(f"R{n},a picture of {n}\n" for n in range(rows))
    stack.s3.put_object(
        Bucket=stack.info["bucket"],
        Key=key,
        Body=body.encode(),
        Metadata={"provider": "replicate", "reuse": "off", "key-column": "sku"} | meta,
    )
    return stack.batch_for(key)


def results(stack: LocalStack, batch: dict[str, Any]) -> list[dict[str, str]]:
    body = stack.s3.get_object(Bucket=stack.info["bucket"], Key=batch["results"]["csv_key"])["Body"].read()
    return list(csv.DictReader(io.StringIO(body.decode(), newline="")))


def test_a_replicate_batch_runs_each_row_once_saves_its_outputs_and_notifies_once(stack: LocalStack) -> None:
    hook = Receiver()
    try:
        before = replicate_stats(stack)
        batch = upload(
            stack,
            "uploads/e2e-replicate.csv",
            ROWS,
            **{"technique-id": "acme/painter-images", "on-done-url": hook.url},
        )
        done = stack.wait_notified(stack.wait_terminal(batch["batch_id"])["batch_id"])
        assert (done["status"], done["completed_count"], done["failed_count"]) == ("completed", ROWS, 0)
        assert done["provider"] == "replicate"
        assert (done["run_cost_usd"], done["estimated_cost_usd"], done["charged_cost_usd"]) == (
            None,
            None,
            None,
        )
        assert done["outputs_saved_count"] == 2 * ROWS and done["outputs_failed_count"] == 0
        assert done["duplicate_runs"] == 0

        (delivery,) = hook.wait_for(lambda got: len(got) >= 1, timeout_s=60)
        on_done = Webhook(stack.info["webhook_secret"]).verify(delivery.body, delivery.headers)
        assert on_done["data"]["batch_id"] == batch["batch_id"]

        rows = results(stack, done)
        assert len(rows) == ROWS and len({r["run_id"] for r in rows}) == ROWS
        media = f"{stack.info['replicate_url']}/_media/"
        for row in rows:
            outputs = json.loads(row["outputs"])
            assert [o["output_id"] for o in outputs] == ["output_0", "output_1"]
            assert all(o["url"].startswith(media) for o in outputs)
            saved = json.loads(row["saved_outputs"])
            assert len(saved) == 2
            for key in saved:
                assert stack.s3.head_object(Bucket=stack.info["bucket"], Key=key)["ContentLength"] > 0
            assert row["charged_cost_usd"] == ""

        after = replicate_stats(stack)
        delta = {k: after[k] - before[k] for k in after if k != "max_in_flight"}
        # The webhook carries the prediction with its outputs: one create per row, nothing asked.
        assert delta["creates"] == ROWS and delta["duplicate_creates"] == 0
        assert (delta["gets"], delta["polls"], delta["lists"]) == (0, 0, 0)
        assert delta["deliveries_given_up"] == 0
        assert len(hook.got) == 1  # exactly one on-done
    finally:
        hook.close()


def callback_signer(stack: LocalStack) -> CallbackSigner:
    value = stack.client("ssm").get_parameter(Name=CALLBACK_SECRET_PARAMETER, WithDecryption=True)[
        "Parameter"
    ]["Value"]
    return CallbackSigner(secret_list(value))


def test_forged_stale_and_wrong_secret_deliveries_are_401_and_change_nothing(stack: LocalStack) -> None:
    batch = upload(stack, "uploads/e2e-replicate-forged.csv", 2, **{"technique-id": "acme/painter-text"})
    done = stack.wait_notified(stack.wait_terminal(batch["batch_id"])["batch_id"])
    assert done["status"] == "completed"
    first = results(stack, done)[0]
    assert json.loads(first["outputs"])[0]["type"] == "text"
    batch_id, row_id = done["batch_id"], "0-1"
    token = callback_signer(stack).token(batch_id, row_id, 1)
    body = json.dumps(
        {
            "id": first["run_id"],
            "model": "acme/painter-text",
            "version": "0" * 64,
            "status": "failed",
            "input": {},
            "output": None,
            "logs": "",
            "error": "forged",
            "metrics": {},
            "created_at": "2026-01-01T00:00:00Z",
            "started_at": None,
            "completed_at": None,
            "urls": {},
        }
    ).encode()
    secret = stack.info["replicate_webhook_secret"]
    wrong = "whsec_" + base64.b64encode(b"not the account's signing secret").decode()
    now = int(time.time())

    def post(headers: dict[str, str]) -> httpx.Response:
        return httpx.post(
            f"{stack.info['api_url']}/callbacks/{batch_id}/{row_id}",
            params={"token": token},
            content=body,
            headers=headers,
        )

    for headers in (
        WebhookSigner(wrong).headers("msg_forged", now, body),  # another account's secret
        WebhookSigner(secret).headers("msg_stale", now - 301, body),  # stale
        {"webhook-id": "msg_x", "webhook-timestamp": str(now), "webhook-signature": "v1,AAAA"},  # forged
        # FLORA's signature header on a Replicate batch: the batch decides how it is verified.
        {"Flora-Signature": f"t={now},v1=00"},
    ):
        response = post(headers)
        assert response.status_code == 401, response.text
        assert response.json()["error"]["code"] == "invalid_signature"
    # Signed correctly: accepted (Replicate must see 2xx), and the row's outcome stays as it was.
    assert post(WebhookSigner(secret).headers("msg_late", now, body)).status_code == 200
    time.sleep(2)
    with stack.api as api:
        row = api.get(f"/batches/{batch_id}/rows").json()["items"][0]
    assert (row["status"], row["run_id"]) == ("completed", first["run_id"])


def test_a_budget_on_replicate_fails_the_batch_before_any_prediction(stack: LocalStack) -> None:
    before = replicate_stats(stack)["creates"]
    batch = upload(
        stack, "uploads/e2e-replicate-budget.csv", 2, **{"technique-id": "acme/painter", "max-cost-usd": "5"}
    )
    done = stack.wait_terminal(batch["batch_id"])
    assert (done["status"], done["reason"]) == ("failed", "budget_unsupported")
    assert replicate_stats(stack)["creates"] == before
