"""The embedded AWS refuses, over HTTP and with AWS's error, what AWS refuses; the valid form passes."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from rowcall_local.moto_process import MotoProcess
from rowcall_local.strict_dynamodb import MAX_ITEM_BYTES, item_size
from rowcall_local.strict_sqs import DeduplicationWindow, fifo_physical_name

from .conftest import Aws

MIB = 1024 * 1024


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


def refusal(call: Callable[[], Any]) -> tuple[int, str, str]:
    with pytest.raises(ClientError) as raised:
        call()
    response = raised.value.response
    return (
        response["ResponseMetadata"]["HTTPStatusCode"],
        response["Error"]["Code"],
        response["Error"]["Message"],
    )


# --- DynamoDB ---------------------------------------------------------------------------------------

KEY = {"pk": {"S": "a"}, "sk": {"S": "b"}}
ONE = {":one": {"N": "1"}}


@pytest.fixture(scope="module")
def ddb(moto_url: str) -> Any:
    dynamodb = client(moto_url, "dynamodb")
    dynamodb.create_table(
        TableName="t",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk")],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}, {"AttributeName": "sk", "KeyType": "RANGE"}],
    )
    dynamodb.put_item(TableName="t", Item={**KEY, "n": {"N": "0"}})
    return dynamodb


ONE_VALUE = {"ExpressionAttributeValues": {":one": {"N": "1"}}}


def update(**extra: Any) -> dict[str, Any]:
    return {"TableName": "t", "Key": KEY, "UpdateExpression": "ADD n :one", **extra}


# (operation, refused request, AWS's message); each refused request is a valid one plus one fault.
EXPRESSION_CASES: list[tuple[str, dict[str, Any], str]] = [
    (
        "put_item",
        {"TableName": "t", "Item": KEY, "ExpressionAttributeNames": {}},
        "ExpressionAttributeNames must not be empty",
    ),
    (
        "put_item",
        {
            "TableName": "t",
            "Item": KEY,
            "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeValues": {":x": {"S": "x"}},
        },
        "Value provided in ExpressionAttributeValues unused in expressions: keys: {:x}",
    ),
    (
        "update_item",
        update(ExpressionAttributeValues=ONE, ExpressionAttributeNames={}),
        "ExpressionAttributeNames must not be empty",
    ),
    (
        "update_item",
        update(ExpressionAttributeValues=ONE, ExpressionAttributeNames={"#a": "a", "#b": "b"}),
        "Value provided in ExpressionAttributeNames unused in expressions: keys: {#a, #b}",
    ),
    (
        "update_item",
        {"TableName": "t", "Key": KEY, "UpdateExpression": "REMOVE x", "ExpressionAttributeValues": {}},
        "ExpressionAttributeValues must not be empty",
    ),
    (
        "delete_item",
        {
            "TableName": "t",
            "Key": {"pk": {"S": "z"}, "sk": {"S": "z"}},
            "ConditionExpression": "attribute_not_exists(pk)",
            "ExpressionAttributeValues": {":y": {"S": "y"}},
        },
        "Value provided in ExpressionAttributeValues unused in expressions: keys: {:y}",
    ),
    (
        "get_item",
        {"TableName": "t", "Key": KEY, "ExpressionAttributeNames": {}},
        "ExpressionAttributeNames must not be empty",
    ),
    (
        "query",
        {
            "TableName": "t",
            "KeyConditionExpression": "pk = :p",
            "FilterExpression": "n > :n",
            "ExpressionAttributeValues": {":p": {"S": "a"}, ":n": {"N": "0"}, ":unused": {"N": "0"}},
        },
        "Value provided in ExpressionAttributeValues unused in expressions: keys: {:unused}",
    ),
    (
        "query",
        {
            "TableName": "t",
            "KeyConditionExpression": "pk = :p",
            "ExpressionAttributeValues": {":p": {"S": "a"}},
            "ExpressionAttributeNames": {},
        },
        "ExpressionAttributeNames must not be empty",
    ),
    (
        "scan",
        {"TableName": "t", "ExpressionAttributeNames": {}},
        "ExpressionAttributeNames must not be empty",
    ),
    (
        "scan",
        {
            "TableName": "t",
            "FilterExpression": "n > :n",
            "ExpressionAttributeValues": {":n": {"N": "0"}, ":m": {"N": "0"}},
        },
        "Value provided in ExpressionAttributeValues unused in expressions: keys: {:m}",
    ),
    (
        "transact_write_items",
        {"TransactItems": [{"Update": update(ExpressionAttributeValues=ONE, ExpressionAttributeNames={})}]},
        "ExpressionAttributeNames must not be empty",
    ),
    (
        "transact_write_items",
        {"TransactItems": [{"Update": update(ExpressionAttributeValues={**ONE, ":x": {"N": "1"}})}]},
        "Value provided in ExpressionAttributeValues unused in expressions: keys: {:x}",
    ),
    (
        "transact_write_items",
        {"TransactItems": [{"Put": {"TableName": "t", "Item": KEY, "ExpressionAttributeNames": {}}}]},
        "ExpressionAttributeNames must not be empty",
    ),
    (
        "transact_write_items",
        {
            "TransactItems": [
                {
                    "Delete": {
                        "TableName": "t",
                        "Key": {"pk": {"S": "z"}, "sk": {"S": "z"}},
                        "ConditionExpression": "attribute_not_exists(pk)",
                        "ExpressionAttributeValues": {":v": {"N": "1"}},
                    }
                }
            ]
        },
        "Value provided in ExpressionAttributeValues unused in expressions: keys: {:v}",
    ),
    (
        "transact_write_items",
        {
            "TransactItems": [
                {
                    "ConditionCheck": {
                        "TableName": "t",
                        "Key": KEY,
                        "ConditionExpression": "attribute_exists(pk)",
                        "ExpressionAttributeNames": {},
                    }
                }
            ]
        },
        "ExpressionAttributeNames must not be empty",
    ),
    (
        "transact_get_items",
        {
            "TransactItems": [
                {
                    "Get": {
                        "TableName": "t",
                        "Key": KEY,
                        "ProjectionExpression": "n",
                        "ExpressionAttributeNames": {"#n": "n"},
                    }
                }
            ]
        },
        "Value provided in ExpressionAttributeNames unused in expressions: keys: {#n}",
    ),
    (
        "batch_get_item",
        {"RequestItems": {"t": {"Keys": [KEY], "ExpressionAttributeNames": {}}}},
        "ExpressionAttributeNames must not be empty",
    ),
]


def _valid_form(request: dict[str, Any]) -> dict[str, Any]:
    """The request without its fault: placeholders no expression uses and empty maps dropped."""

    def clean(part: dict[str, Any]) -> dict[str, Any]:
        expressions = " ".join(str(v) for k, v in part.items() if k.endswith("Expression"))
        out = dict(part)
        for field, pattern in (("ExpressionAttributeNames", r"#\w+"), ("ExpressionAttributeValues", r":\w+")):
            used = {k: v for k, v in out.pop(field, {}).items() if k in re.findall(pattern, expressions)}
            if used:
                out[field] = used
        return out

    if "TransactItems" in request:
        return {
            "TransactItems": [{op: clean(body) for op, body in e.items()} for e in request["TransactItems"]]
        }
    if "RequestItems" in request:
        return {"RequestItems": {t: clean(r) for t, r in request["RequestItems"].items()}}
    return clean(request)


@pytest.mark.parametrize(("operation", "request_", "message"), EXPRESSION_CASES)
def test_empty_or_unused_expression_attributes_are_refused_as_dynamodb_does(
    ddb: Any, operation: str, request_: dict[str, Any], message: str
) -> None:
    call = getattr(ddb, operation)
    assert refusal(lambda: call(**request_)) == (400, "ValidationException", message)
    call(**_valid_form(request_))  # the same request without the fault passes


def test_a_transaction_touches_each_item_once_and_at_most_100(ddb: Any) -> None:
    twice = [
        {"Update": update(ExpressionAttributeValues=ONE)},
        {"ConditionCheck": {"TableName": "t", "Key": KEY, "ConditionExpression": "attribute_exists(pk)"}},
    ]
    assert refusal(lambda: ddb.transact_write_items(TransactItems=twice)) == (
        400,
        "ValidationException",
        "Transaction request cannot include multiple operations on one item",
    )
    puts = [{"Put": {"TableName": "t", "Item": {"pk": {"S": "tx"}, "sk": {"S": str(i)}}}} for i in range(101)]
    status, code, _ = refusal(lambda: ddb.transact_write_items(TransactItems=puts))
    assert (status, code) == (400, "ValidationException")
    ddb.transact_write_items(TransactItems=puts[:100])
    # TransactGetItems takes up to 100 too (moto alone stops at 25).
    gets = [{"Get": {"TableName": "t", "Key": p["Put"]["Item"]}} for p in puts[:100]]
    assert len(ddb.transact_get_items(TransactItems=gets)["Responses"]) == 100


def test_a_transaction_repeated_with_its_client_request_token_applies_once(ddb: Any) -> None:
    """As DynamoDB does for 10 minutes: botocore retries a transaction whose answer was lost with
    the same token, so a counter's ADD inside one is counted once however often it is retried."""
    key = {"pk": {"S": "token"}, "sk": {"S": "counter"}}
    add = [{"Update": {"TableName": "t", "Key": key, "UpdateExpression": "ADD n :one", **ONE_VALUE}}]
    for _ in range(3):
        ddb.transact_write_items(TransactItems=add, ClientRequestToken="release-1")
    assert ddb.get_item(TableName="t", Key=key)["Item"]["n"] == {"N": "1"}
    other = [{"Update": {**add[0]["Update"], "ExpressionAttributeValues": {":one": {"N": "2"}}}}]
    status, code, _ = refusal(
        lambda: ddb.transact_write_items(TransactItems=other, ClientRequestToken="release-1")
    )
    assert (status, code) == (400, "IdempotentParameterMismatchException")
    ddb.transact_write_items(TransactItems=add, ClientRequestToken="release-2")
    ddb.transact_write_items(TransactItems=add)  # botocore fills in a fresh token of its own
    assert ddb.get_item(TableName="t", Key=key)["Item"]["n"] == {"N": "3"}


