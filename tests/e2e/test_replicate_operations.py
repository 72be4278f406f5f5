"""The batch operations on Replicate through the real local stack (issue 17 item 5): reprocess of
the failed rows, cancel mid-batch, reuse of an earlier batch's predictions and saved outputs, the
credit error's pause and resume, and `rowcall submit --provider replicate`. Proved from outside:
the HTTP API, stack.json and the Replicate emulator's own API and `_stats`.

One stack for the file. The account's credits start small and every test grants exactly the
predictions it needs, so the credit test finds the account nearly empty whatever ran before it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

from .conftest import LocalStack, running_stack

pytestmark = pytest.mark.e2e

ROWCALL = Path(sys.executable).with_name("rowcall")
IN_FLIGHT = 2  # slow enough to cancel a batch, or a prediction, while it runs


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(
        tmp_path_factory.mktemp("rowcall-replicate-ops"),
        "--provider-delay-ms",
        "300:600",
        "--provider-credits",
        "4",
        "--max-in-flight",
        str(IN_FLIGHT),
    ) as started:
        yield started


@pytest.fixture
def hook() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.close()


def replicate(stack: LocalStack) -> httpx.Client:
    """Replicate's own API, as the account holder (not rowcall) uses it."""
    return httpx.Client(
        base_url=stack.info["replicate_url"],
        timeout=10,
        headers={"Authorization": f"Bearer {stack.info['replicate_api_token']}"},
    )


def stats(stack: LocalStack) -> dict[str, int]:
    got: dict[str, int] = httpx.get(stack.info["replicate_url"] + "/_stats", timeout=10).json()
    return got


def grant(stack: LocalStack, predictions: int) -> int:
    """Adds credits for this many predictions; the credits the account then has."""
    answer = httpx.post(stack.info["replicate_url"] + "/_credits", json={"add": predictions}, timeout=10)
    assert answer.status_code == 200, answer.text
    credits: int = answer.json()["credits"]
    return credits


def csv_body(tag: str, rows: int) -> bytes:
    return ("sku,prompt\n" + "".join(f"{tag}{n},{tag} picture {n}\n" for n in range(rows))).encode()


def upload(stack: LocalStack, key: str, body: bytes, **meta: str) -> str:
    stack.s3.put_object(
        Bucket=stack.info["bucket"],
        Key=key,
        Body=body,
        Metadata={"provider": "replicate", "technique-id": "acme/painter", "key-column": "sku"} | meta,
    )
    return str(stack.batch_for(key)["batch_id"])


def all_rows(stack: LocalStack, batch_id: str) -> list[dict[str, Any]]:
    with stack.api as api:
        page = api.get(f"/batches/{batch_id}/rows", params={"limit": 100}).json()
    assert page.get("next_cursor") in (None, "")
    items: list[dict[str, Any]] = page["items"]
    return items


def on_dones(hook: Receiver, batch_id: str, count: int) -> list[tuple[str, dict[str, Any]]]:
    got = hook.wait_for(
        lambda got: sum(json.loads(g.body)["data"]["batch_id"] == batch_id for g in got) >= count
    )
    return [
        (g.headers["webhook-id"], json.loads(g.body))
        for g in got
        if json.loads(g.body)["data"]["batch_id"] == batch_id
    ]


def cancel_running_predictions(stack: LocalStack, batch_id: str, tag: str, count: int) -> set[str]:
    """Cancels `count` of the batch's predictions on Replicate while they run (the account holder
    doing it in Replicate's dashboard): those rows fail `prediction_canceled`, the others succeed."""
    canceled: set[str] = set()
    deadline = time.monotonic() + 60
    with replicate(stack) as api, stack.api as rowcall:
        while len(canceled) < count:
            assert time.monotonic() < deadline, f"canceled only {canceled}"
            assert rowcall.get(f"/batches/{batch_id}").json()["status"] == "running"
            for prediction in api.get("/v1/predictions").json()["results"]:
                prompt = str((prediction.get("input") or {}).get("prompt", ""))
                running = prediction["status"] in ("starting", "processing")
                if running and prompt.startswith(tag) and len(canceled) < count:
                    answer = api.post(f"/v1/predictions/{prediction['id']}/cancel")
                    if answer.json()["status"] == "canceled":
                        canceled.add(prediction["id"])
            time.sleep(0.05)
    return canceled


