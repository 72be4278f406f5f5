"""A worker killed after taking slots and before its creates: under a cap of one, the slot it took
would be held by nobody and every chunk would wait for it forever. The safety net gives it back
once the grant's lease has run out, the batch finishes, and no slot stays taken."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from rowcall.ledger import Ledger
from rowcall.ledger.grants import GRANT_LEASE_S

from .conftest import LocalStack, running_stack
from .test_faults import aws_client

pytestmark = pytest.mark.e2e

CAP = 1
ROWS = 6
# The slot acquire's condition (the same before and after grants): the worker is killed right after
# the first write that took slots succeeded, before anything else of its delivery.
ACQUIRE_WRITE = "#n <= :limit"


@pytest.fixture(scope="module")
def crashed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    flags = [
        "--max-in-flight",
        str(CAP),
        "--chunk-rows",
        "3",
        "--provider-delay-ms",
        "20:100",
        "--reconcile-after-s",
        "3",
        "--schedule-every-s",
        "2",
        "--crash-after-write",
        f"WorkerFunction:{ACQUIRE_WRITE}",
    ]
    with running_stack(tmp_path_factory.mktemp("rowcall-lost-slots"), *flags) as stack:
        yield stack


def held(ledger: Ledger) -> int:
    acquired, released = ledger.slots.held()
    return acquired - released


def test_slots_taken_by_a_killed_worker_come_back_and_the_batch_finishes(crashed: LocalStack) -> None:
    key = "uploads/lost-slots.csv"
    body = "sku,prompt\n" + "".join(f"s{n},prompt {n}\n" for n in range(ROWS))
    crashed.s3.put_object(
        Bucket=crashed.info["bucket"],
        Key=key,
        Body=body.encode(),
        Metadata={"reuse": "off", "key-column": "sku"},
    )
    batch_id = str(crashed.batch_for(key)["batch_id"])
    # Its lease, the sweep's period, the chunk resent once quiet, and six runs one at a time on a
    # loaded machine: well within this.
    done = crashed.wait_terminal(batch_id, timeout_s=GRANT_LEASE_S + 150)
    assert (done["status"], done["completed_count"], done["failed_count"]) == ("completed", ROWS, 0)
    # The crash did happen where it was aimed.
    assert (crashed.state_dir / "crashed-after-write-WorkerFunction").exists()
    ledger = Ledger(aws_client(crashed, "dynamodb"), crashed.info["table"])
    # The last outcomes give their slots back just after the batch finishes.
    deadline = time.monotonic() + 30
    while held(ledger) != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert held(ledger) == 0
    assert all("swept" in grant for grant in ledger.grants.open().values())  # none left unsettled
    stats = crashed.provider_stats()
    assert stats["max_in_flight"] <= CAP
    assert stats["creates"] - stats.get("duplicate_creates", 0) == ROWS
