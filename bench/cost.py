"""Cost per 1M rows: one batch through the local stack, every AWS request it caused counted and priced.

    .venv/bin/python bench/cost.py [ROWS]        (default 5,000; part of `make bench`)

What is counted, in this one run (from the upload to the on-done received):
- Lambda: each function's invocations and handler durations, measured in its instance and billed
  as Lambda bills them (rounded up to 1 ms) at the template's memory size (FunctionRuntime.usage).
- DynamoDB: the units the capacity meter billed for the functions' requests (/_rowcall/capacity).
- SQS, S3, SNS: moto's request recorder, every request the functions and the event sources made.
  SQS requests are billed per 64 KB of request body. The local event sources long-poll for 1 s
  where Lambda's pollers wait 20 s, so their receives are replaced by what Lambda would make
  while rows flow - one receive per full batch of the messages sent to the queue - and idle
  polling is a standing cost (cost_model.Standing).
- HTTP API: one request per invocation of a function behind it (callbacks; the bench makes no API
  call while measuring: it waits for the on-done at its own webhook receiver).
- The safety net: its invocations during the run are in the run's usage; its schedule (every
  minute, busy or not) is a standing cost, priced from one sweep measured after the run, with
  nothing left open (cost_model.Standing).
The bench's own upload (one PutObject) is counted: a user makes it too.

Durations are measured on this machine against moto, so every AWS call a handler makes takes
local-moto time (milliseconds to tens of milliseconds on a loaded 2-core machine): the Lambda line
is an upper bound of what the same handlers bill on AWS.
"""

from __future__ import annotations

import base64
import collections
import json
import math
import re
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import cost_model
from bench.e2e_throughput import _cpu_seconds
from bench.throughput import make_csv
from rowcall_local import capacity_meter
from rowcall_local.provider_emulator import ProviderFaults
from rowcall_local.schedule_source import scheduled_event
from rowcall_local.stack import ACCOUNT_ID, LocalStack, StackOptions
from rowcall_local.webhook_receiver import WebhookReceiver

_SCOPE = re.compile(r"Credential=([^/,\s]+)/\d+/[^/]+/([^/]+)/aws4_request")
ESM_RECEIVE = "ReceiveMessage"


@dataclass
class AwsRequests:
    """The recorder's requests, by service and action, with SQS billed per 64 KB and per queue kind."""

    by_action: collections.Counter[str] = field(default_factory=collections.Counter)
    by_caller_action: collections.Counter[str] = field(default_factory=collections.Counter)
    """Requests per "<caller> <service> <action>": which function asks what, per row."""
    by_caller: collections.Counter[str] = field(default_factory=collections.Counter)
    """Requests per function (each signs with its own key, fn-<LogicalId>); "runtime" is the local
    event sources and the stack itself (their receives and deletes, as Lambda's pollers make them)."""
    sqs_billed: dict[str, float] = field(default_factory=lambda: {"standard": 0.0, "fifo": 0.0})
    sent_messages: collections.Counter[str] = field(default_factory=collections.Counter)
    """Messages sent per queue URL (for the event sources' receives as Lambda would make them)."""
    runtime_receives: int = 0
    s3_write: int = 0
    s3_read: int = 0
    sns_publishes: int = 0


def _body(request: dict[str, Any]) -> str:
    body = request.get("body") or ""
    try:
        return base64.b64decode(body).decode(errors="replace") if body else ""
    except ValueError:
        return str(body)


def _sqs_call(headers: dict[str, str], body: str) -> tuple[str, dict[str, Any]]:
    target = headers.get("X-Amz-Target") or headers.get("x-amz-target") or ""
    if target:  # the JSON protocol boto3 uses for SQS
        return target.split(".")[-1], json.loads(body or "{}")
    params = {k: v[-1] for k, v in parse_qs(body).items()}
    return params.get("Action", "?"), params


def _records(recording: str) -> Iterator[dict[str, Any]]:
    """moto's recorder writes one JSON object per line, but requests recorded at once from two
    threads (the saver's ten copies) can share a line: each object is read in turn."""
    decoder = json.JSONDecoder()
    for line in recording.splitlines():
        at = 0
        while line[at:].strip():
            request, end = decoder.raw_decode(line, at)
            yield request
            at = end
            while at < len(line) and line[at].isspace():
                at += 1


