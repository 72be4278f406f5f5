"""One second of 10,000 webhooks for one batch, replayed against the ledger code: writes per item.

DynamoDB takes about 1,000 write units per second on one partition, so no single item may be
written much more often than that. This replays the writes that one second of outcomes for one
batch causes, exactly as the recorder makes them (received batches of ten, FIFO order, grouped by
chunk), and the worker's grants of in-flight slots for as many starts, against in-process moto,
counting each request's items. Run: `.venv/bin/python bench/hot_items.py [outcomes] [chunks]`.
"""

from __future__ import annotations

import os
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import yaml
from moto import mock_aws

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rowcall.finishing import BatchFinisher, RowResult
from rowcall.ledger import Ledger
from rowcall.models import (
    BatchSpec,
    BatchState,
    BatchStatus,
    ChunkPlan,
    RowOutcome,
    RowStatus,
    SourceObject,
)
from rowcall.queues import DoneQueue

TEMPLATE = Path(__file__).resolve().parents[1] / "template.yaml"
RECEIVE_BATCH = 10  # the recorder's SQS batch size (FIFO's maximum)
GRANT = 16  # the worker's RunConcurrency: one slot grant per group of creates
CHUNK_ROWS = 1000
CAP = 100_000


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def table_properties() -> dict[str, Any]:
    props = yaml.load(TEMPLATE.read_text(), Loader=_Loader)["Resources"]["Table"]["Properties"]
    keep = ("AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes", "BillingMode")
    return {k: v for k, v in props.items() if k in keep}


def main(outcomes: int = 10_000, chunks: int = 40) -> None:
    os.environ.update(AWS_ACCESS_KEY_ID="x", AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1")
    os.environ.pop("AWS_ENDPOINT_URL", None)
    with mock_aws():
        dynamodb = boto3.client("dynamodb")
        dynamodb.create_table(TableName="hot", **table_properties())
        sqs = boto3.client("sqs")
        done = DoneQueue(sqs, sqs.create_queue(QueueName="done")["QueueUrl"])
        writes: Counter[tuple[str, str]] = Counter()

        def count(params: dict[str, Any], model: Any, **_: Any) -> None:
            def key(k: dict[str, Any]) -> tuple[str, str]:
                return k["pk"]["S"], k["sk"]["S"]

            if model.name in ("PutItem",):
                writes[key(params["Item"])] += 1
            elif model.name in ("UpdateItem", "DeleteItem"):
                writes[key(params["Key"])] += 1
            elif model.name == "TransactWriteItems":
                for entry in params["TransactItems"]:
                    (body,) = entry.values()
                    writes[key(body.get("Key") or body.get("Item"))] += 1
            elif model.name == "BatchWriteItem":
                for requests in params["RequestItems"].values():
                    for request in requests:
                        writes[key(request["PutRequest"]["Item"])] += 1

        ledger = Ledger(dynamodb, "hot")
        batch_id = "b_hot"
        ledger.batches.open(
            BatchState(
                batch_id=batch_id,
                name="hot",
                source=SourceObject(bucket="b", key="uploads/hot.csv"),
                spec=BatchSpec(technique_id="t", name="hot"),
                status=BatchStatus.VALIDATING,
                created_at="2026-11-25T00:00:00.000Z",
                updated_at="2026-11-25T00:00:00.000Z",
            )
        )
        plan = [
            ChunkPlan(index=i, start=0, end=1, first_record=1 + i * CHUNK_ROWS, first_line=2, rows=CHUNK_ROWS)
            for i in range(chunks)
        ]
        ledger.batches.record_plan(batch_id, header=["p"], chunks=plan, rows_skipped=0)
        ledger.batches.mark_running(batch_id)
        dynamodb.meta.events.register("before-parameter-build.dynamodb.*", count)

        finisher = BatchFinisher(ledger, done, capped=True)
        rng = random.Random(7)
        # The worker side: one slot grant per group of creates for as many starts, each taken
        # and settled (its runs all started): two writes of the ACQUIRED item per grant.
        for n in range(outcomes // GRANT):
            grant = ledger.grants.take(
                GRANT, CAP, batch_id=batch_id, chunk=n % chunks, holder="bench", now=0.0
            )
            if grant is not None:
                ledger.grants.settle(grant, started=grant.slots)
        # The recorder side: outcomes arrive in random order over the chunks in flight.
        arrivals = [(c, 1 + c * CHUNK_ROWS + r) for c in range(chunks) for r in range(CHUNK_ROWS)]
        rng.shuffle(arrivals)
        arrivals = arrivals[:outcomes]
        for start in range(0, len(arrivals), RECEIVE_BATCH):
            received = arrivals[start : start + RECEIVE_BATCH]
            by_chunk: dict[int, list[RowResult]] = {}
            for chunk, record in received:
                outcome = RowOutcome(status=RowStatus.COMPLETED, run_id=f"run_{record}")
                by_chunk.setdefault(chunk, []).append(RowResult(record, 1, outcome))
            recorded = sum(finisher.record_outcomes(batch_id, c, rows) for c, rows in by_chunk.items())
            finisher.release_slots(recorded)

    rows = sum(n for (pk, sk), n in writes.items() if sk.startswith("ROW#"))
    print(f"replayed {outcomes:,} outcomes (one second at {outcomes:,}/s) over {chunks} chunks in flight")
    print(f"item writes: {sum(writes.values()):,} ({rows:,} row items, each written once)")
    print("busiest items (writes in that second = writes/s):")
    for (pk, sk), n in writes.most_common(6):
        print(f"  {n:6,}  {pk} {sk}")
    (pk, sk), busiest = writes.most_common(1)[0]
    print(f"hot_item_max_writes_per_s: {busiest}  ({pk} {sk}; DynamoDB's per-partition limit is ~1,000)")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    main(*args)
