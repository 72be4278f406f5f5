"""The moto server process behaves as DynamoDB does where the ledger depends on it."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from rowcall_local.moto_process import MotoProcess

from .conftest import template_resource


@pytest.fixture(scope="module")
def dynamodb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    server = MotoProcess(Path(tmp_path_factory.mktemp("moto")) / "moto.log")
    url = server.start()
    try:
        client = boto3.client(
            "dynamodb",
            endpoint_url=url,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        props = template_resource("Table")
        client.create_table(
            TableName="t",
            BillingMode="PAY_PER_REQUEST",
            AttributeDefinitions=props["AttributeDefinitions"],
            KeySchema=props["KeySchema"],
            GlobalSecondaryIndexes=props["GlobalSecondaryIndexes"],
        )
        yield client
    finally:
        server.stop()


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
