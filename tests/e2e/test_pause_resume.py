"""402 insufficient_credits pauses a batch; a resume after a top-up goes on without any run twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

from .conftest import LocalStack, running_stack

pytestmark = pytest.mark.e2e

ROWS = 50
CREDITS = 20


@pytest.fixture(scope="module")
def broke(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    state: Path = tmp_path_factory.mktemp("rowcall-broke")
    with running_stack(state, "--provider-delay-ms", "20:200", "--provider-credits", str(CREDITS)) as started:
        yield started


def test_a_batch_pauses_when_credits_run_out_and_resumes_after_a_top_up(broke: LocalStack) -> None:
    hook = Receiver()
    try:
        body = "sku,prompt\n" + "".join(f"K{n},prompt {n}\n" for n in range(ROWS))
        key = "uploads/e2e-credits.csv"
        broke.s3.put_object(
            Bucket=broke.info["bucket"],
            Key=key,
            Body=body.encode(),
            Metadata={"reuse": "off", "key-column": "sku", "on-done-url": hook.url + "/done"},
        )
        batch_id = broke.batch_for(key)["batch_id"]
        paused = broke.wait_batch(batch_id, lambda b: b["status"] == "paused", 60)
        assert paused["reason"] == "insufficient_credits"
        # Runs started before the 402 finish and are counted; nothing more starts.
        paused = broke.wait_batch(batch_id, lambda b: b["completed_count"] == CREDITS, 60)
        assert paused["status"] == "paused" and paused["pending_count"] == ROWS - CREDITS
        stats = broke.provider_stats()
        assert stats["unique_idempotency_keys"] == CREDITS

        with broke.api as api:
            early = api.post(f"/batches/{batch_id}/resume")
            assert early.status_code == 202  # resumes, finds the account still empty, pauses again
            broke.wait_batch(batch_id, lambda b: b["status"] == "paused", 60)
            httpx.post(broke.info["provider_url"] + "/_credits", json={"add": 1000}, timeout=10)
            resumed = api.post(f"/batches/{batch_id}/resume")
            assert resumed.status_code == 202 and resumed.json()["status"] == "running"
            again = api.post(f"/batches/{batch_id}/resume")
            assert again.status_code == 409 and again.json()["error"]["code"] == "batch_not_paused"
            assert api.post("/batches/b_nonexistent/resume").status_code == 404

        done = broke.wait_terminal(batch_id, timeout_s=120)
        assert (done["status"], done["completed_count"], done["failed_count"]) == ("completed", ROWS, 0)
        broke.wait_notified(batch_id)
        stats = broke.provider_stats()
        assert stats["unique_idempotency_keys"] == ROWS, "a row got a second run"
        assert stats["duplicate_creates"] == 0
        assert stats["polls"] == 0
        assert len(hook.wait_for(lambda got: len(got) >= 1)) == 1
    finally:
        hook.close()
