"""`--aws-fault-rate`: the functions' requests meet AWS's load errors; nobody else's do."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from rowcall_local.aws_faults import CONTROL_PATH
from rowcall_local.moto_process import MotoProcess

DYNAMODB_LOAD_ERRORS = {
    "ThrottlingException",
    "ProvisionedThroughputExceededException",
    "TransactionConflictException",
    "TransactionCanceledException",
    "InternalServerError",
}


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = MotoProcess(Path(tmp_path_factory.mktemp("moto")) / "moto.log", fault_rate=0.0, fault_seed=1)
    try:
        yield server.start()
    finally:
        server.stop()


def faults(url: str, **wanted: Any) -> dict[str, Any]:
    """The injector's counts; with arguments, first sets its rate/seed."""
    data = json.dumps(wanted).encode() if wanted else None
    with urllib.request.urlopen(
        urllib.request.Request(url + CONTROL_PATH, data=data), timeout=10
    ) as response:
        stats: dict[str, Any] = json.loads(response.read())
        return stats


def client(url: str, service: str, key: str) -> Any:
    # No retries: the test sees each answer the embedded AWS gives.
    return boto3.client(
        service,
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key="testing",
        config=Config(retries={"mode": "standard", "total_max_attempts": 1}),
    )


@pytest.fixture(scope="module")
def table(moto_url: str) -> str:
    client(moto_url, "dynamodb", "testing").create_table(
        TableName="t",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
    )
    return "t"


def error_code(call: Any) -> str | None:
    try:
        call()
    except ClientError as exc:
        code: str = exc.response["Error"]["Code"]
        return code
    return None


def test_function_requests_meet_aws_load_errors_and_others_never(moto_url: str, table: str) -> None:
    function = {s: client(moto_url, s, "fn-WorkerFunction") for s in ("dynamodb", "s3", "sqs")}
    runtime = {s: client(moto_url, s, "testing") for s in ("dynamodb", "s3", "sqs")}
    runtime["s3"].create_bucket(Bucket="faults")
    queue = runtime["sqs"].create_queue(QueueName="faults")["QueueUrl"]
    before = faults(moto_url, rate=1.0, seed=1)
    try:
        item = {"pk": {"S": "a"}, "n": {"N": "1"}}
        codes = {
            error_code(lambda: function["dynamodb"].put_item(TableName=table, Item=item)) for _ in range(30)
        }
        assert codes <= DYNAMODB_LOAD_ERRORS and len(codes) >= 3, codes
        transaction = [
            {"Put": {"TableName": table, "Item": item}},
            {"Put": {"TableName": table, "Item": {"pk": {"S": "b"}}}},
        ]
        conflict = None
        for _ in range(40):
            try:
                function["dynamodb"].transact_write_items(TransactItems=transaction)
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "TransactionCanceledException":
                    conflict = exc.response
                    break
        assert conflict is not None
        assert [r["Code"] for r in conflict["CancellationReasons"]] == ["TransactionConflict", "None"]
        with pytest.raises(ClientError) as slow:
            function["s3"].put_object(Bucket="faults", Key="k", Body=b"x")
        assert slow.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert slow.value.response["Error"]["Code"] == "SlowDown"
        sqs_codes = {
            error_code(lambda: function["sqs"].send_message(QueueUrl=queue, MessageBody="m"))
            for _ in range(10)
        }
        assert sqs_codes == {"InternalError"}
        # The runtime's and the test's own requests are never faulted.
        runtime["dynamodb"].put_item(TableName=table, Item=item)
        runtime["s3"].put_object(Bucket="faults", Key="k", Body=b"x")
        runtime["sqs"].send_message(QueueUrl=queue, MessageBody="runtime")
    finally:
        after = faults(moto_url, rate=0.0)
    injected = sum(after["injected"].values()) - sum(before["injected"].values())
    assert injected == after["candidates"] - before["candidates"]  # rate 1: every function request
    # Some SQS 500s came after the send was applied, as they can on AWS: those messages are there.
    applied = after["injected"].get("sqs:InternalError:applied", 0)
    depth = runtime["sqs"].get_queue_attributes(
        QueueUrl=queue, AttributeNames=["ApproximateNumberOfMessages"]
    )
    assert int(depth["Attributes"]["ApproximateNumberOfMessages"]) == applied + 1


def test_faults_are_drawn_from_the_seed(moto_url: str, table: str) -> None:
    dynamodb = client(moto_url, "dynamodb", "fn-WebhookFunction")

    def sequence() -> list[str | None]:
        faults(moto_url, rate=0.5, seed=42)
        return [
            error_code(lambda: dynamodb.get_item(TableName=table, Key={"pk": {"S": "a"}})) for _ in range(30)
        ]

    try:
        first = sequence()
        assert None in first and set(first) - {None}
        assert sequence() == first
    finally:
        faults(moto_url, rate=0.0)


def test_with_its_retries_a_function_rides_out_throttling(moto_url: str, table: str) -> None:
    # botocore retries throttles and 5xx itself (DynamoDB: up to 10 attempts in legacy mode).
    dynamodb = boto3.client(
        "dynamodb",
        endpoint_url=moto_url,
        region_name="us-east-1",
        aws_access_key_id="fn-WorkerFunction",
        aws_secret_access_key="testing",
    )
    faults(moto_url, rate=0.3, seed=3)
    try:
        for n in range(20):
            dynamodb.get_item(TableName=table, Key={"pk": {"S": str(n)}})
    finally:
        stats = faults(moto_url, rate=0.0)
    assert stats["injected"]
