"""Rows per second through the whole local stack with an instant provider, beside moto's own rate.

    .venv/bin/python bench/e2e_throughput.py [ROWS] [--samples N]

`measure(rows)` starts the local stack in this process (provider delay 0 ms, no faults), then:

1. **Throughput.** Uploads one CSV of `rows` rows and waits for its on-done; nothing polls the API
   meanwhile (the on-done says the batch is done). `e2e_rows_per_s` = rows / (upload -> on-done
   received). `moto_ops_per_s` = AWS requests the embedded AWS answered in that time / seconds (its
   request meter, `GET /_rowcall/requests`, which also gives `moto_cpu_share`: the CPU seconds of the
   moto process per second, 1.0 = one core, and `moto_ops_per_cpu_s`: the rate one core of moto could
   serve). `aws_ops_per_row` = those requests / rows: every request of every function and of the
   local runtime's event sources (receives, deletes), i.e. what a row costs the embedded AWS.
2. **On-done latency.** Then `samples` small batches (10 rows each), one after another. For each,
   the latency is from the moment the provider emulator sent the last run webhook it had accepted
   (`last_callback_sent_at_ms` in its `/_stats`: the batch's last callback, since batches run one at
   a time) to the on-done arriving at the receiver (both clocks are this process's `time.time()`).
   `on_done_latency_ms_p95` is the nearest-rank 95th percentile of those samples (with 20 samples:
   the second slowest); `..._p50` and `..._max` beside it, and the large batch's own as
   `on_done_latency_ms_large`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rowcall_local import profiling, request_meter
from rowcall_local.provider_emulator import ProviderFaults
from rowcall_local.stack import LocalStack, StackOptions
from rowcall_local.webhook_receiver import Received, WebhookReceiver
from rowcall_local.xray_daemon import XRAY_SEGMENTS_FILE

LATENCY_SAMPLES = 20
SAMPLE_ROWS = 10
ON_DONE_TIMEOUT_S = 1800.0

GOALS = {"e2e_rows_per_s": ">= 100", "on_done_latency_ms_p95": "<= 500", "share_of_ceiling": ">= 0.9"}


def make_csv(rows: int, tag: str = "") -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["sku", "prompt", "reference"])
    for n in range(1, rows + 1):
        writer.writerow(
            [f"SKU{tag}-{n:06d}", f"studio photo of product {n}, soft light", f"https://img.example/{n}.png"]
        )
    return out.getvalue().encode()


def percentile(values: list[float], pct: float) -> float:
    """Nearest rank: the smallest value with at least pct% of the values at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]


def _upload(stack: LocalStack, key: str, body: bytes, on_done_url: str, *, reuse: str | None = None) -> None:
    meta = {"key-column": "sku", "input-types": "reference=imageUrl", "on-done-url": on_done_url}
    stack.aws.s3().put_object(
        Bucket=stack.info["bucket"], Key=key, Body=body, Metadata=meta | ({"reuse": reuse} if reuse else {})
    )


def _on_done(hook: WebhookReceiver, path: str, timeout_s: float) -> Received:
    got = hook.wait_for(lambda seen: any(r.path == path for r in seen), timeout_s=timeout_s)
    return next(r for r in got if r.path == path)


def _last_callback_s(provider_url: str) -> float:
    stats = httpx.get(provider_url + "/_stats", timeout=10).json()
    return float(stats["last_callback_sent_at_ms"]) / 1000


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (Linux /proc), 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process(stack: LocalStack) -> dict[str, float]:
    """CPU seconds so far of the moto process, each function's instances, and this process (the
    local runtime: event sources, HTTP API, provider emulator; and this benchmark)."""
    found = {"runtime": _cpu_seconds(os.getpid())}
    if stack.moto_pid is not None:
        found["moto"] = _cpu_seconds(stack.moto_pid)
    for name, pool in stack.runtime.pools.items() if stack.runtime else []:
        found[name] = sum(_cpu_seconds(pid) for pid in pool.live_pids())
    return found


