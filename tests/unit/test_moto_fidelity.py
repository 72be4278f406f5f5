"""The moto server process behaves as DynamoDB does where the ledger depends on it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from rowcall_local.moto_process import MotoProcess

from .conftest import template_resource


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = MotoProcess(Path(tmp_path_factory.mktemp("moto")) / "moto.log")
    try:
        yield server.start()
    finally:
        server.stop()


def client(url: str, service: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def dynamodb(moto_url: str) -> Any:
    dynamodb = client(moto_url, "dynamodb")
    props = template_resource("Table")
    dynamodb.create_table(
        TableName="t",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=props["AttributeDefinitions"],
        KeySchema=props["KeySchema"],
        GlobalSecondaryIndexes=props["GlobalSecondaryIndexes"],
    )
    return dynamodb


def claim_and_count(pk: str, row: str) -> dict[str, Any]:
    return {
        "TransactItems": [
            {
                "Update": {
                    "TableName": "t",
                    "Key": {"pk": {"S": pk}, "sk": {"S": row}},
                    "UpdateExpression": "SET done = :t",
                    "ConditionExpression": "attribute_not_exists(done)",
                    "ExpressionAttributeValues": {":t": {"BOOL": True}},
                }
            },
            {
                "Update": {
                    "TableName": "t",
                    "Key": {"pk": {"S": pk}, "sk": {"S": "COUNT"}},
                    "UpdateExpression": "ADD n :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}},
                }
            },
        ]
    }


def count(dynamodb: Any, pk: str) -> int:
    got = dynamodb.get_item(TableName="t", Key={"pk": {"S": pk}, "sk": {"S": "COUNT"}}, ConsistentRead=True)
    return int(got.get("Item", {}).get("n", {"N": "0"})["N"])


def test_a_cancelled_transaction_leaves_every_item_as_it_was(dynamodb: Any) -> None:
    dynamodb.transact_write_items(**claim_and_count("p1", "r1"))
    with pytest.raises(ClientError) as raised:
        dynamodb.transact_write_items(**claim_and_count("p1", "r1"))
    assert raised.value.response["Error"]["Code"] == "TransactionCanceledException"
    assert count(dynamodb, "p1") == 1
    # A cancelled transaction that would have created an item does not leave it behind.
    failing = claim_and_count("p1", "r1")
    failing["TransactItems"][1]["Update"]["Key"]["sk"] = {"S": "NEW"}
    failing["TransactItems"].reverse()
    with pytest.raises(ClientError):
        dynamodb.transact_write_items(**failing)
    assert "Item" not in dynamodb.get_item(TableName="t", Key={"pk": {"S": "p1"}, "sk": {"S": "NEW"}})


def test_racing_transactions_on_the_same_rows_count_each_row_once(dynamodb: Any) -> None:
    rows = [f"r{n}" for n in range(40)]
    errors: list[str] = []

    def race() -> None:
        for row in rows:
            try:
                dynamodb.transact_write_items(**claim_and_count("p2", row))
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "TransactionCanceledException":
                    errors.append(exc.response["Error"]["Code"])

    threads = [threading.Thread(target=race) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert count(dynamodb, "p2") == len(rows)


def test_s3_events_name_the_version_uploaded_and_a_growing_sequencer(moto_url: str) -> None:
    s3, sqs = client(moto_url, "s3"), client(moto_url, "sqs")
    s3.create_bucket(Bucket="events")
    s3.put_bucket_versioning(Bucket="events", VersioningConfiguration={"Status": "Enabled"})
    queue = sqs.create_queue(QueueName="events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(
        Bucket="events",
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    versions = [
        s3.put_object(Bucket="events", Key="uploads/a b.csv", Body=b"x")["VersionId"] for _ in range(2)
    ]
    records = []
    deadline = time.monotonic() + 10
    while len(records) < 2 and time.monotonic() < deadline:
        for message in sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10).get("Messages", []):
            records += json.loads(message["Body"]).get("Records", [])  # the s3:TestEvent has none
    objects = [r["s3"]["object"] for r in records]
    assert [o["versionId"] for o in objects] == versions
    assert objects[0]["sequencer"] < objects[1]["sequencer"]
    assert all("userIdentity" in r and "ownerIdentity" in r["s3"]["bucket"] for r in records)


def test_sqs_counts_each_message_once_and_as_sqs_does(moto_url: str) -> None:
    sqs = client(moto_url, "sqs")
    url = sqs.create_queue(QueueName="counted")["QueueUrl"]
    for n in range(3):
        sqs.send_message(QueueUrl=url, MessageBody=f"m{n}")
    sqs.send_message(QueueUrl=url, MessageBody="later", DelaySeconds=60)
    got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=1, VisibilityTimeout=60)["Messages"]
    assert len(got) == 1
    attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    assert attributes["ApproximateNumberOfMessages"] == "2"
    assert attributes["ApproximateNumberOfMessagesNotVisible"] == "1"
    assert attributes["ApproximateNumberOfMessagesDelayed"] == "1"
    assert attributes["MessageRetentionPeriod"] == "345600"
    # The retention check reads the queue's period: messages well within it are delivered.
    rest = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
    assert sorted(m["Body"] for m in rest) == ["m1", "m2"]
    named = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"])
    assert named["Attributes"] == {"ApproximateNumberOfMessagesNotVisible": "3"}


def test_the_request_meter_counts_requests_by_service_and_operation(moto_url: str) -> None:
    import httpx

    from rowcall_local import request_meter

    httpx.post(moto_url + request_meter.RESET_PATH, timeout=10).raise_for_status()
    sqs = client(moto_url, "sqs")
    url = sqs.create_queue(QueueName="metered")["QueueUrl"]
    sqs.send_message(QueueUrl=url, MessageBody="x")
    client(moto_url, "sts").get_caller_identity()
    report = httpx.get(moto_url + request_meter.CONTROL_PATH, timeout=10).json()
    assert report["by_operation"] == {"sqs:CreateQueue": 1, "sqs:SendMessage": 1, "sts:GetCallerIdentity": 1}
    assert report["requests"] == 3 and report["seconds"] > 0 and report["cpu_seconds"] >= 0


def test_fifo_messages_sent_received_and_deleted_at_once_are_each_delivered_and_deleted(
    moto_url: str,
) -> None:
    """As the finished-run queue is used: senders, and pollers receiving and deleting, all at once.

    moto deleted a message by rebuilding the queue's list outside the queue's lock: a message sent
    meanwhile was lost, and a message deleted by a concurrent delete came back, invisible for the
    visibility timeout (seen at 20,000 rows: 21 runs never recorded, 470 messages "in flight").
    """
    url = client(moto_url, "sqs").create_queue(
        QueueName="raced.fifo",
        Attributes={"FifoQueue": "true", "DeduplicationScope": "messageGroup", "VisibilityTimeout": "720"},
    )["QueueUrl"]
    backlog, raced, senders, receivers = 3000, 2000, 4, 4
    bodies = [f"m{n}" for n in range(backlog + raced)]

    def send(part: list[str]) -> None:
        sqs = client(moto_url, "sqs")
        for start in range(0, len(part), 10):
            sqs.send_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(i), "MessageBody": b, "MessageGroupId": b, "MessageDeduplicationId": b}
                    for i, b in enumerate(part[start : start + 10])
                ],
            )

    send(bodies[:backlog])  # a backlog makes each delete's pass over the queue long, as under load
    received: list[str] = []
    delete_failures: list[Any] = []
    sending_done = threading.Event()

    def receive() -> None:
        sqs = client(moto_url, "sqs")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                "Messages", []
            )
            if not got:
                if sending_done.is_set():
                    return
                continue
            received.extend(m["Body"] for m in got)
            deleted = sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(got)],
            )
            delete_failures.extend(deleted.get("Failed", []))

    parts = [bodies[backlog + k :: senders] for k in range(senders)]
    sending = [threading.Thread(target=send, args=(p,)) for p in parts]
    receiving = [threading.Thread(target=receive) for _ in range(receivers)]
    for thread in sending + receiving:
        thread.start()
    for thread in sending:
        thread.join()
    sending_done.set()
    for thread in receiving:
        thread.join()

    assert not delete_failures
    assert set(bodies) - set(received) == set()  # none lost
    assert len(received) == len(bodies)  # none delivered twice
    counts = client(moto_url, "sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    # None deleted came back, in flight for the visibility timeout.
    assert (counts["ApproximateNumberOfMessages"], counts["ApproximateNumberOfMessagesNotVisible"]) == (
        "0",
        "0",
    )