def count_requests(recording: str) -> AwsRequests:
    counted = AwsRequests()
    for request in _records(recording):
        headers = request.get("headers") or {}
        auth = headers.get("Authorization") or headers.get("authorization") or ""
        scope = _SCOPE.search(auth)
        if scope is None:
            continue  # unsigned: moto's own control endpoints
        key, service = scope.groups()
        from_function = key.startswith(capacity_meter.FUNCTION_KEY_PREFIX)
        caller = key.removeprefix(capacity_meter.FUNCTION_KEY_PREFIX) if from_function else "runtime"
        counted.by_caller[caller] += 1
        body = _body(request)
        if service == "sqs":
            action, params = _sqs_call(headers, body)
            counted.by_action[f"sqs {action}"] += 1
            counted.by_caller_action[f"{caller} sqs {action}"] += 1
            queue = str(params.get("QueueUrl", ""))
            kind = "fifo" if queue.endswith(".fifo") else "standard"
            if action == ESM_RECEIVE and not from_function:
                counted.runtime_receives += 1
                continue  # replaced by the modelled receives, below
            if action in ("SendMessage", "SendMessageBatch"):
                entries = params.get("Entries")
                counted.sent_messages[queue] += len(entries) if isinstance(entries, list) else 1
            counted.sqs_billed[kind] += cost_model.sqs_billed_requests(len(body.encode()))
        elif service == "s3":
            method = request.get("method", "GET")
            counted.by_action[f"s3 {method}"] += 1
            counted.by_caller_action[f"{caller} s3 {method}"] += 1
            if method in ("PUT", "POST") or (method == "GET" and "list-type" in request.get("qs", "")):
                counted.s3_write += 1
            else:
                counted.s3_read += 1
        elif service == "sns":
            action = parse_qs(body).get("Action", ["?"])[-1]
            counted.by_action[f"sns {action}"] += 1
            counted.by_caller_action[f"{caller} sns {action}"] += 1
            if "Action=Publish" in body:
                counted.sns_publishes += 1
        else:
            target = headers.get("X-Amz-Target") or headers.get("x-amz-target") or ""
            counted.by_action[service] += 1
            counted.by_caller_action[f"{caller} {service} {target.rsplit('.', 1)[-1] or '?'}"] += 1
    return counted