def measure(rows: int = 20000, samples: int = LATENCY_SAMPLES) -> dict[str, float]:
    from bench import on_done_hops  # it imports percentile from here

    state = Path(tempfile.mkdtemp(prefix="rowcall-e2e-bench-"))
    options = StackOptions(state_dir=state, provider_faults=ProviderFaults(delay_ms=(0, 0)))
    hook = WebhookReceiver()
    try:
        with LocalStack(options) as stack:
            moto = stack.info["aws_endpoint_url"]
            provider = stack.info["provider_url"]
            body = make_csv(rows)
            httpx.post(moto + request_meter.RESET_PATH).raise_for_status()
            assert stack.runtime is not None
            stack.runtime.trace()
            cpu_before = cpu_by_process(stack)
            started = time.time()
            _upload(stack, f"uploads/e2e-{rows}.csv", body, f"{hook.url}/done/large")
            large = _on_done(hook, "/done/large", ON_DONE_TIMEOUT_S)
            meter = httpx.get(moto + request_meter.CONTROL_PATH, timeout=30).json()
            cpu = {k: v - cpu_before.get(k, 0.0) for k, v in cpu_by_process(stack).items()}
            large_callback_s = _last_callback_s(provider)
            large_latency_s = large.at - large_callback_s
            large_hops = on_done_hops.hops(stack.runtime.spans(), large_callback_s, large.at) or {}
            xray_log = stack.logs_dir / XRAY_SEGMENTS_FILE
            large_hops |= (
                on_done_hops.notifier_steps(
                    on_done_hops.read_segments(xray_log), stack.runtime.spans(), large_callback_s, large.at
                )
                or {}
            )
            seconds = large.at - started
            done = json.loads(large.body)
            latencies = []
            hop_samples = []
            sampled: list[tuple[list[Any], float, float, dict[str, float]]] = []
            for n in range(samples):
                path = f"/done/sample-{n}"
                stack.runtime.trace()
                # Reuse off: the samples' prompts are the large batch's first ten, and reused rows start no
                # run, so the "last callback" would be the large batch's, minutes before (p50 83 s measured).
                sample = make_csv(SAMPLE_ROWS, f"s{n}")
                _upload(stack, f"uploads/e2e-sample-{n}.csv", sample, hook.url + path, reuse="off")
                got = _on_done(hook, path, 120)
                callback_s = _last_callback_s(provider)
                latencies.append(got.at - callback_s)
                spans = stack.runtime.spans()
                split = on_done_hops.hops(spans, callback_s, got.at)
                if split is not None:
                    hop_samples.append(split)
                    sampled.append((spans, callback_s, got.at, split))
            # The notifier's own steps, from its X-Ray subsegments (read once: the log is large).
            segments = on_done_hops.read_segments(xray_log)
            for spans, callback_s, received_at, split in sampled:
                split |= on_done_hops.notifier_steps(segments, spans, callback_s, received_at) or {}
            if profiling.directory() is not None:
                httpx.post(moto + profiling.DUMP_PATH, timeout=600).raise_for_status()
    finally:
        hook.close()
    data = done.get("data", done)
    ceiling = (meter["requests"] / max(meter["cpu_seconds"], 1e-9)) / (meter["requests"] / rows)
    if data.get("completed_count", rows) != rows:
        raise RuntimeError(f"the batch did not complete every row: {str(done)[:400]}")
    return {
        "rows": float(rows),
        "e2e_seconds": seconds,
        "e2e_rows_per_s": rows / seconds,
        "moto_ops_per_s": meter["requests"] / meter["seconds"],
        "moto_ops_per_cpu_s": meter["requests"] / max(meter["cpu_seconds"], 1e-9),
        "moto_cpu_share": meter["cpu_seconds"] / meter["seconds"],
        "aws_ops_per_row": meter["requests"] / rows,
        # The rows/s one core of the embedded AWS allows (one GIL-bound process), and the share of it
        # this run reached (issue 18 item 6; bench/run_all.py's ceiling() is the same figure). The
        # requests cancel out: the ceiling is rows per CPU-second of moto, and the share is
        # moto_cpu_share, how much of the run's wall time moto was busy (1.0: it alone was the wall).
        "ceiling_rows_per_s": ceiling,
        "share_of_ceiling": (rows / seconds) / ceiling,
        "on_done_latency_ms_p95": 1000 * percentile(latencies, 95),
        "on_done_latency_ms_p50": 1000 * percentile(latencies, 50),
        "on_done_latency_ms_max": 1000 * max(latencies),
        "on_done_latency_ms_large": 1000 * large_latency_s,
        "on_done_latency_samples": float(len(latencies)),
        **on_done_hops.summarize(hop_samples),
        **{f"large_hop_ms.{hop}": 1000 * v for hop, v in large_hops.items()},
        **{f"cpu_s.{name}": seconds for name, seconds in sorted(cpu.items(), key=lambda kv: -kv[1])},
        **{f"ops_per_row.{op}": n / rows for op, n in meter["by_operation"].items()},
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="?", type=int, default=20000)
    parser.add_argument("--samples", type=int, default=LATENCY_SAMPLES)
    args = parser.parse_args(argv)
    result = measure(args.rows, args.samples)
    for name, value in result.items():
        goal = GOALS.get(name, "")
        print(f"{name:40s} {value:12.3f}  {('goal ' + goal) if goal else ''}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
