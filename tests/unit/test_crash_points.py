"""`--crash-after-write`: an instance dies right after the write it aims at, and only once."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

CHILD = """
import sys
from pathlib import Path

import boto3
from moto import mock_aws

from rowcall_local import crash_points

crash_points.install("SLOTS#ACQUIRED", Path(sys.argv[1]))
with mock_aws():
    db = boto3.client("dynamodb", region_name="us-east-1")
    db.create_table(
        TableName="t",
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    db.put_item(TableName="t", Item={"pk": {"S": "OTHER"}})
    print("other write done", flush=True)
    db.update_item(
        TableName="t",
        Key={"pk": {"S": "SLOTS#ACQUIRED"}},
        UpdateExpression="ADD #n :one",
        ExpressionAttributeNames={"#n": "n"},
        ExpressionAttributeValues={":one": {"N": "1"}},
    )
    got = db.get_item(TableName="t", Key={"pk": {"S": "SLOTS#ACQUIRED"}})
    print("survived", got["Item"]["n"]["N"], flush=True)
"""


def _run(marker: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CHILD, str(marker)], capture_output=True, text=True, timeout=120, check=False
    )


def test_an_instance_dies_after_the_aimed_write_succeeded_once(tmp_path: Path) -> None:
    marker = tmp_path / "crashed"
    first = _run(marker)
    assert first.returncode == -signal.SIGKILL, first.stderr
    assert "other write done" in first.stdout and "survived" not in first.stdout
    assert marker.exists()
    # Once per stack: the next instance making the same write lives on.
    second = _run(marker)
    assert second.returncode == 0, second.stderr
    assert "survived 1" in second.stdout
