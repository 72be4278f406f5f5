"""One batch through the local stack: time, rows/s, and what it asked of the provider and of AWS per row.

    .venv/bin/python bench/throughput.py [ROWS]        (make bench)

Figures are measured in this one run and printed as ratios or counts. AWS requests are counted
with moto's request recorder, which slows moto down a little, so rows/s here is a floor. DynamoDB
capacity is what on-demand DynamoDB would bill for the run, metered inside the embedded AWS
(`GET /_rowcall/capacity`, local/rowcall_local/capacity_meter.py), reset just before the upload.
"""

from __future__ import annotations

import base64
import collections
import csv
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from rowcall_local import capacity_meter
from rowcall_local.batch_api import BatchWatcher, is_notified, is_terminal
from rowcall_local.provider_emulator import ProviderFaults
from rowcall_local.stack import LocalStack, StackOptions
from rowcall_local.webhook_receiver import WebhookReceiver


def make_csv(rows: int) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["sku", "prompt", "reference"])
    for n in range(1, rows + 1):
        writer.writerow(
            [f"SKU-{n:06d}", f"studio photo of product {n}, soft light", f"https://img.example/{n}.png"]
        )
    return out.getvalue().encode()


def aws_requests(recording: str) -> collections.Counter[str]:
    """One line per request: count them by service and action."""
    counts: collections.Counter[str] = collections.Counter()
    for line in recording.splitlines():
        if not line.strip():
            continue
        request = json.loads(line)
        headers = request.get("headers") or {}
        target = headers.get("X-Amz-Target") or headers.get("x-amz-target")
        if target:
            counts[target.split(".")[-1] if "DynamoDB" in target else target] += 1
            continue
        body = request.get("body") or ""
        try:
            text = base64.b64decode(body).decode(errors="replace") if body else ""
        except ValueError:
            text = str(body)
        action = next((p.split("=", 1)[1] for p in text.split("&") if p.startswith("Action=")), None)
        counts[action or f"S3 {request.get('method')}"] += 1
    return counts


def main(rows: int) -> None:
    state = Path(tempfile.mkdtemp(prefix="rowcall-bench-"))
    options = StackOptions(state_dir=state, provider_faults=ProviderFaults(delay_ms=(20, 200)))
    hook = WebhookReceiver()
    with LocalStack(options) as stack:
        info = stack.info
        moto = info["aws_endpoint_url"]
        api = httpx.Client(base_url=info["api_url"], headers={"Authorization": f"Bearer {info['api_token']}"})
        httpx.post(f"{moto}/moto-api/recorder/reset-recording")
        httpx.post(f"{moto}/moto-api/recorder/start-recording")
        httpx.post(f"{moto}{capacity_meter.RESET_PATH}").raise_for_status()
        key = f"uploads/bench-{rows}.csv"
        started = time.monotonic()
        stack.aws.s3().put_object(
            Bucket=info["bucket"],
            Key=key,
            Body=make_csv(rows),
            Metadata={
                "key-column": "sku",
                "input-types": "reference=imageUrl",
                "on-done-url": hook.url + "/done",
            },
        )
        watcher = BatchWatcher(api, poll_s=0.05)
        polls = collections.Counter[str]()

        def count_poll(_: object) -> None:
            polls["poll"] += 1

        batch = watcher.wait(watcher.find(key, 120)["batch_id"], is_terminal, 600, on_poll=count_poll)
        finished = time.monotonic()
        hook.wait_for(lambda got: len(got) >= 1, timeout_s=120)
        notified = time.monotonic()
        watcher.wait(batch["batch_id"], is_notified, 120, on_poll=count_poll)
        httpx.post(f"{moto}/moto-api/recorder/stop-recording")
        capacity = httpx.get(f"{moto}{capacity_meter.CONTROL_PATH}").json()
        # What one of this bench's status polls costs, to tell the stack's reads from the bench's.
        api.get(f"/batches/{batch['batch_id']}").raise_for_status()
        poll_read_units = (
            httpx.get(f"{moto}{capacity_meter.CONTROL_PATH}").json()["read_units"] - capacity["read_units"]
        )
        recording = httpx.get(f"{moto}/moto-api/recorder/download-recording", timeout=60).text
        provider = httpx.get(info["provider_url"] + "/_stats").json()
    hook.close()

    counts = aws_requests(recording)
    seconds = finished - started
    print(
        f"rows: {rows}  status: {batch['status']}  completed: {batch['completed_count']}  "
        f"failed: {batch['failed_count']}  on-done deliveries: {len(hook.got)}"
    )
    print(f"upload -> last row finished: {seconds:.1f} s  = {rows / seconds:.0f} rows/s")
    print(f"last row finished -> on-done received: {notified - finished:.2f} s (includes the 50 ms API poll)")
    # gets = output fetches (one per completed run at most); polls must stay 0.
    per_row = {k: provider[k] / rows for k in ("creates", "gets", "lists", "polls", "callbacks_sent")}
    print("provider requests per row: " + ", ".join(f"{k} {v:.2f}" for k, v in per_row.items()))
    print("AWS requests per row (moto recorder):")
    for action, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        print(f"  {action:28s} {n / rows:7.3f}   ({n})")
    print_capacity(capacity, rows, polls["poll"], poll_read_units)


def print_capacity(capacity: dict[str, Any], rows: int, polls: int, poll_read_units: float) -> None:
    """DynamoDB units per row as on-demand DynamoDB bills them, and the item written the most per second."""
    table, index = capacity["table_write_units"] / rows, capacity["index_write_units"] / rows
    print(
        f"DynamoDB write units per row: {capacity['write_units'] / rows:.3f}"
        f"  (table {table:.3f} + index {index:.3f}; target <= 2.0)"
    )
    bench_reads = polls * poll_read_units / rows
    print(
        f"DynamoDB read units per row: {capacity['read_units'] / rows:.3f}"
        f"  (of which this bench's {polls} status polls: {bench_reads:.3f})"
    )
    print("DynamoDB writes by operation per row:")
    for name, op in sorted(capacity["writes_by_operation"].items(), key=lambda kv: -kv[1]["write_units"]):
        detail = (
            f"{op['requests']} requests, {op['failed']} failed, {op['index_write_units']:g} WU to indexes"
        )
        per_row = f"{op['write_units'] / rows:7.3f} WU  {op['items'] / rows:7.3f} item writes"
        print(f"  {name:28s} {per_row}  ({detail})")
    reads = ", ".join(
        f"{name} {op['read_units'] / rows:.3f}" for name, op in sorted(capacity["reads_by_operation"].items())
    )
    print(f"DynamoDB read units by operation per row: {reads}")
    if capacity["busiest_items"]:
        hot = capacity["busiest_items"][0]
        where = f"{hot['table']}{'/' + hot['index'] if hot['index'] else ''} pk={hot['pk']} sk={hot['sk']}"
        print(
            f"busiest item: {where}: {hot['writes']} writes, peak {hot['peak_writes_per_s']} writes/s"
            f" ({hot['peak_write_units_per_s']:g} WU/s) in one second of this local run"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