def measure(rows: int = 5000, save_outputs: str = "off") -> dict[str, Any]:
    """`save_outputs`: the batch's `save-outputs` (contract section 3); "off" is the figure the
    goal is set for, "on" adds the saver and every output copied into the bucket."""
    state = Path(tempfile.mkdtemp(prefix="rowcall-cost-"))
    options = StackOptions(state_dir=state, provider_faults=ProviderFaults(delay_ms=(20, 200)))
    hook = WebhookReceiver()
    try:
        with LocalStack(options) as stack:
            info, wiring, runtime = stack.info, stack.wiring, stack.runtime
            assert wiring is not None and runtime is not None
            moto = info["aws_endpoint_url"]
            httpx.post(f"{moto}/moto-api/recorder/reset-recording").raise_for_status()
            httpx.post(f"{moto}/moto-api/recorder/start-recording").raise_for_status()
            httpx.post(f"{moto}{capacity_meter.RESET_PATH}").raise_for_status()
            runtime.reset_usage()
            cpu_before = {fid: _cpu(pool.live_pids()) for fid, pool in runtime.pools.items()}
            started = time.monotonic()
            stack.aws.s3().put_object(
                Bucket=info["bucket"],
                Key=f"uploads/cost-{rows}.csv",
                Body=make_csv(rows),
                Metadata={
                    "key-column": "sku",
                    "input-types": "reference=imageUrl",
                    "on-done-url": hook.url,
                    "save-outputs": save_outputs,
                },
            )
            (done, *_) = hook.wait_for(lambda got: len(got) >= 1, timeout_s=max(600, rows / 5))
            seconds = time.monotonic() - started
            outputs_saved = int(json.loads(done.body)["data"].get("outputs_saved_count") or 0)
            # The notifier may still be finishing its invocation: let the counts settle.
            time.sleep(0.5)
            usage = runtime.usage()
            instances = {fid: pool.live_pids() for fid, pool in runtime.pools.items()}
            cpu_s = {fid: _cpu(pids) - cpu_before.get(fid, 0.0) for fid, pids in instances.items()}
            peak_rss_mb = {fid: max(map(_peak_rss_mb, pids), default=0.0) for fid, pids in instances.items()}
            httpx.post(f"{moto}/moto-api/recorder/stop-recording").raise_for_status()
            capacity = httpx.get(f"{moto}{capacity_meter.CONTROL_PATH}?requesters=functions").json()
            recording = httpx.get(f"{moto}/moto-api/recorder/download-recording", timeout=120).text
            provider = httpx.get(info["provider_url"] + "/_stats").json()
            # One safety-net sweep with nothing left to do: what each of its scheduled runs costs
            # while no batch is open (the invocations during the run stay in the run's usage).
            schedule_functions = {t.function_id for t in wiring.schedule_triggers}
            runtime.reset_usage()
            for fid in schedule_functions:
                runtime.invoke(
                    fid,
                    scheduled_event(
                        f"arn:aws:events:us-east-1:{ACCOUNT_ID}:rule/bench", "us-east-1", ACCOUNT_ID
                    ),
                )
            idle = runtime.usage()
            batch_sizes = {t.queue_url: t.batch_size for t in wiring.sqs_triggers}
            api_functions = {f.logical_id for f in wiring.functions.values() if "HttpApi" in f.event_types}
    finally:
        hook.close()
    sweeps = [idle[f] for f in schedule_functions if idle[f]["invocations"]]
    safety_net = (
        cost_model.FunctionUse(sweeps[0]["invocations"], sweeps[0]["billed_ms"], sweeps[0]["memory_mb"])
        if sweeps
        else cost_model.FunctionUse(1, 100, 512)
    )
    priced = price(
        rows,
        seconds,
        usage,
        capacity,
        count_requests(recording),
        batch_sizes,
        api_functions,
        safety_net.per_invocation(),
        provider,
    )
    priced["outputs_saved"] = outputs_saved
    for fid, figures in priced["lambda"].items():
        figures["cpu_s"] = cpu_s.get(fid, 0.0)
        figures["peak_rss_mb"] = peak_rss_mb.get(fid, 0.0)
    return priced


def _cpu(pids: set[int]) -> float:
    return sum(_cpu_seconds(pid) for pid in pids)


