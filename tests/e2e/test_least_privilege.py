"""Every function on its own role, and a batch with provider faults still runs clean (real local stack).

`rowcall up --enforce-iam on` runs each function with credentials assumed from the role the
deployed template gives it, and the embedded AWS authorizes them against that role
(`local/rowcall_local/iam_enforcement.py`). What it proves, and what it cannot:

- S3 and SQS grants are checked on their resources (bucket/key, queue ARN), as moto does.
- DynamoDB, SNS and SSM grants are checked on the table (or index), topic and parameter ARN too;
  moto alone checks those only at action level (facts.md, "moto CloudFormation and IAM"), so
  iam_enforcement.py supplies the resource IAM would use, and a transaction's items' own actions.
- Not exercised locally: the SQS event source mappings' polling (the local runtime polls with
  its own key), Lambda's failure destination, logs and X-Ray; `tests/unit/test_iam_policies.py`
  holds those grants to their shape instead.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterator

import httpx
import pytest

from rowcall_local.webhook_receiver import WebhookReceiver

from .conftest import LocalStack, running_stack

pytestmark = pytest.mark.e2e

ROWS = 200
FUNCTIONS = {
    "IngestFunction",
    "WorkerFunction",
    "WebhookFunction",
    "RecorderFunction",
    "NotifierFunction",
    "SaverFunction",
}
# The runtime's log line for an invocation that ended in an error (function_pool.FunctionRuntime).
FUNCTION_ERROR = re.compile(r"\w+Function [0-9a-f-]{36} failed: ")


@pytest.fixture(scope="module")
def enforced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    flags = {
        "--enforce-iam": "on",
        "--provider-delay-ms": "0:200",
        "--provider-fail-rate": "0.2",
        "--provider-duplicate-callback-rate": "0.3",
    }
    with running_stack(
        tmp_path_factory.mktemp("rowcall-iam"), *[x for kv in flags.items() for x in kv]
    ) as stack:
        yield stack


def test_a_faulty_batch_runs_with_each_function_on_its_own_role(enforced: LocalStack) -> None:
    hook = WebhookReceiver()
    try:
        out = io.StringIO(newline="")
        writer = csv.writer(out)
        writer.writerow(["id", "prompt"])
        writer.writerows([f"K{n}", f"prompt {n}"] for n in range(ROWS))
        key = "uploads/least-privilege.csv"
        enforced.s3.put_object(
            Bucket=enforced.info["bucket"],
            Key=key,
            Body=out.getvalue().encode(),
            Metadata={"reuse": "off", "key-column": "id", "on-done-url": hook.url + "/done"},
        )
        batch = enforced.batch_for(key)
        done = enforced.wait_terminal(batch["batch_id"], timeout_s=240)
        assert done["status"] == "partial"
        assert done["completed_count"] + done["failed_count"] == ROWS
        assert 0 < done["failed_count"] < ROWS
        done = enforced.wait_notified(batch["batch_id"])
        assert done["notification"]["status"] == "delivered"
        assert len(hook.wait_for(lambda got: len(got) >= 1)) == 1
        # The management API (webhook function) reads through its role too.
        with enforced.api as api:
            assert api.get(f"/batches/{batch['batch_id']}").json()["batch_id"] == batch["batch_id"]
            assert api.get("/batches", params={"limit": 5}).status_code == 200
            # The rows route reads the uploaded file's chunks (a pending row's key is only there).
            rows = api.get(f"/batches/{batch['batch_id']}/rows", params={"limit": 100})
            assert rows.status_code == 200 and len(rows.json()["items"]) == 100
        results = enforced.s3.get_object(Bucket=enforced.info["bucket"], Key=done["results"]["csv_key"])
        assert len(list(csv.DictReader(io.StringIO(results["Body"].read().decode())))) == ROWS
        assert enforced.provider_stats()["callbacks_sent"] > ROWS  # duplicates were delivered

        decisions = httpx.get(enforced.info["aws_endpoint_url"] + "/_rowcall/iam", timeout=10).json()
        assert decisions["enforced"]
        assert decisions["denied"] == []
        # Every function's requests went through its role, not around it.
        assert {s.removeprefix("fn-") for s in decisions["allowed"]} == FUNCTIONS
        assert "sns:Publish" in decisions["allowed"]["fn-NotifierFunction"]
        assert "OnDoneTopic" in enforced.info["topic_arn"]  # stack.json names it, not the alarm topic
        assert "ssm:GetParameter" in decisions["allowed"]["fn-WorkerFunction"]

        logs = enforced.state_dir / "logs"
        for function in FUNCTIONS:
            text = (logs / f"{function}.log").read_text(errors="replace")
            assert "AccessDenied" not in text, f"{function}: {text[text.find('AccessDenied') - 500 :][:1500]}"
            assert "Traceback" not in text, f"{function} raised: {text[text.find('Traceback') :][:1500]}"
        up = (enforced.state_dir / "up.log").read_text(errors="replace")
        assert not FUNCTION_ERROR.search(up), up[-3000:]
    finally:
        hook.close()


def test_an_upload_deleted_before_its_ingest_is_gone_not_a_failure(enforced: LocalStack) -> None:
    """S3 answers a read of a deleted version 403 to the ingest role (it has no s3:ListBucket), not
    404; a late or repeated S3 event for it is dropped as gone, not retried into the failure queue."""
    import json
    import time
    from urllib.parse import quote_plus

    bucket = enforced.info["bucket"]
    key = "uploads/deleted soon.csv"
    put = enforced.s3.put_object(Bucket=bucket, Key=key, Body=b"id,prompt\nD1,a cat\n")
    enforced.wait_terminal(enforced.batch_for(key)["batch_id"], timeout_s=120)
    enforced.s3.delete_object(Bucket=bucket, Key=key, VersionId=put["VersionId"])
    record = {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "awsRegion": enforced.info["region"],
        "eventTime": "2030-01-01T00:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "IngestFunction-Upload",
            "bucket": {"name": bucket, "arn": f"arn:aws:s3:::{bucket}"},
            "object": {"key": quote_plus(key), "size": 19, "versionId": put["VersionId"], "sequencer": "0A1"},
        },
    }
    sqs = enforced.sqs
    (events,) = [u for u in sqs.list_queues()["QueueUrls"] if u.endswith("-IngestFunction-Upload-s3")]
    sqs.send_message(QueueUrl=events, MessageBody=json.dumps({"Records": [record]}))
    log = enforced.state_dir / "logs" / "IngestFunction.log"
    deadline = time.monotonic() + 60
    while "uploaded object is gone" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.2)
    text = log.read_text(errors="replace")
    gone = next(line for line in text.splitlines() if "uploaded object is gone" in line)
    assert json.loads(gone)["code"] == "403" and "Traceback" not in text, text[-3000:]
    (failures,) = [u for u in sqs.list_queues()["QueueUrls"] if "IngestFailureQueue" in u]
    assert sqs.receive_message(QueueUrl=failures, WaitTimeSeconds=0).get("Messages") is None
