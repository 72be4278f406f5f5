"""Waiting for in-flight slots costs nothing per second: a batch whose rows wait while another
holds every slot with slow runs makes no AWS requests while it waits (no re-deliveries, no
re-reads of its chunk), and starts when the slots come back, woken by the runs that end."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .conftest import LocalStack, running_stack

pytestmark = pytest.mark.e2e

CAP = 2
# How long the holding runs last: the cap must stay full through both windows below, which begin
# once the second batch waits (10-20 s after the runs started, on a loaded machine), and the test
# then waits for two rounds of runs. 50 s (was 80: 164 s of the suite's wall time) leaves that margin.
RUN_S = 50
WINDOW_S = 12  # two windows: a cost per second of waiting would show in each (was 20)
# Requests the runtime makes whatever the pipeline does: the event sources' long polls.
POLLING = {"sqs:ReceiveMessage"}


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    flags = ["--max-in-flight", str(CAP), "--provider-delay-ms", f"{RUN_S * 1000}:{RUN_S * 1000}"]
    with running_stack(tmp_path_factory.mktemp("rowcall-slow"), *flags) as stack:
        yield stack


def upload(stack: LocalStack, key: str, rows: int) -> str:
    body = "sku,prompt\n" + "".join(f"{key[-6:-4]}{n},prompt {n}\n" for n in range(rows))
    stack.s3.put_object(
        Bucket=stack.info["bucket"],
        Key=key,
        Body=body.encode(),
        Metadata={"reuse": "off", "key-column": "sku"},
    )
    return str(stack.batch_for(key)["batch_id"])


def meter(stack: LocalStack, reset: bool = False) -> dict[str, Any]:
    url = stack.info["aws_endpoint_url"] + "/_rowcall/requests"
    got = httpx.post(url + "/reset", timeout=10) if reset else httpx.get(url, timeout=10)
    counts: dict[str, Any] = got.json()
    return counts


def waiting_chunks(stack: LocalStack) -> list[str]:
    got = stack.client("dynamodb").query(
        TableName=stack.info["table"],
        KeyConditionExpression="pk = :pk",
        ExpressionAttributeValues={":pk": {"S": "WAITING"}},
        ConsistentRead=True,
    )
    return [item["sk"]["S"] for item in got["Items"]]


def until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_a_batch_waiting_for_slots_makes_no_requests_while_it_waits(slow: LocalStack) -> None:
    holder = upload(slow, "uploads/hold.csv", CAP)
    until(lambda: slow.provider_stats()["in_flight"] == CAP, 60, "the first batch never filled the cap")
    waiter = upload(slow, "uploads/wait.csv", CAP)
    until(lambda: any(waiter in sk for sk in waiting_chunks(slow)), 60, "the second batch never waited")
    # The wait, measured: nothing of the waiting batch runs, so nothing is asked of AWS for it.
    meter(slow, reset=True)
    waited_from = time.monotonic()
    windows = []
    for _ in range(2):
        time.sleep(WINDOW_S)
        counts = meter(slow)
        windows.append({op: n for op, n in counts["by_operation"].items() if op not in POLLING})
    assert slow.provider_stats()["in_flight"] == CAP and time.monotonic() - waited_from < RUN_S - 10
    first, both = windows
    # No chunk read again from S3, no chunk message sent again, while it waited.
    assert not any(op.startswith("s3:") for op in both), both
    assert not any(op.startswith("sqs:Send") for op in both), both
    # What was asked at all is the safety net's sweep (once a minute, whoever waits), not a
    # cost per second of waiting: the second window asked at most one sweep more than the first.
    assert sum(both.values()) - sum(first.values()) <= sum(first.values()) + 40, windows
    # The runs holding the slots end; their outcomes wake the waiting batch, which finishes.
    done = slow.wait_terminal(waiter, timeout_s=3 * RUN_S)
    assert (done["status"], done["completed_count"]) == ("completed", CAP)
    assert slow.wait_terminal(holder, timeout_s=30)["status"] == "completed"
    assert slow.provider_stats()["max_in_flight"] <= CAP
    assert waiting_chunks(slow) == []