def _peak_rss_mb(pid: int) -> float:
    """The instance's peak resident memory (VmHWM): what its memory size must hold."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def price(
    rows: int,
    seconds: float,
    usage: dict[str, dict[str, int]],
    capacity: dict[str, Any],
    requests: AwsRequests,
    batch_sizes: dict[str, int],
    api_functions: set[str],
    safety_net: cost_model.FunctionUse,
    provider: dict[str, int],
) -> dict[str, Any]:
    functions = {
        fid: cost_model.FunctionUse(u["invocations"], u["billed_ms"], u["memory_mb"])
        for fid, u in usage.items()
    }
    # The event sources' receives as Lambda's pollers make them while messages flow.
    modelled = {"standard": 0.0, "fifo": 0.0}
    for queue, sent in requests.sent_messages.items():
        kind = "fifo" if queue.endswith(".fifo") else "standard"
        modelled[kind] += math.ceil(sent / batch_sizes.get(queue, 10))
    measured = cost_model.Usage(
        rows=rows,
        functions=functions,
        dynamodb_write_units=capacity["write_units"],
        dynamodb_read_units=capacity["read_units"],
        sqs_standard_requests=requests.sqs_billed["standard"] + modelled["standard"],
        sqs_fifo_requests=requests.sqs_billed["fifo"] + modelled["fifo"],
        s3_write_requests=requests.s3_write,
        s3_read_requests=requests.s3_read,
        sns_publishes=requests.sns_publishes,
        api_requests=sum(functions[f].invocations for f in api_functions if f in functions),
    )
    rowcall = cost_model.rowcall_per_million(measured, cost_model.Standing(safety_net=safety_net))
    basis = row_basis(functions, rows, api_functions)
    sfn = cost_model.per_million(cost_model.step_functions_per_row(basis))
    durable = cost_model.per_million(cost_model.durable_per_row(basis))
    polling = cost_model.per_million(cost_model.PollingWorker().per_row(basis))
    return {
        "rows": rows,
        "seconds": seconds,
        "cost_per_million_rows_usd": rowcall["total"],
        "sfn_cost_per_million_rows_usd": sfn["total"],
        "durable_cost_per_million_rows_usd": durable["total"],
        "polling_lambda_cost_per_million_rows_usd": polling["total"],
        "dynamodb_wru_per_row": capacity["write_units"] / rows,
        "dynamodb_rru_per_row": capacity["read_units"] / rows,
        "cost_run_provider_requests_per_row": (provider["creates"] + provider["gets"] + provider["lists"])
        / rows,
        "breakdown": {
            "rowcall": rowcall,
            "step_functions": sfn,
            "durable": durable,
            "polling_lambda": polling,
        },
        "lambda": {fid: vars(f) | {"gb_seconds": f.gb_seconds} for fid, f in functions.items()},
        "safety_net_per_invocation": vars(safety_net),
        "aws_requests": dict(requests.by_action),
        "aws_requests_by_caller": dict(requests.by_caller),
        "aws_requests_by_caller_action": dict(requests.by_caller_action),
        "sqs_event_source_receives": {"local": requests.runtime_receives, "priced": modelled},
    }


def row_basis(
    functions: dict[str, cost_model.FunctionUse], rows: int, api_functions: set[str]
) -> cost_model.RowBasis:
    """Per-row Lambda figures for the alternatives, from this run: the worker's time per row (it
    creates the runs), the webhook's time per callback and the recorder's per row (it fetches the
    outputs); the per-batch states are spread over this run's one batch."""

    def per_row(fid: str) -> cost_model.FunctionUse:
        use = functions.get(fid, cost_model.FunctionUse(0, 0, 512))
        return cost_model.FunctionUse(1, max(1, math.ceil(use.billed_ms / rows)), use.memory_mb)

    api = [functions[f] for f in api_functions if f in functions and functions[f].invocations]
    relay = api[0].per_invocation() if api else cost_model.FunctionUse(1, 20, 512)
    return cost_model.RowBasis(
        create_run=per_row("WorkerFunction"),
        relay=relay,
        fetch_outputs=per_row("RecorderFunction"),
        rows_per_batch=rows,
    )


def report(result: dict[str, Any]) -> None:
    rows = result["rows"]
    print(f"cost run: {rows} rows in {result['seconds']:.0f} s")
    for design, items in result["breakdown"].items():
        parts = ", ".join(f"{k} {v:.3f}" for k, v in items.items() if k != "total")
        print(f"  {design:15s} ${items['total']:.2f} per 1M rows  ({parts})")
    print(
        f"  DynamoDB: {result['dynamodb_wru_per_row']:.3f} WRU/row,"
        f" {result['dynamodb_rru_per_row']:.3f} RRU/row"
    )
    callers = result.get("aws_requests_by_caller", {})
    print(
        f"  {'function':24s} {'invocations/row':>15s} {'billed ms/inv':>13s} {'memory MB':>9s}"
        f" {'GB-s/row':>9s} {'$/1M rows':>9s} {'AWS req/row':>11s} {'CPU ms/inv':>10s} {'peak RSS MB':>11s}"
    )
    for fid, f in sorted(result["lambda"].items()):
        use = cost_model.FunctionUse(f["invocations"], f["billed_ms"], f["memory_mb"])
        per_inv = f["billed_ms"] / f["invocations"] if f["invocations"] else 0.0
        print(
            f"  {fid:24s} {f['invocations'] / rows:15.3f} {per_inv:13.1f} {f['memory_mb']:9d}"
            f" {use.gb_seconds / rows:9.5f} {use.usd / rows * cost_model.MILLION:9.3f}"
            f" {callers.get(fid, 0) / rows:11.3f}"
            f" {1000 * f.get('cpu_s', 0.0) / max(1, f['invocations']):10.1f}"
            f" {f.get('peak_rss_mb', 0.0):11.0f}"
        )
    if callers:
        print(f"  {'event sources, the upload':24s} {'':>15s} {'':>13s} {'':>9s} {'':>9s} {'':>9s}", end="")
        print(f" {callers.get('runtime', 0) / rows:11.3f}")
    by_caller_action = result.get("aws_requests_by_caller_action", {})
    if by_caller_action:
        print("  AWS requests per row, by who asks:")
        for what, n in sorted(by_caller_action.items(), key=lambda kv: -kv[1]):
            if n / rows >= 0.001:
                print(f"    {what:48s} {n / rows:7.3f}")
    print(
        "  AWS requests per row: "
        + ", ".join(
            f"{a} {n / rows:.3f}" for a, n in sorted(result["aws_requests"].items(), key=lambda kv: -kv[1])
        )
    )