def test_batch_writes_take_25_requests_and_batch_gets_100_keys(ddb: Any) -> None:
    puts = [{"PutRequest": {"Item": {"pk": {"S": "bw"}, "sk": {"S": str(i)}}}} for i in range(26)]
    status, code, message = refusal(lambda: ddb.batch_write_item(RequestItems={"t": puts}))
    assert (status, code) == (400, "ValidationException")
    assert "Member must have length less than or equal to 25" in message
    ddb.batch_write_item(RequestItems={"t": puts[:25]})
    keys = [{"pk": {"S": "bw"}, "sk": {"S": str(i)}} for i in range(101)]
    status, code, message = refusal(lambda: ddb.batch_get_item(RequestItems={"t": {"Keys": keys}}))
    assert (status, code) == (400, "ValidationException")
    assert "less than or equal to 100" in message
    ddb.batch_get_item(RequestItems={"t": {"Keys": keys[:100]}})


def test_items_are_measured_as_dynamodb_measures_them(ddb: Any) -> None:
    # Developer guide, "Item sizes and formats": names + values; numbers by significant digits;
    # binaries by raw bytes; lists/maps 3 bytes + 1 per element.
    assert item_size({"pk": {"S": "a"}, "n": {"N": "-0012.3400"}, "b": {"BOOL": True}}) == 3 + (1 + 3) + 2
    assert item_size({"l": {"L": [{"S": "ab"}, {"N": "7"}]}, "m": {"M": {"k": {"NULL": True}}}}) == (
        1 + 3 + (2 + 1) + (2 + 1)
    ) + (1 + 3 + (1 + 1 + 1))
    base = {**KEY, "sk": {"S": "big"}}
    filler = MAX_ITEM_BYTES - item_size({**base, "v": {"S": ""}})
    ddb.put_item(TableName="t", Item={**base, "v": {"S": "x" * filler}})  # exactly 400 KB
    assert refusal(lambda: ddb.put_item(TableName="t", Item={**base, "v": {"S": "x" * (filler + 1)}})) == (
        400,
        "ValidationException",
        "Item size has exceeded the maximum allowed size",
    )
    # Binaries count their raw bytes, not the base64 on the wire (moto alone refused this one).
    ddb.put_item(TableName="t", Item={**base, "v": {"B": b"\0" * filler}})
    assert refusal(
        lambda: ddb.update_item(
            TableName="t",
            Key=base,
            UpdateExpression="SET w = :w",
            ExpressionAttributeValues={":w": {"S": "xy"}},
        )
    ) == (400, "ValidationException", "Item size to update has exceeded the maximum allowed size")