def test_the_credit_error_pauses_the_batch_and_a_resume_after_a_top_up_finishes_it(
    stack: LocalStack, hook: Receiver
) -> None:
    left = grant(stack, 0)
    rows = left + 3
    before = stats(stack)
    batch_id = upload(
        stack, "uploads/e2e-repl-credits.csv", csv_body("credit", rows), **{"on-done-url": hook.url}
    )
    paused = stack.wait_batch(
        batch_id, lambda b: b["status"] != "running" and b["completed_count"] >= left, 120
    )
    assert (paused["status"], paused["reason"]) == ("paused", "insufficient_credits"), paused
    assert paused["provider"] == "replicate"
    assert paused["completed_count"] == left and paused["pending_count"] == rows - left
    assert stats(stack)["creates"] - before["creates"] >= left + 1  # the refused create was asked
    assert hook.got == []  # a pause is not an end

    assert grant(stack, 3) == 3
    with stack.api as api:
        resumed = api.post(f"/batches/{batch_id}/resume")
        assert resumed.status_code == 202 and resumed.json()["status"] == "running", resumed.text
    done = stack.wait_notified(stack.wait_terminal(batch_id, 120)["batch_id"])
    assert (done["status"], done["completed_count"], done["failed_count"]) == ("completed", rows, 0)
    after = stats(stack)
    assert after["duplicate_creates"] == before["duplicate_creates"]
    assert len({row["run_id"] for row in all_rows(stack, batch_id)}) == rows
    assert [body["type"] for _, body in on_dones(hook, batch_id, 1)] == ["batch.completed"]
    assert grant(stack, 0) == 0  # exactly one prediction per row was paid for


def test_reprocess_makes_new_predictions_for_the_failed_rows_only_and_notifies_again(
    stack: LocalStack, hook: Receiver
) -> None:
    rows, failing = 6, 2
    grant(stack, rows + failing)
    batch_id = upload(
        stack, "uploads/e2e-repl-rerun.csv", csv_body("rerun", rows), reuse="off", **{"on-done-url": hook.url}
    )
    canceled = cancel_running_predictions(stack, batch_id, "rerun", failing)
    first = stack.wait_notified(stack.wait_terminal(batch_id, 120)["batch_id"])
    assert (first["status"], first["completed_count"], first["failed_count"]) == (
        "partial",
        rows - failing,
        failing,
    )
    failed = {r["row_id"]: r for r in all_rows(stack, batch_id) if r["status"] == "failed"}
    assert {r["run_id"] for r in failed.values()} == canceled
    assert {r["error_code"] for r in failed.values()} == {"prediction_canceled"}
    before = stats(stack)

    with stack.api as api:
        answer = api.post(f"/batches/{batch_id}/reprocess", json={})
        assert answer.status_code == 202, answer.text
    again = stack.wait_batch(
        batch_id,
        lambda b: b["status"] == "completed" and b["notification"]["status"] == "delivered",
        120,
    )
    assert (again["completed_count"], again["failed_count"], again["provider"]) == (rows, 0, "replicate")
    after = stats(stack)
    assert after["creates"] - before["creates"] == failing  # one new prediction per failed row only
    assert after["duplicate_creates"] == before["duplicate_creates"]
    assert (after["polls"], after["gets"]) == (before["polls"], before["gets"])
    rerun = {r["row_id"]: r for r in all_rows(stack, batch_id)}
    assert all(rerun[row_id]["run_id"] not in canceled for row_id in failed)
    notified = on_dones(hook, batch_id, 2)
    assert len(notified) == 2 and len({webhook_id for webhook_id, _ in notified}) == 2
    assert [body["type"] for _, body in notified] == ["batch.completed", "batch.completed"]
    assert notified[0][1]["data"]["status"] == "partial" and notified[1][1]["data"]["failed_count"] == 0


