"""Reprocess and cancel through the local stack, with every webhook delivered twice."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

from .conftest import LocalStack, running_stack

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def actions_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    state: Path = tmp_path_factory.mktemp("rowcall-actions")
    flags = (
        "--provider-delay-ms", "50:300",
        "--provider-fail-rate", "0.3",
        "--provider-duplicate-callback-rate", "1",
        "--chunk-rows", "10",
        "--max-in-flight", "40",
    )  # fmt: skip
    with running_stack(state, *flags) as started:
        yield started


@pytest.fixture
def hook() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def upload(stack: LocalStack, name: str, rows: int, hook: Receiver) -> str:
    body = "sku,prompt\n" + "".join(f"{name}{n},prompt {n}\n" for n in range(rows))
    key = f"uploads/{name}.csv"
    stack.s3.put_object(
        Bucket=stack.info["bucket"],
        Key=key,
        Body=body.encode(),
        Metadata={"reuse": "off", "key-column": "sku", "on-done-url": hook.url + "/done"},
    )
    return str(stack.batch_for(key)["batch_id"])


def on_dones(hook: Receiver, batch_id: str, count: int) -> list[tuple[str, dict[str, Any]]]:
    got = hook.wait_for(
        lambda got: sum(json.loads(g.body)["data"]["batch_id"] == batch_id for g in got) >= count
    )
    return [
        (g.headers["webhook-id"], json.loads(g.body))
        for g in got
        if json.loads(g.body)["data"]["batch_id"] == batch_id
    ]


def results_statuses(stack: LocalStack, batch: dict[str, Any]) -> list[str]:
    body = stack.s3.get_object(Bucket=stack.info["bucket"], Key=batch["results"]["csv_key"])["Body"].read()
    return [row["status"] for row in csv.DictReader(io.StringIO(body.decode()))]


def test_reprocess_reruns_failed_rows_and_notifies_once_more(
    actions_stack: LocalStack, hook: Receiver
) -> None:
    stack, rows = actions_stack, 30
    batch_id = upload(stack, "rerun", rows, hook)
    first = stack.wait_terminal(batch_id, 60)
    assert first["status"] == "partial" and first["completed_count"] + first["failed_count"] == rows
    failed = first["failed_count"]
    stack.wait_notified(batch_id)
    before = stack.provider_stats()

    with stack.api as api:
        assert (
            api.post(f"/batches/{batch_id}/reprocess", json={"row_ids": ["0-1", "99-1"]}).json()["error"][
                "code"
            ]
            == "unknown_rows"
        )
        # Two calls at once: one reopens the batch, the other finds it running.
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: api.post(f"/batches/{batch_id}/reprocess", json={}), range(2)))
        assert sorted(a.status_code for a in answers) == [202, 409]
        refused = next(a for a in answers if a.status_code == 409).json()["error"]["code"]
        assert refused == "batch_not_finished"
        reopened = api.get(f"/batches/{batch_id}").json()
        assert reopened["status"] in ("running", "completed", "partial")
        if reopened["status"] == "running":
            assert reopened["completed_count"] >= first["completed_count"]

    again = stack.wait_batch(
        batch_id,
        lambda b: b["status"] in ("completed", "partial") and b["notification"]["status"] == "delivered",
        60,
    )
    assert again["completed_count"] + again["failed_count"] == rows and again["pending_count"] == 0
    assert again["completed_count"] >= first["completed_count"]
    notified = on_dones(hook, batch_id, 2)
    assert len(notified) == 2 and len({webhook_id for webhook_id, _ in notified}) == 2
    assert [body["type"] for _, body in notified] == ["batch.completed", "batch.completed"]
    assert notified[1][1]["data"]["completed_count"] == again["completed_count"]
    assert results_statuses(stack, again).count("completed") == again["completed_count"]
    stats = stack.provider_stats()
    assert stats["unique_idempotency_keys"] - before["unique_idempotency_keys"] == failed
    assert stats["duplicate_creates"] == 0 and stats["polls"] == 0


def test_cancel_stops_new_runs_and_notifies_canceled_once(actions_stack: LocalStack, hook: Receiver) -> None:
    stack, rows = actions_stack, 60
    base = stack.provider_stats()["creates"]
    batch_id = upload(stack, "stop", rows, hook)
    stack.wait_batch(batch_id, lambda b: b["completed_count"] + b["failed_count"] >= 5, 60)
    with stack.api as api:
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(lambda _: api.post(f"/batches/{batch_id}/cancel"), range(2)))
        assert sorted(a.status_code for a in answers) == [202, 409]
        accepted = next(a for a in answers if a.status_code == 202).json()
        assert accepted["status"] == "canceled"
        assert next(a for a in answers if a.status_code == 409).json()["error"]["code"] == "batch_not_running"
        creates_at_cancel = stack.provider_stats()["creates"] - base

        done = stack.wait_notified(batch_id, 60)
        assert done["status"] == "canceled"
        finished = done["completed_count"] + done["failed_count"]
        assert 5 <= finished < rows and done["pending_count"] == rows - finished
        stats = stack.provider_stats()
        # Every run created was recorded; after the cancel at most the group being sent (within
        # the cap of forty) reached the provider.
        assert stats["creates"] - base == finished <= creates_at_cancel + 40
        assert stats["duplicate_creates"] == 0
        assert api.post(f"/batches/{batch_id}/resume").json()["error"]["code"] == "batch_not_paused"
        assert api.post(f"/batches/{batch_id}/reprocess").json()["error"]["code"] == "batch_not_reprocessable"
        assert api.post("/batches/b_missing/cancel").status_code == 404
        bad = api.post(f"/batches/{batch_id}/reprocess", content=b'{"row_ids": "0-1"}')
        assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid_body")

    notified = on_dones(hook, batch_id, 1)
    assert [body["type"] for _, body in notified] == ["batch.canceled"]
    assert notified[0][1]["data"]["completed_count"] == done["completed_count"]
    statuses = results_statuses(stack, done)
    assert len(statuses) == rows and statuses.count("pending") == rows - finished
    assert httpx.get(stack.info["provider_url"] + "/_stats", timeout=10).json()["creates"] - base == finished