# --- SQS --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sqs(moto_url: str) -> Any:
    return client(moto_url, "sqs")


def test_batches_take_at_most_10_entries(sqs: Any) -> None:
    queue = sqs.create_queue(QueueName="batches")["QueueUrl"]
    sqs.send_message_batch(QueueUrl=queue, Entries=[{"Id": str(i), "MessageBody": "m"} for i in range(10)])
    sqs.send_message(QueueUrl=queue, MessageBody="m")
    handles: list[str] = []
    while len(handles) < 11:
        got = sqs.receive_message(
            QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1, VisibilityTimeout=60
        )
        handles += [m["ReceiptHandle"] for m in got.get("Messages", [])]
    entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)]
    calls = [
        lambda: sqs.send_message_batch(
            QueueUrl=queue, Entries=[{"Id": str(i), "MessageBody": "m"} for i in range(11)]
        ),
        lambda: sqs.change_message_visibility_batch(
            QueueUrl=queue, Entries=[{**e, "VisibilityTimeout": 60} for e in entries]
        ),
        lambda: sqs.delete_message_batch(QueueUrl=queue, Entries=entries),
    ]
    for call in calls:
        with pytest.raises(sqs.exceptions.TooManyEntriesInBatchRequest) as raised:
            call()
        error = raised.value.response
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert error["Error"]["Code"] == "AWS.SimpleQueueService.TooManyEntriesInBatchRequest"
        assert error["Error"]["Message"] == "Maximum number of entries per request are 10. You have sent 11."
    assert not sqs.delete_message_batch(QueueUrl=queue, Entries=entries[:10]).get("Failed")
    assert not sqs.delete_message_batch(QueueUrl=queue, Entries=entries[10:]).get("Failed")