# What saving outputs changes in a run, read from two runs of the same rows (off, then on): the
# request-priced lines (DynamoDB units, SQS, S3) are counts, the same from run to run, so their
# difference is what saving adds (the saver's S3 PutObject or multipart parts, its ranged GETs of
# the upload, the save queue's sends, receives and deletes, its name claims and transactions);
# Lambda durations on this loaded machine are not (two runs of the same batch differ by more than
# the saver costs), so the Lambda line adds the saver's own invocations at their measured billed
# duration and leaves the other functions at the "off" run's. The media GETs are the provider's,
# not AWS's. The save queue's idle long polls are a standing cost like the other triggered queues'.
SAVED_OUTPUT_LINES = ("dynamodb", "sqs", "s3", "sns", "api_gateway")


def with_outputs_saved(off: dict[str, Any], on: dict[str, Any]) -> dict[str, Any]:
    """USD per 1M rows with outputs saved, beside the figure without (`off`), by what saving adds."""
    without, measured = off["breakdown"]["rowcall"], on["breakdown"]["rowcall"]
    added = {line: measured[line] - without[line] for line in SAVED_OUTPUT_LINES}
    saver = on["lambda"].get("SaverFunction") or {"invocations": 0, "billed_ms": 0, "memory_mb": 512}
    saver_use = cost_model.FunctionUse(saver["invocations"], saver["billed_ms"], saver["memory_mb"])
    added["saver_lambda"] = saver_use.usd * cost_model.MILLION / on["rows"]
    idle_polls = (
        cost_model.ESM_IDLE_POLLERS * cost_model.ESM_RECEIVES_PER_POLLER_HOUR * cost_model.HOURS_PER_MONTH
    )
    added["standing"] = (
        idle_polls * cost_model.SQS_STANDARD_REQUEST.each * cost_model.MILLION / cost_model.MONTHLY_ROWS
    )
    return {
        "without_usd": without["total"],
        "with_usd": without["total"] + sum(added.values()),
        "added_usd": added,
        "saver_billed_ms_per_output": saver_use.billed_ms / max(1, on["outputs_saved"]),
        "saver_aws_requests_per_output": {
            what.removeprefix("SaverFunction "): n / max(1, on["outputs_saved"])
            for what, n in on["aws_requests_by_caller_action"].items()
            if what.startswith("SaverFunction ")
        },
        "measured_on_usd": measured["total"],
    }


def report_saved(figures: dict[str, Any]) -> None:
    added = ", ".join(f"{k} {v:.3f}" for k, v in figures["added_usd"].items())
    print(
        f"  outputs saved: ${figures['with_usd']:.2f} per 1M rows beside ${figures['without_usd']:.2f}"
        f" without ({added}); the 'on' run's own total ${figures['measured_on_usd']:.2f}"
    )
    per_output = ", ".join(f"{k} {v:.2f}" for k, v in figures["saver_aws_requests_per_output"].items())
    billed = figures["saver_billed_ms_per_output"]
    print(f"  saver per output: {billed:.0f} billed ms; AWS requests {per_output}")


if __name__ == "__main__":
    outcome = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 5000)
    report(outcome)
