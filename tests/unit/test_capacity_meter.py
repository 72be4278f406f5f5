"""The embedded AWS bills DynamoDB requests as on-demand DynamoDB does (capacity_meter.py), over HTTP.

Each expected figure is worked out from the rule in the module's docstring (the AWS developer guide's
"DynamoDB read and write operations" page unless said otherwise), not read back from the meter.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from rowcall_local.capacity_meter import CONTROL_PATH, RESET_PATH, ItemWrite, Meter, WriteBill
from rowcall_local.moto_process import MotoProcess
from rowcall_local.strict_dynamodb import item_size

from .conftest import template_resource

KB = 1024


@pytest.fixture(scope="module")
def moto_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = MotoProcess(Path(tmp_path_factory.mktemp("moto")) / "moto.log")
    try:
        yield server.start()
    finally:
        server.stop()


def client(url: str, key: str = "testing") -> Any:
    return boto3.client(
        "dynamodb",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id=key,
        aws_secret_access_key="testing",
    )


def capacity(url: str, query: str = "") -> dict[str, Any]:
    with urllib.request.urlopen(url + CONTROL_PATH + query, timeout=10) as response:
        report: dict[str, Any] = json.loads(response.read())
        return report


@pytest.fixture(scope="module")
def ddb(moto_url: str) -> Any:
    dynamodb = client(moto_url)
    keys = {
        "AttributeDefinitions": [{"AttributeName": n, "AttributeType": "S"} for n in ("pk", "sk")],
        "KeySchema": [
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
    }
    dynamodb.create_table(TableName="plain", BillingMode="PAY_PER_REQUEST", **keys)
    props = template_resource("Table")  # the ledger's table: pk/sk and the gsi1 index, projection ALL
    dynamodb.create_table(
        TableName="ledger",
        BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=props["AttributeDefinitions"],
        KeySchema=props["KeySchema"],
        GlobalSecondaryIndexes=props["GlobalSecondaryIndexes"],
    )
    return dynamodb


@pytest.fixture
def meter(moto_url: str, ddb: Any) -> Any:
    """A fresh meter for each test; returns a function that reads it."""
    urllib.request.urlopen(urllib.request.Request(moto_url + RESET_PATH, data=b""), timeout=10).close()
    return lambda query="": capacity(moto_url, query)


def item(size: int, pk: str = "p", sk: str = "s", **extra: Any) -> dict[str, Any]:
    """An item DynamoDB counts as exactly `size` bytes (names + values, developer guide "Item sizes")."""
    base = {"pk": {"S": pk}, "sk": {"S": sk}, **extra}
    pad = size - item_size(base) - len("body")
    assert pad > 0
    made = {**base, "body": {"S": "x" * pad}}
    assert item_size(made) == size
    return made


def key(pk: str = "p", sk: str = "s") -> dict[str, Any]:
    return {"pk": {"S": pk}, "sk": {"S": sk}}


def ops(report: dict[str, Any]) -> dict[str, Any]:
    return {name: (op["write_units"], op["failed"]) for name, op in report["writes_by_operation"].items()}


# --- writes -----------------------------------------------------------------------------------------


def test_a_put_costs_its_size_in_kilobytes_rounded_up(ddb: Any, meter: Any) -> None:
    ddb.put_item(TableName="plain", Item=item(KB // 2, sk="half"))
    assert meter()["write_units"] == 1
    ddb.put_item(TableName="plain", Item=item(KB + KB // 2, sk="one-and-a-half"))
    assert meter()["write_units"] == 1 + 2
    # Replacing an item: the larger of the two (the 1.5 KB one it replaces).
    ddb.put_item(TableName="plain", Item=item(100, sk="one-and-a-half"))
    assert ops(meter()) == {"PutItem": (1 + 2 + 2, 0)}


def test_an_update_costs_the_larger_of_before_and_after(ddb: Any, meter: Any) -> None:
    ddb.put_item(TableName="plain", Item=item(KB // 2, sk="grows"))
    grown = "x" * (3 * KB - item_size(key(sk="grows")) - len("body"))
    ddb.update_item(
        TableName="plain",
        Key=key(sk="grows"),
        UpdateExpression="SET body = :body",
        ExpressionAttributeValues={":body": {"S": grown}},
    )
    assert ops(meter())["UpdateItem"] == (3, 0)  # 0.5 KB -> 3 KB
    # Shrinking it back costs the same: "the larger of these item sizes".
    ddb.update_item(
        TableName="plain",
        Key=key(sk="grows"),
        UpdateExpression="SET body = :body",
        ExpressionAttributeValues={":body": {"S": "x"}},
    )
    assert ops(meter())["UpdateItem"] == (3 + 3, 0)


def test_a_transaction_costs_two_units_per_kilobyte_of_each_item(ddb: Any, meter: Any) -> None:
    ddb.put_item(TableName="plain", Item=item(200, sk="counter"))
    meter_before = meter()["write_units"]
    ddb.transact_write_items(
        TransactItems=[
            {"Put": {"TableName": "plain", "Item": item(300, sk="row")}},
            {
                "Update": {
                    "TableName": "plain",
                    "Key": key(sk="counter"),
                    "UpdateExpression": "ADD n :one",
                    "ExpressionAttributeValues": {":one": {"N": "1"}},
                }
            },
        ]
    )
    report = meter()
    assert report["write_units"] - meter_before == 4  # 2 items up to 1 KB, 2 units each
    assert report["writes_by_operation"]["TransactWriteItems"]["items"] == 2


def test_a_failed_condition_is_billed_by_the_existing_or_the_attempted_item(ddb: Any, meter: Any) -> None:
    ddb.put_item(TableName="plain", Item=item(2 * KB + KB // 2, sk="taken"))
    start = meter()["write_units"]
    with pytest.raises(ClientError, match="ConditionalCheckFailed"):  # existing 2.5 KB, attempted 0.5 KB
        ddb.put_item(
            TableName="plain", Item=item(KB // 2, sk="taken"), ConditionExpression="attribute_not_exists(pk)"
        )
    assert meter()["write_units"] - start == 3
    with pytest.raises(ClientError, match="ConditionalCheckFailed"):  # no item, attempted 1.5 KB
        ddb.put_item(
            TableName="plain", Item=item(KB + KB // 2, sk="free"), ConditionExpression="attribute_exists(pk)"
        )
    assert meter()["write_units"] - start == 3 + 2
    with pytest.raises(ClientError, match="ConditionalCheckFailed"):  # no item, a small update: one unit
        ddb.update_item(
            TableName="plain",
            Key=key(sk="free"),
            UpdateExpression="SET n = :one",
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeValues={":one": {"N": "1"}},
        )
    with pytest.raises(ClientError, match="ConditionalCheckFailed"):  # the update would grow 2.5 -> 3.5 KB
        ddb.update_item(
            TableName="plain",
            Key=key(sk="taken"),
            UpdateExpression="SET more = :more",
            ConditionExpression="attribute_not_exists(pk)",
            ExpressionAttributeValues={":more": {"S": "y" * KB}},
        )
    report = meter()
    assert report["write_units"] - start == 3 + 2 + 1 + 4
    assert report["writes_by_operation"]["PutItem"]["failed"] == 2
    assert report["writes_by_operation"]["UpdateItem"] == {
        "requests": 2,
        "items": 2,
        "write_units": 1 + 4,
        "index_write_units": 0,
        "failed": 2,
    }


def test_a_cancelled_transaction_is_billed_for_every_item(ddb: Any, meter: Any) -> None:
    with pytest.raises(ClientError, match="TransactionCanceled"):
        ddb.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": "plain", "Item": item(300, sk="never")}},
                {
                    "Update": {
                        "TableName": "plain",
                        "Key": key(sk="missing"),
                        "UpdateExpression": "ADD n :one",
                        "ConditionExpression": "attribute_exists(pk)",
                        "ExpressionAttributeValues": {":one": {"N": "1"}},
                    }
                },
            ]
        )
    assert ops(meter()) == {"TransactWriteItems": (2 + 2, 1)}


def test_a_delete_costs_the_deleted_item(ddb: Any, meter: Any) -> None:
    ddb.put_item(TableName="plain", Item=item(2 * KB + KB // 2, sk="doomed"))
    ddb.delete_item(TableName="plain", Key=key(sk="doomed"))
    ddb.delete_item(TableName="plain", Key=key(sk="doomed"))  # gone: still one unit
    assert ops(meter())["DeleteItem"] == (3 + 1, 0)


def test_a_batch_write_rounds_each_item_up_on_its_own(ddb: Any, meter: Any) -> None:
    ddb.put_item(TableName="plain", Item=item(KB + 1, sk="old"))
    ddb.batch_write_item(
        RequestItems={
            "plain": [
                {"PutRequest": {"Item": item(500, sk="small")}},  # the guide's example: 1 KB + 4 KB
                {"PutRequest": {"Item": item(3 * KB + KB // 2, sk="large")}},
                {"DeleteRequest": {"Key": key(sk="old")}},  # just over 1 KB: 2
            ]
        }
    )
    report = meter()
    assert report["writes_by_operation"]["BatchWriteItem"]["write_units"] == 1 + 4 + 2
    assert report["writes_by_operation"]["BatchWriteItem"]["items"] == 3


def test_index_writes_follow_the_index_entry(ddb: Any, meter: Any) -> None:
    listed = {"gsi1pk": {"S": "LIST"}, "gsi1sk": {"S": "2026#a"}}
    ddb.put_item(TableName="ledger", Item=item(500, sk="META", **listed))  # enters the index: +1
    assert (meter()["table_write_units"], meter()["index_write_units"]) == (1, 1)

    def update(expression: str, values: dict[str, Any] | None = None) -> None:
        ddb.update_item(
            TableName="ledger",
            Key=key(sk="META"),
            UpdateExpression=expression,
            **({"ExpressionAttributeValues": values} if values else {}),
        )

    update("SET done_count = :n", {":n": {"N": "1"}})  # a projected attribute changes: +1
    assert meter()["index_write_units"] == 1 + 1
    update("SET gsi1sk = :k", {":k": {"S": "2026#b"}})  # the index key changes: delete + put, +2
    assert meter()["index_write_units"] == 1 + 1 + 2
    update("REMOVE gsi1pk")  # leaves the index: +1
    assert meter()["index_write_units"] == 1 + 1 + 2 + 1
    update("SET done_count = :n", {":n": {"N": "2"}})  # not in the index: nothing
    report = meter()
    assert report["index_write_units"] == 5
    assert report["table_write_units"] == 5
    assert report["write_units"] == 10


# --- reads ------------------------------------------------------------------------------------------


def test_reads_are_billed_per_4_kb_and_halved_when_eventually_consistent(ddb: Any, meter: Any) -> None:
    # The guide's Query example: 10 items, 40.8 KB together, are read as 44 KB: 11 units, 5.5 eventual.
    for n in range(10):
        ddb.put_item(TableName="plain", Item=item(4178, pk="q", sk=f"{n:02d}"))
    query = {
        "TableName": "plain",
        "KeyConditionExpression": "pk = :q",
        "ExpressionAttributeValues": {":q": {"S": "q"}},
    }
    assert ddb.query(**query)["Count"] == 10
    assert meter()["reads_by_operation"]["Query"]["read_units"] == 5.5
    ddb.query(**query, ConsistentRead=True)
    assert meter()["reads_by_operation"]["Query"]["read_units"] == 5.5 + 11
    # A filter that returns nothing and a projection read the same items: same bill.
    got = ddb.query(
        **{**query, "ExpressionAttributeValues": {":q": {"S": "q"}, ":no": {"S": "no"}}},
        FilterExpression="body = :no",
        ProjectionExpression="sk",
    )
    assert got["Count"] == 0
    assert meter()["reads_by_operation"]["Query"] == {
        "requests": 3,
        "items": 30,
        "read_units": 5.5 + 11 + 5.5,
    }

    ddb.put_item(TableName="plain", Item=item(10 * KB, sk="ten"))
    ddb.get_item(TableName="plain", Key=key(sk="ten"), ConsistentRead=True)  # 12 KB: 3
    ddb.get_item(TableName="plain", Key=key(sk="nothing-here"))  # missing, eventual: 0.5
    ddb.put_item(TableName="plain", Item=item(KB + KB // 2, sk="b1"))
    ddb.put_item(TableName="plain", Item=item(6 * KB + KB // 2, sk="b2"))
    ddb.batch_get_item(RequestItems={"plain": {"Keys": [key(sk="b1"), key(sk="b2")], "ConsistentRead": True}})
    ddb.transact_get_items(TransactItems=[{"Get": {"TableName": "plain", "Key": key(sk="b1")}}])
    reads = meter()["reads_by_operation"]
    assert reads["GetItem"]["read_units"] == 3 + 0.5
    assert reads["BatchGetItem"]["read_units"] == 1 + 2  # 4 KB + 8 KB, not 8 KB
    assert reads["TransactGetItems"]["read_units"] == 2


# --- hot items and requesters -----------------------------------------------------------------------


def test_the_busiest_item_and_its_peak_over_one_second(ddb: Any, meter: Any) -> None:
    def bump(sk: str) -> None:
        ddb.update_item(
            TableName="plain",
            Key=key(pk="hot", sk=sk),
            UpdateExpression="ADD n :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
        )

    started = time.monotonic()
    for _ in range(30):
        bump("counter")
    assert time.monotonic() - started < 1.0, "the burst must fit in one second for this test"
    time.sleep(1.1)
    for _ in range(5):
        bump("counter")
    for _ in range(3):
        bump("other")
    busiest = meter()["busiest_items"]
    assert busiest[0] == {
        "table": "plain",
        "index": None,
        "pk": "hot",
        "sk": "counter",
        "writes": 35,
        "write_units": 35,
        "peak_writes_per_s": 30,
        "peak_write_units_per_s": 30,
    }
    assert busiest[1]["sk"] == "other"
    assert busiest[1]["peak_writes_per_s"] == 3


def test_the_peak_is_over_any_one_second_window() -> None:
    heat = Meter()
    bill = WriteBill("UpdateItem", [ItemWrite(("t", None, "p", "s"), 2)])
    for at in (0.0, 0.5, 0.9, 1.4, 2.6, 2.7):
        heat.add_write(bill, at)
    (busiest,) = heat.report()["busiest_items"]
    assert (busiest["writes"], busiest["peak_writes_per_s"], busiest["peak_write_units_per_s"]) == (6, 3, 6)


def test_functions_can_be_metered_apart(moto_url: str, ddb: Any, meter: Any) -> None:
    client(moto_url, key="fn-WorkerFunction").put_item(TableName="plain", Item=item(100, sk="by-function"))
    ddb.put_item(TableName="plain", Item=item(100, sk="by-test"))
    assert meter()["write_units"] == 2
    assert meter()["requesters"] == "all"
    functions = meter("?requesters=functions")
    assert (functions["requesters"], functions["write_units"]) == ("functions", 1)
    with pytest.raises(urllib.error.HTTPError) as refused:
        meter("?requesters=everyone")
    assert refused.value.code == 400