def test_message_sizes_count_utf8_bytes_and_attributes(sqs: Any) -> None:
    queue = sqs.create_queue(QueueName="sizes")["QueueUrl"]
    attribute = {"a": {"DataType": "String", "StringValue": "v"}}  # 1 + 6 + 1 bytes
    sqs.send_message(QueueUrl=queue, MessageBody="x" * (MIB - 8), MessageAttributes=attribute)
    for body, attributes in (("x" * (MIB - 7), attribute), ("é" * (MIB // 2 + 1), {})):
        with pytest.raises(ClientError) as raised:
            sqs.send_message(QueueUrl=queue, MessageBody=body, MessageAttributes=attributes)
        assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert raised.value.response["Error"] == {
            "Code": "InvalidParameterValue",
            "Message": "One or more parameters are invalid. Reason: "
            "Message must be shorter than 1048576 bytes.",
            "QueryErrorCode": "InvalidParameterValue",
            "Type": "Sender",
        }
    # A batch's payload, attributes included, is at most 1 MiB.
    binary = {"b": {"DataType": "Binary", "BinaryValue": b"\0" * 10}}  # 1 + 6 + 10 bytes
    entries = [
        {"Id": str(i), "MessageBody": "x" * (MIB // 4 - 17), "MessageAttributes": binary} for i in range(4)
    ]
    sqs.send_message_batch(QueueUrl=queue, Entries=entries)
    entries[0]["MessageBody"] += "xx"
    with pytest.raises(sqs.exceptions.BatchRequestTooLong) as too_long:
        sqs.send_message_batch(QueueUrl=queue, Entries=entries)
    assert too_long.value.response["Error"]["Code"] == "AWS.SimpleQueueService.BatchRequestTooLong"
    # Already refused by moto, kept as a guard: DelaySeconds over 900.
    assert refusal(lambda: sqs.send_message(QueueUrl=queue, MessageBody="m", DelaySeconds=901))[:2] == (
        400,
        "InvalidParameterValue",
    )


# --- S3 ---------------------------------------------------------------------------------------------


def test_a_part_under_5_mib_that_is_not_the_last_is_too_small(moto_url: str) -> None:
    s3 = client(moto_url, "s3")
    s3.create_bucket(Bucket="parts")

    def complete(sizes: list[int]) -> None:
        upload = s3.create_multipart_upload(Bucket="parts", Key="k")["UploadId"]
        parts = [
            {
                "PartNumber": n,
                "ETag": s3.upload_part(
                    Bucket="parts", Key="k", UploadId=upload, PartNumber=n, Body=b"a" * size
                )["ETag"],
            }
            for n, size in enumerate(sizes, start=1)
        ]
        s3.complete_multipart_upload(
            Bucket="parts", Key="k", UploadId=upload, MultipartUpload={"Parts": parts}
        )

    assert refusal(lambda: complete([5 * MIB - 1, 10])) == (
        400,
        "EntityTooSmall",
        "Your proposed upload is smaller than the minimum allowed object size.",
    )
    complete([5 * MIB, 10])  # the last part may be smaller


def test_a_presigned_put_must_send_what_was_signed(moto_url: str) -> None:
    """Through the server, as `rowcall submit` PUTs: a changed type, size or metadata, or metadata that
    was never signed, is 403 and stores nothing; the PUT as signed is stored with its metadata."""
    s3 = boto3.client(
        "s3",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="fn-WebhookFunction",
        aws_secret_access_key="testing",
        config=Config(signature_version="s3v4"),
    )
    s3.create_bucket(Bucket="presigned")
    body = b"a,b\n1,2\n"
    url = s3.generate_presigned_url(
        "put_object",
        Params={
            "Bucket": "presigned",
            "Key": "uploads/x/a.csv",
            "ContentLength": len(body),
            "ContentType": "text/csv",
            "Metadata": {"technique-id": "t1"},
        },
        ExpiresIn=300,
    )
    signed = {"Content-Type": "text/csv", "x-amz-meta-technique-id": "t1"}
    refused = [
        ({**signed, "Content-Type": "text/plain"}, body, "SignatureDoesNotMatch"),
        ({**signed, "x-amz-meta-technique-id": "t2"}, body, "SignatureDoesNotMatch"),
        ({"Content-Type": "text/csv"}, body, "SignatureDoesNotMatch"),
        (signed, body + b"3,4\n", "SignatureDoesNotMatch"),
        ({**signed, "x-amz-meta-key-column": "a"}, body, "AccessDenied"),
    ]
    for headers, content, code in refused:
        response = httpx.put(url, content=content, headers=headers, timeout=10)
        assert (response.status_code, f"<Code>{code}</Code>" in response.text) == (403, True), headers
    assert s3.list_objects_v2(Bucket="presigned").get("KeyCount") == 0
    assert httpx.put(url, content=body, headers=signed, timeout=10).status_code == 200
    assert s3.head_object(Bucket="presigned", Key="uploads/x/a.csv")["Metadata"] == {"technique-id": "t1"}


# --- FIFO -------------------------------------------------------------------------------------------

LONG_STACK = "strict-aws-fifo-" + "s" * 60
FIFO_TEMPLATE = {
    "Resources": {
        "Jobs": {"Type": "AWS::SQS::Queue", "Properties": {"FifoQueue": True}},
        "ContentJobs": {
            "Type": "AWS::SQS::Queue",
            "Properties": {"FifoQueue": True, "ContentBasedDeduplication": True},
        },
        "GroupJobs": {
            "Type": "AWS::SQS::Queue",
            "Properties": {
                "FifoQueue": True,
                "DeduplicationScope": "messageGroup",
                "FifoThroughputLimit": "perMessageGroupId",
            },
        },
        "Plain": {"Type": "AWS::SQS::Queue", "Properties": {}},
    }
}


@pytest.fixture(scope="module")
def fifo_queues(moto_url: str) -> dict[str, str]:
    cfn = client(moto_url, "cloudformation")
    cfn.create_stack(StackName=LONG_STACK, TemplateBody=json.dumps(FIFO_TEMPLATE))
    resources = cfn.list_stack_resources(StackName=LONG_STACK)["StackResourceSummaries"]
    return {r["LogicalResourceId"]: r["PhysicalResourceId"] for r in resources}


def test_cloudformation_names_generated_fifo_queues_as_aws_does(
    sqs: Any, fifo_queues: dict[str, str]
) -> None:
    names = {logical: url.rsplit("/", 1)[-1] for logical, url in fifo_queues.items()}
    for logical in ("Jobs", "ContentJobs", "GroupJobs"):
        assert names[logical].endswith(".fifo") and len(names[logical]) <= 80, names[logical]
        attributes = sqs.get_queue_attributes(QueueUrl=fifo_queues[logical], AttributeNames=["FifoQueue"])
        assert attributes["Attributes"]["FifoQueue"] == "true"
    assert not names["Plain"].endswith(".fifo")
    assert len(set(names.values())) == len(names)  # the random suffix survives the cut
    assert fifo_physical_name("stack-Q-ABC123") == "stack-Q-ABC123.fifo"
    assert fifo_physical_name("s" * 80 + "-Q-ABC123") == "s" * 68 + "-ABC123.fifo"


def _receive_until(sqs: Any, queue: str, *markers: str) -> list[str]:
    """Bodies received and deleted until every marker came (FIFO: a duplicate would come before)."""
    bodies: list[str] = []
    deadline = time.monotonic() + 20
    while not set(markers) <= set(bodies):
        assert time.monotonic() < deadline, f"{markers} not all received; got {bodies}"
        got = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        for message in got.get("Messages", []):
            bodies.append(message["Body"])
            sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])
    return bodies


def test_a_deduplication_id_holds_for_five_minutes_after_the_message_is_deleted(
    sqs: Any, fifo_queues: dict[str, str]
) -> None:
    queue = fifo_queues["Jobs"]
    sqs.send_message(QueueUrl=queue, MessageBody="first", MessageGroupId="g", MessageDeduplicationId="d1")
    assert _receive_until(sqs, queue, "first") == ["first"]
    again = sqs.send_message(
        QueueUrl=queue, MessageBody="again", MessageGroupId="g", MessageDeduplicationId="d1"
    )
    assert again["MessageId"]  # accepted, as SQS accepts it ...
    sqs.send_message(QueueUrl=queue, MessageBody="marker", MessageGroupId="g", MessageDeduplicationId="d2")
    assert _receive_until(sqs, queue, "marker") == ["marker"]  # ... but never delivered


def test_content_based_deduplication_holds_after_delete_too(sqs: Any, fifo_queues: dict[str, str]) -> None:
    queue = fifo_queues["ContentJobs"]
    sqs.send_message(QueueUrl=queue, MessageBody="same", MessageGroupId="g")
    assert _receive_until(sqs, queue, "same") == ["same"]
    sqs.send_message(QueueUrl=queue, MessageBody="same", MessageGroupId="g")
    sqs.send_message(QueueUrl=queue, MessageBody="marker", MessageGroupId="g")
    assert _receive_until(sqs, queue, "marker") == ["marker"]


def test_message_group_scope_deduplicates_within_a_group_only(sqs: Any, fifo_queues: dict[str, str]) -> None:
    queue = fifo_queues["GroupJobs"]
    sqs.send_message(QueueUrl=queue, MessageBody="a1", MessageGroupId="a", MessageDeduplicationId="d")
    sqs.send_message(QueueUrl=queue, MessageBody="b1", MessageGroupId="b", MessageDeduplicationId="d")
    sqs.send_message(QueueUrl=queue, MessageBody="a2", MessageGroupId="a", MessageDeduplicationId="d")
    sqs.send_message(QueueUrl=queue, MessageBody="marker", MessageGroupId="a", MessageDeduplicationId="m")
    # The same id in group b is another message; in group a it is a duplicate.
    assert sorted(_receive_until(sqs, queue, "marker", "b1")) == ["a1", "b1", "marker"]


def test_the_deduplication_window_ends_after_five_minutes() -> None:
    window = DeduplicationWindow()
    assert window.admit("", "d", now=0.0)
    assert not window.admit("", "d", now=299.9)
    assert window.admit("", "d", now=300.0)  # a new interval starts with this send
    assert not window.admit("", "d", now=599.0)
    assert window.admit("group", "d", now=599.0)


def test_binary_values_are_read_as_raw_bytes() -> None:
    assert base64.b64encode(b"\0" * 3) == b"AAAA"
    assert item_size({"b": {"B": "AAAA"}}) == 1 + 3


def test_the_unit_tests_in_process_aws_is_strict_too(aws: Aws) -> None:
    item = {"pk": {"S": "p"}, "sk": {"S": "s"}}
    put = aws.dynamodb.put_item
    assert refusal(lambda: put(TableName=aws.table, Item=item, ExpressionAttributeNames={})) == (
        400, "ValidationException", "ExpressionAttributeNames must not be empty"
    )  # fmt: skip
