"""What one safety-net sweep reads while a 500,000-row batch is mid-run and nothing is stale.

    .venv/bin/python bench/sweep_scale.py [ROWS]

The ledger is synthesized directly in the embedded AWS (moto's server with the capacity meter,
`rowcall_local.capacity_meter`, which bills every request as on-demand DynamoDB does): the batch,
its plan and its counters through the ledger's own code; the row items and start pages of the
chunks in flight put straight into moto's table (through HTTP they would take minutes). The
shape: chunks of 1,000 rows; the first 80% of chunks have been started, of those 40% have
settled (their rows are history: off the open index, not written here because no sweep reads
them), the rest are in flight with every row started (start pages of 25) and 80% of rows
finished, their last outcome within the last minute; the last 20% of chunks wait in the queue,
planned 10 minutes ago. `reconcile-after-s` is the template's default (900 s): nothing is stale.

The sweep runs twice (the second is the steady state every minute); the figures are the
second's read units and its duration. The server runs in this process (the items are put into
its table directly), so the duration includes the server's own work on one GIL.

To measure the code before this change against the same state, run this file with an older
layer package first on the path, e.g.
    git archive <commit> layers/rowcall | tar -x -C /tmp/old
    PYTHONPATH=/tmp/old/layers/rowcall .venv/bin/python bench/sweep_scale.py
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import boto3  # noqa: E402

from bench.hot_items import table_properties  # noqa: E402
from rowcall.finishing import BatchFinisher  # noqa: E402
from rowcall.ledger import Ledger  # noqa: E402
from rowcall.ledger.keys import OPEN_PARTITION, chunk_key, open_chunk_sk, rows_pk  # noqa: E402
from rowcall.models import BatchSpec, BatchState, BatchStatus, ChunkPlan, SourceObject  # noqa: E402
from rowcall.provider import ProviderConnection  # noqa: E402
from rowcall.queues import ChunkQueue, DoneQueue  # noqa: E402
from rowcall.safety_net import SafetyNet, SafetyNetTimes  # noqa: E402
from tests.unit.synthetic_batch import Shape, row_item  # noqa: E402

TABLE = "sweep"
BATCH_ID = "b_sweep"
ACCOUNT = "123456789012"
REGION = "us-east-1"
RECONCILE_AFTER_S = 900.0  # template.yaml's ReconcileAfterSeconds default
CALLBACK_DEADLINE_S = 3600.0  # and CallbackDeadlineSeconds
STARTED_SHARE = 0.8
SETTLED_SHARE = 0.4
FINISHED_EVERY = 5  # in a chunk in flight, every fifth row is still running
START_PAGE_ROWS = 25


def _client(service: str, url: str) -> Any:
    return boto3.client(
        service, endpoint_url=url, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x"
    )


def _capacity(url: str, reset: bool = False) -> dict[str, Any]:
    path = "/_rowcall/capacity/reset" if reset else "/_rowcall/capacity"
    request = urllib.request.Request(url + path, method="POST" if reset else "GET")
    with urllib.request.urlopen(request, timeout=30) as answer:
        got: dict[str, Any] = json.loads(answer.read())
        return got


def _synthesize(ledger: Ledger, shape: Shape, now: float) -> dict[str, int]:
    """The batch as it stands mid-run; how many chunks and items of each kind were made."""
    from moto.dynamodb.models import dynamodb_backends

    ledger.batches.open(
        BatchState(
            batch_id=BATCH_ID,
            name="sweep",
            source=SourceObject(bucket="b", key="uploads/sweep.csv"),
            spec=BatchSpec(technique_id="tech", name="sweep"),
            status=BatchStatus.VALIDATING,
            created_at="2026-12-03T00:00:00.000Z",
            updated_at="2026-12-03T00:00:00.000Z",
        )
    )
    plan = [
        ChunkPlan(
            index=i,
            start=0,
            end=1,
            first_record=1 + i * shape.chunk_rows,
            first_line=2 + i * shape.chunk_rows,
            rows=min(shape.chunk_rows, shape.rows - i * shape.chunk_rows),
        )
        for i in range(shape.chunks)
    ]
    ledger.batches.record_plan(BATCH_ID, header=["sku", "prompt", "image"], chunks=plan, rows_skipped=0)
    ledger.batches.mark_running(BATCH_ID)
    backend = dynamodb_backends[ACCOUNT][REGION]
    rng = random.Random(7)
    made = {"settled": 0, "in_flight": 0, "waiting": 0, "row_items": 0, "start_pages": 0}
    for chunk in plan:
        counter: dict[str, Any] = {
            **chunk_key(BATCH_ID, chunk.index),
            "index": chunk.index,
            "rows": chunk.rows,
            "completed": 0,
            "failed": 0,
            "started": 0,
            "created_at": now - 600,
        }
        if chunk.index >= shape.chunks * STARTED_SHARE:
            made["waiting"] += 1
            ledger.table.put(
                counter | {"open_pk": OPEN_PARTITION, "open_sk": open_chunk_sk(BATCH_ID, chunk.index)}
            )
            continue
        records = range(chunk.first_record, chunk.first_record + chunk.rows)
        failed = sum(1 for r in records if r % shape.failed_every == 0)
        run_at = now - rng.uniform(120, 590)
        counter |= {"started": chunk.rows, "last_run_at": run_at, "last_start_at": run_at}
        if rng.random() < SETTLED_SHARE:
            made["settled"] += 1
            ledger.table.put(
                counter
                | {
                    "completed": chunk.rows - failed,
                    "failed": failed,
                    "settled": True,
                    "last_outcome_at": run_at,
                }
            )
            continue
        made["in_flight"] += 1
        finished = [r for r in records if r % FINISHED_EVERY != 0]
        pk = rows_pk(BATCH_ID, chunk.index)
        for record in finished:
            backend.put_item(TABLE, row_item(BATCH_ID, chunk.index, record, shape))
        made["row_items"] += len(finished)
        for n, first in enumerate(range(0, chunk.rows, START_PAGE_ROWS)):
            runs = [
                [r, 1, f"run_{r:012d}", r + 1, round(run_at, 3)]
                for r in records[first : first + START_PAGE_ROWS]
            ]
            page = {
                "pk": {"S": pk},
                "sk": {"S": f"START#w{chunk.index}-{n + 1:05d}"},
                "runs": {"S": json.dumps(runs)},
            }
            backend.put_item(TABLE, page)
            made["start_pages"] += 1
        done_failed = sum(1 for r in finished if r % shape.failed_every == 0)
        ledger.table.put(
            counter
            | {
                "completed": len(finished) - done_failed,
                "failed": done_failed,
                "last_outcome_at": now - rng.uniform(0, 60),
                "open_pk": OPEN_PARTITION,
                "open_sk": open_chunk_sk(BATCH_ID, chunk.index),
            }
        )
    return made


def measure(rows: int = 500_000) -> dict[str, Any]:
    from moto.server import ThreadedMotoServer

    from rowcall_local import moto_fidelity

    moto_fidelity.apply_all()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
        dynamodb = _client("dynamodb", url)
        dynamodb.create_table(TableName=TABLE, **table_properties())
        sqs = _client("sqs", url)
        chunk_queue = ChunkQueue(sqs, sqs.create_queue(QueueName="chunks")["QueueUrl"])
        done_queue = DoneQueue(sqs, sqs.create_queue(QueueName="done")["QueueUrl"])
        ledger = Ledger(dynamodb, TABLE)
        shape = Shape(rows=rows)
        now = time.time()
        started = time.monotonic()
        made = _synthesize(ledger, shape, now)
        print(f"synthesized {made} in {time.monotonic() - started:.0f} s", flush=True)
        net = SafetyNet(
            ledger=ledger,
            finisher=BatchFinisher(ledger, done_queue),
            chunk_queue=chunk_queue,
            done_queue=done_queue,
            # Nothing is stale: the provider is never asked (an unreachable address says so).
            provider=ProviderConnection(base_url="http://127.0.0.1:9", api_key="unused"),
            times=SafetyNetTimes(
                reconcile_after_s=RECONCILE_AFTER_S, callback_deadline_s=CALLBACK_DEADLINE_S
            ),
            clock=lambda: now + 30,
        )
        figures: dict[str, Any] = {}
        for run in ("first", "steady"):
            _capacity(url, reset=True)
            began = time.monotonic()
            report = net.sweep()
            seconds = time.monotonic() - began
            billed = _capacity(url)
            figures = {
                "sweep_read_units_500k_running": round(billed["read_units"], 1),
                "sweep_seconds_500k_running": round(seconds, 2),
                "sweep_reads_by_operation": billed["reads_by_operation"],
                "sweep_open_chunks": report.open_chunks,
                "sweep_findings": report.findings,
            }
            print(
                f"{run} sweep: {billed['read_units']:.1f} read units, {seconds:.2f} s, "
                f"{report.open_chunks} open chunks, findings {report.findings}, "
                f"reads {json.dumps(billed['reads_by_operation'])}",
                flush=True,
            )
        return figures
    finally:
        server.stop()


if __name__ == "__main__":
    got = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 500_000)
    print(f"sweep_read_units_500k_running: {got['sweep_read_units_500k_running']}")
    print(f"sweep_seconds_500k_running: {got['sweep_seconds_500k_running']}")
