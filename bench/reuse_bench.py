"""What a batch of rows completed before costs (contract §3 `reuse`), beside a fresh one.

    .venv/bin/python bench/reuse_bench.py [rows]

One local stack; the same CSV uploaded twice under two keys. The first batch runs every row; the
second (reuse on, the default) completes every row from the first. For each: the provider's run
requests per row (creates, single-run GETs, lists: `GET {provider_url}/_stats`) and the embedded
AWS's requests per row (`GET {aws_endpoint_url}/_rowcall/requests`, reset before each upload and
read once its on-done has come, so the stack's own pollers in that time are counted alike).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.e2e_throughput import _on_done, _upload, make_csv
from rowcall_local import request_meter
from rowcall_local.provider_emulator import ProviderFaults
from rowcall_local.stack import LocalStack, StackOptions
from rowcall_local.webhook_receiver import WebhookReceiver

RUN_REQUESTS = ("creates", "gets", "lists")
ON_DONE_TIMEOUT_S = 900.0


def _batch(stack: LocalStack, hook: WebhookReceiver, name: str, body: bytes) -> dict[str, Any]:
    """Upload, wait for its on-done; what it asked of the provider and of AWS meanwhile."""
    aws = stack.info["aws_endpoint_url"]
    provider = stack.info["provider_url"]
    before = httpx.get(provider + "/_stats", timeout=10).json()
    httpx.post(aws + request_meter.RESET_PATH, timeout=30).raise_for_status()
    _upload(stack, f"uploads/{name}.csv", body, f"{hook.url}/done/{name}")
    done = _on_done(hook, f"/done/{name}", ON_DONE_TIMEOUT_S)
    meter = httpx.get(aws + request_meter.CONTROL_PATH, timeout=30).json()
    after = httpx.get(provider + "/_stats", timeout=10).json()
    return {
        "done": done,
        "provider": sum(after[k] - before[k] for k in RUN_REQUESTS),
        "technique_gets": after.get("technique_gets", 0) - before.get("technique_gets", 0),
        "aws": meter["requests"],
        "by_operation": meter["by_operation"],
    }


def measure(rows: int = 1000) -> dict[str, float]:
    state = Path(tempfile.mkdtemp(prefix="rowcall-reuse-bench-"))
    hook = WebhookReceiver()
    try:
        options = StackOptions(state_dir=state, provider_faults=ProviderFaults(delay_ms=(0, 0)))
        with LocalStack(options) as stack:
            body = make_csv(rows, "reuse")
            fresh = _batch(stack, hook, "reuse-fresh", body)
            again = _batch(stack, hook, "reuse-again", body)
    finally:
        hook.close()
    return {
        "reuse_rows": float(rows),
        "fresh_provider_requests_per_row": fresh["provider"] / rows,
        "reuse_provider_requests_per_row": again["provider"] / rows,
        "reuse_technique_gets_per_batch": float(again["technique_gets"]),
        "fresh_aws_requests_per_row": fresh["aws"] / rows,
        "reuse_aws_requests_per_row": again["aws"] / rows,
        **{f"reuse_ops_per_row.{op}": n / rows for op, n in sorted(again["by_operation"].items())},
        **{f"fresh_ops_per_row.{op}": n / rows for op, n in sorted(fresh["by_operation"].items())},
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="?", type=int, default=1000)
    args = parser.parse_args(argv)
    result = measure(args.rows)
    for key, value in result.items():
        print(f"{key}: {value:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
