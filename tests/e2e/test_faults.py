"""Every event twice, late or out of order: the outcomes stay exactly once (real local stack)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

import pytest

from rowcall.ledger import Ledger
from rowcall.models import ChunkMessage
from rowcall_local.webhook_receiver import WebhookReceiver

from .conftest import LocalStack, running_stack

pytestmark = pytest.mark.e2e

ROWS = 300


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    flags = {
        "--provider-delay-ms": "0:300",  # wide: callbacks overtake each other and the worker's writes
        "--provider-fail-rate": "0.2",
        "--provider-429-rate": "0.2",
        "--provider-5xx-rate": "0.1",
        "--provider-duplicate-callback-rate": "0.5",
    }
    with running_stack(
        tmp_path_factory.mktemp("rowcall-faulty"), *[x for kv in flags.items() for x in kv]
    ) as stack:
        yield stack


def aws_client(stack: LocalStack, service: str):  # type: ignore[no-untyped-def]
    import boto3

    return boto3.client(
        service,
        endpoint_url=stack.info["aws_endpoint_url"],
        region_name=stack.info["region"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def queue_url(sqs, suffix: str) -> str:  # type: ignore[no-untyped-def]
    (url,) = [
        u for u in sqs.list_queues()["QueueUrls"] if u.endswith(suffix) or suffix in u.rsplit("/", 1)[1]
    ]
    return str(url)


def deliver_s3_event_again(sqs, bucket: str, key: str, size: int) -> None:  # type: ignore[no-untyped-def]
    """S3 is at-least-once: the same ObjectCreated once more, through the real event source."""
    event = {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": "ObjectCreated:Put",
                "s3": {
                    "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
                    "object": {"key": key, "size": size},
                },
            }
        ]
    }
    sqs.send_message(QueueUrl=queue_url(sqs, "-s3"), MessageBody=json.dumps(event))


def test_duplicates_retries_and_failures_still_give_exact_counts_and_one_on_done(faulty: LocalStack) -> None:
    hook = WebhookReceiver()
    try:
        out = io.StringIO(newline="")
        writer = csv.writer(out)
        writer.writerow(["id", "prompt"])
        writer.writerows([f"K{n}", f"prompt {n}"] for n in range(ROWS))
        key = "uploads/faults.csv"
        bucket = faulty.info["bucket"]
        faulty.s3.put_object(
            Bucket=bucket,
            Key=key,
            Body=out.getvalue().encode(),
            Metadata={"reuse": "off", "key-column": "id", "on-done-url": hook.url + "/done"},
        )
        sqs = aws_client(faulty, "sqs")
        # S3 is at-least-once: deliver the same ObjectCreated again through the real event source.
        deliver_s3_event_again(sqs, bucket, key, len(out.getvalue()))
        batch = faulty.batch_for(key)
        # SQS is at-least-once too: send every chunk of the batch a second time.
        ledger = Ledger(aws_client(faulty, "dynamodb"), faulty.info["table"])
        faulty.wait_batch(batch["batch_id"], lambda b: b["status"] not in ("validating", "ingesting"), 60)
        chunk_queue = queue_url(sqs, "ChunkQueue")
        for chunk in ledger.batches.chunk_plan(batch["batch_id"]):
            message = ChunkMessage(batch_id=batch["batch_id"], chunk=chunk)
            sqs.send_message(QueueUrl=chunk_queue, MessageBody=message.model_dump_json())

        done = faulty.wait_terminal(batch["batch_id"], timeout_s=240)
        assert done["status"] == "partial"
        assert done["total_count"] == ROWS
        assert done["completed_count"] + done["failed_count"] == ROWS
        assert 0 < done["failed_count"] < ROWS
        done = faulty.wait_notified(batch["batch_id"])
        assert len(hook.wait_for(lambda got: len(got) >= 1)) == 1

        body = faulty.s3.get_object(Bucket=bucket, Key=done["results"]["csv_key"])["Body"].read().decode()
        rows = list(csv.DictReader(io.StringIO(body, newline="")))
        assert [r["id"] for r in rows] == [f"K{n}" for n in range(ROWS)]
        assert sum(r["status"] == "failed" for r in rows) == done["failed_count"]
        assert all(r["run_id"] for r in rows)
        assert all(r["error_code"] == "generation_failed" for r in rows if r["status"] == "failed")

        batches = [
            b
            for b in faulty.api.get("/batches", params={"limit": 100}).json()["items"]
            if b["source"]["key"] == key
        ]
        assert len(batches) == 1, "the duplicate S3 event made a second batch"
        stats = faulty.provider_stats()
        assert stats["unique_idempotency_keys"] == ROWS, "a row got two runs"
        assert stats["duplicate_creates"] == 0, "a row's run was asked for twice"
        # Each completed run's outputs were fetched once, duplicate deliveries included; no polls.
        assert stats["gets"] == done["completed_count"]
        assert stats["polls"] == 0
        # The faults did happen: creates were refused and retried, callbacks came twice.
        assert stats["creates"] > ROWS
        assert stats["callbacks_sent"] > ROWS
    finally:
        hook.close()