def test_cancel_mid_batch_starts_nothing_new_and_notifies_canceled_once(
    stack: LocalStack, hook: Receiver
) -> None:
    rows = 8
    grant(stack, rows)
    base = stats(stack)["creates"]
    batch_id = upload(
        stack, "uploads/e2e-repl-cancel.csv", csv_body("stop", rows), reuse="off", **{"on-done-url": hook.url}
    )
    stack.wait_batch(batch_id, lambda b: b["completed_count"] >= 2, 60)
    with stack.api as api:
        accepted = api.post(f"/batches/{batch_id}/cancel")
        assert accepted.status_code == 202 and accepted.json()["status"] == "canceled", accepted.text
        creates_at_cancel = stats(stack)["creates"] - base
        refused = api.post(f"/batches/{batch_id}/cancel")
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "batch_not_running"

    done = stack.wait_notified(batch_id, 60)
    assert done["status"] == "canceled"
    finished = done["completed_count"] + done["failed_count"]
    assert 2 <= finished < rows and done["pending_count"] == rows - finished
    # Every prediction made was recorded; after the cancel at most the group being sent went out.
    created = stats(stack)["creates"] - base
    assert created == finished <= creates_at_cancel + IN_FLIGHT
    assert [body["type"] for _, body in on_dones(hook, batch_id, 1)] == ["batch.canceled"]
    time.sleep(1.5)  # longer than a prediction runs: a late start would show now
    assert stats(stack)["creates"] - base == created and len(hook.got) == 1


def test_an_upload_repeated_reuses_every_prediction_and_copies_the_saved_outputs(stack: LocalStack) -> None:
    rows = 6
    grant(stack, rows)
    body = csv_body("again", rows)
    meta = {"save-outputs": "on"}  # reuse is on by default
    first_id = upload(stack, "uploads/e2e-repl-reuse-1.csv", body, **meta)
    first = stack.wait_terminal(first_id, 120)
    assert (first["status"], first["outputs_saved_count"]) == ("completed", rows)
    first_rows = {r["key"]: r for r in all_rows(stack, first_id)}
    before = stats(stack)

    second_id = upload(stack, "uploads/e2e-repl-reuse-2.csv", body, **meta)
    second = stack.wait_terminal(second_id, 120)
    assert (second["status"], second["reused_count"], second["provider"]) == ("completed", rows, "replicate")
    after = stats(stack)
    assert (after["creates"], after["media_gets"]) == (before["creates"], before["media_gets"])
    bucket = stack.info["bucket"]
    for sku, row in {r["key"]: r for r in all_rows(stack, second_id)}.items():
        source = first_rows[sku]
        assert row["reused_from"] == {
            "batch_id": first_id,
            "row_id": source["row_id"],
            "run_id": source["run_id"],
        }
        (saved,) = row["saved_outputs"]
        (was,) = source["saved_outputs"]
        assert saved["key"].startswith(f"outputs/{second_id}/{sku}/") and saved["key"] != was["key"]
        copied = stack.s3.get_object(Bucket=bucket, Key=saved["key"])["Body"].read()
        assert copied == stack.s3.get_object(Bucket=bucket, Key=was["key"])["Body"].read() != b""


def test_rowcall_submit_with_provider_replicate_waits_and_exits_0(stack: LocalStack, tmp_path: Path) -> None:
    rows = 3
    grant(stack, rows)
    csv = tmp_path / "cli-replicate.csv"
    csv.write_bytes(csv_body("cli", rows))
    before = stats(stack)["creates"]
    env = {"ROWCALL_STATE_DIR": str(stack.state_dir), "PATH": "/usr/bin:/bin", "NO_COLOR": "1"}
    command = [str(ROWCALL), "submit", str(csv), "--provider", "replicate", "--technique", "acme/painter"]
    ran = subprocess.run(
        [*command, "--key-column", "sku", "--wait"], capture_output=True, timeout=120, env=env, check=False
    )
    assert ran.returncode == 0, ran.stderr.decode()
    batch_id = ran.stdout.decode().strip().splitlines()[0]
    with stack.api as api:
        batch = api.get(f"/batches/{batch_id}").json()
    assert (batch["provider"], batch["technique_id"], batch["status"]) == (
        "replicate",
        "acme/painter",
        "completed",
    )
    assert stats(stack)["creates"] - before == rows
