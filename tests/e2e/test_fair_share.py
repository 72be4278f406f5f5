"""Under the in-flight cap, a small batch uploaded while a large one holds every slot still starts
within a minute: each delivery of a chunk takes at most a quarter of the cap and then queues
again behind the other batches' chunks."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from .conftest import LocalStack, running_stack

pytestmark = pytest.mark.e2e

CAP = 8
LARGE = 400
SMALL = 10


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    flags = ["--max-in-flight", str(CAP), "--chunk-rows", "25", "--provider-delay-ms", "400:800"]
    with running_stack(tmp_path_factory.mktemp("rowcall-capped"), *flags) as stack:
        yield stack


def upload(stack: LocalStack, key: str, rows: int) -> str:
    body = "sku,prompt\n" + "".join(f"{key[-9:-4]}{n},prompt {n}\n" for n in range(rows))
    stack.s3.put_object(
        Bucket=stack.info["bucket"],
        Key=key,
        Body=body.encode(),
        Metadata={"reuse": "off", "key-column": "sku"},
    )
    return str(stack.batch_for(key)["batch_id"])


def test_a_small_batch_starts_within_a_minute_while_a_large_one_holds_the_cap(capped: LocalStack) -> None:
    large = upload(capped, "uploads/large.csv", LARGE)
    # The large batch fills the cap: runs keep finishing and their slots keep being taken.
    capped.wait_batch(large, lambda b: b["completed_count"] >= 2 * CAP, 120)
    small = upload(capped, "uploads/small.csv", SMALL)
    uploaded = time.monotonic()
    capped.wait_batch(small, lambda b: b["completed_count"] + b["failed_count"] >= 1, 60)
    started_within = time.monotonic() - uploaded
    assert started_within < 60
    done = capped.wait_terminal(small, timeout_s=120)
    assert (done["status"], done["completed_count"]) == ("completed", SMALL)
    assert capped.wait_batch(large, lambda b: True, 5)["status"] == "running"  # still going: shared
    assert capped.provider_stats()["max_in_flight"] <= CAP
