"""Replicate's faults through the real local stack (contract §5b): creates answered 5xx (the
adapter looks for the prediction before it creates again), webhooks dropped (the safety net's one
`GET /v1/predictions/{id}` finds the run) or sent twice (a no-op): every row ends as its one
prediction did, with no duplicate prediction, no poll, and one on-done."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

from .conftest import LocalStack, running_stack

pytestmark = pytest.mark.e2e

ROWS = 12


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(
        tmp_path_factory.mktemp("rowcall-replicate-faults"),
        "--provider-delay-ms",
        "5:60",
        "--provider-5xx-rate",
        "0.3",
        "--provider-drop-callback-rate",
        "0.3",
        "--provider-duplicate-callback-rate",
        "0.3",
        "--reconcile-after-s",
        "2",
    ) as started:
        yield started


def test_5xx_creates_and_lost_or_repeated_webhooks_make_one_prediction_and_one_outcome_per_row(
    stack: LocalStack,
) -> None:
    hook = Receiver()
    try:
        key = "uploads/e2e-replicate-faults.csv"
        body = "sku,prompt\n" + "".join(f"F{n},a picture of {n}\n" for n in range(ROWS))
        stack.s3.put_object(
            Bucket=stack.info["bucket"],
            Key=key,
            Body=body.encode(),
            Metadata={
                "provider": "replicate",
                "technique-id": "acme/painter",
                "reuse": "off",
                "key-column": "sku",
                "on-done-url": hook.url,
            },
        )
        batch_id = stack.batch_for(key)["batch_id"]
        done = stack.wait_notified(stack.wait_terminal(batch_id, timeout_s=600)["batch_id"], timeout_s=120)
        assert (done["status"], done["completed_count"], done["failed_count"]) == ("completed", ROWS, 0)
        assert done["duplicate_runs"] == 0
        with stack.api as api:
            rows = api.get(f"/batches/{batch_id}/rows", params={"limit": 100}).json()["items"]
        assert len({r["run_id"] for r in rows}) == ROWS
        assert all(r["outputs"][0]["output_id"] == "output_0" for r in rows)
        stats = httpx.get(stack.info["replicate_url"] + "/_stats", timeout=10).json()
        # Every 5xx was answered before a prediction was made: the search found none, the retry
        # made the one; no webhook was waited for by polling.
        assert stats["duplicate_creates"] == 0 and stats["polls"] == 0
        assert stats["creates"] >= ROWS
        assert stats["gets"] <= ROWS  # the safety net asks once per silent run at most
        assert len(hook.got) == 1
    finally:
        hook.close()
