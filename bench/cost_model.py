"""What 1M rows cost on AWS: rowcall from measured usage, and three designs a user would pick instead.

rowcall's figure is priced from what one local run actually asked of AWS (bench/cost.py counts it):
every Lambda invocation with its measured handler duration at the template's memory size, every
DynamoDB unit the capacity meter billed, every SQS/S3/SNS request, every HTTP API request. The
three alternatives are models, priced per row from the counts written out below; where one of
them needs a figure only a run can give (how long a Lambda takes to create a run, or to relay a
callback), it takes rowcall's measured one, so the comparison is like for like.

Standing costs - what runs whether or not rows arrive - are not per row. They are priced per month
and spread over MONTHLY_ROWS (an assumption, said in the README): the safety net's schedule, and
the SQS event source mappings' long polls of idle queues.

Prices: bench/prices.py. Free tiers are left out (they are per account, not per row).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.prices import (
    API_GATEWAY_HTTP_REQUEST,
    DYNAMODB_READ_UNIT,
    DYNAMODB_WRITE_UNIT,
    LAMBDA_ARM_GB_SECOND,
    LAMBDA_DURABLE_OPERATION,
    LAMBDA_REQUEST,
    S3_READ_REQUEST,
    S3_WRITE_REQUEST,
    SNS_PUBLISH,
    SQS_FIFO_REQUEST,
    SQS_STANDARD_REQUEST,
    STEP_FUNCTIONS_STANDARD_TRANSITION,
)

MILLION = 1_000_000
HOURS_PER_MONTH = 730  # AWS's own convention in its pricing examples
MONTHLY_ROWS = 1_000_000
"""Assumption: the stack processes 1M rows a month; standing costs are spread over them."""

SQS_PAYLOAD_CHUNK = 64 * 1024  # one billed request per 64 KB of a request's payload
ESM_IDLE_POLLERS = 5
"""Assumption: an SQS event source mapping keeps five long pollers on an idle queue (Lambda's
documented starting concurrency for SQS), each a 20-second ReceiveMessage: 3 requests a minute."""
ESM_RECEIVES_PER_POLLER_HOUR = 60 * 60 / 20


@dataclass(frozen=True)
class FunctionUse:
    """One function's invocations and billed duration over a run, at its configured memory."""

    invocations: int
    billed_ms: int
    memory_mb: int

    @property
    def gb_seconds(self) -> float:
        # Lambda bills configured memory x duration; GB here is 1,024 MB as Lambda counts it.
        return self.billed_ms / 1000 * self.memory_mb / 1024

    @property
    def usd(self) -> float:
        return self.invocations * LAMBDA_REQUEST.each + self.gb_seconds * LAMBDA_ARM_GB_SECOND.each

    def per_invocation(self) -> FunctionUse:
        """The average invocation (billed ms rounded up, as a single invocation is billed)."""
        if not self.invocations:
            return FunctionUse(0, 0, self.memory_mb)
        return FunctionUse(1, math.ceil(self.billed_ms / self.invocations), self.memory_mb)


@dataclass(frozen=True)
class Usage:
    """Everything a run of `rows` rows asked of AWS, counted on the local stack."""

    rows: int
    functions: Mapping[str, FunctionUse]
    dynamodb_write_units: float
    dynamodb_read_units: float
    sqs_standard_requests: float
    """Already counted per 64 KB of payload (sqs_billed_requests)."""
    sqs_fifo_requests: float
    s3_write_requests: int
    s3_read_requests: int
    sns_publishes: int
    api_requests: int
    """HTTP API requests: the provider's callbacks and the user's API calls."""


def sqs_billed_requests(payload_bytes: int) -> int:
    """One SQS request is billed per 64 KB chunk of its payload, at least one."""
    return max(1, math.ceil(payload_bytes / SQS_PAYLOAD_CHUNK))


def line_items(usage: Usage) -> dict[str, float]:
    """USD for the whole run, by what is billed."""
    return {
        "lambda": sum(f.usd for f in usage.functions.values()),
        "dynamodb": usage.dynamodb_write_units * DYNAMODB_WRITE_UNIT.each
        + usage.dynamodb_read_units * DYNAMODB_READ_UNIT.each,
        "sqs": usage.sqs_standard_requests * SQS_STANDARD_REQUEST.each
        + usage.sqs_fifo_requests * SQS_FIFO_REQUEST.each,
        "s3": usage.s3_write_requests * S3_WRITE_REQUEST.each + usage.s3_read_requests * S3_READ_REQUEST.each,
        "sns": usage.sns_publishes * SNS_PUBLISH.each,
        "api_gateway": usage.api_requests * API_GATEWAY_HTTP_REQUEST.each,
    }


@dataclass(frozen=True)
class Standing:
    """What the stack costs per month with no rows at all."""

    safety_net: FunctionUse
    """One average safety-net invocation (measured)."""
    safety_net_per_hour: float = 60  # template.yaml: rate(1 minute)
    idle_standard_queues: int = 2  # the chunk and done queues have Lambda triggers
    idle_fifo_queues: int = 1  # the finished-run queue

    def usd_per_month(self) -> float:
        schedule = self.safety_net.usd * self.safety_net_per_hour * HOURS_PER_MONTH
        receives = ESM_IDLE_POLLERS * ESM_RECEIVES_PER_POLLER_HOUR * HOURS_PER_MONTH
        polls = receives * (
            self.idle_standard_queues * SQS_STANDARD_REQUEST.each
            + self.idle_fifo_queues * SQS_FIFO_REQUEST.each
        )
        return schedule + polls


def rowcall_per_million(
    usage: Usage, standing: Standing, monthly_rows: int = MONTHLY_ROWS
) -> dict[str, float]:
    """USD per 1M rows by line item, the standing costs spread over `monthly_rows` a month."""
    scale = MILLION / usage.rows
    items = {name: usd * scale for name, usd in line_items(usage).items()}
    items["standing"] = standing.usd_per_month() * MILLION / monthly_rows
    items["total"] = sum(items.values())
    return items


# --- the alternatives, per row ------------------------------------------------------------------


@dataclass(frozen=True)
class RowBasis:
    """Per-row figures every design shares, taken from rowcall's measured run."""

    create_run: FunctionUse
    """A Lambda invocation that creates one run at the provider (rowcall's worker time per row)."""
    relay: FunctionUse
    """A Lambda invocation behind the HTTP API that takes one callback (rowcall's webhook, per call)."""
    fetch_outputs: FunctionUse | None = None
    """A Lambda invocation that fetches one finished run's outputs (the FLORA webhook does not carry
    them): rowcall's recorder time per row. None: as long as creating a run."""
    rows_per_batch: int = 5000
    """What the per-batch states (the parent's) are spread over: the measured batch."""
    outcome_write_units: float = 1.0
    """Recording a row's outcome somewhere durable: one 1 KB DynamoDB write."""

    @property
    def fetch(self) -> FunctionUse:
        return self.fetch_outputs if self.fetch_outputs is not None else self.create_run


# Step Functions: the state machine in bench/peers/step_functions_rowcall.asl.json, a Distributed Map
# over the CSV (ItemReader) with a Standard child execution per row and a ResultWriter. Its state
# transitions are counted from the file by AWS's billing rules:
# - "Step Functions counts a state transition each time a step of your workflow is executed ...
#   including retries" (https://aws.amazon.com/step-functions/pricing/);
# - in Distributed mode, one state transition is charged for each child workflow execution the Map
#   state starts, on top of the child's own (developer guide, "Transitions",
#   https://docs.aws.amazon.com/step-functions/latest/dg/concepts-transitions.html, section
#   "Transitions in Distributed Map state").
# Per row on the path every row takes: 1 (the child started) + each child state executed until End
# (CreateRunAndWait, FetchOutputs); the parent's states (Rows, WriteResultsCsv, NotifyDone) once per
# batch. Retries (provider 429s) and the lost-webhook path (AskProvider, RunFinished, WaitForRun) add
# transitions only when they happen: not counted, so the figure is still a floor.
SFN_ASL = Path(__file__).with_name("peers") / "step_functions_rowcall.asl.json"


def happy_path(states: Mapping[str, Any], start: str) -> list[str]:
    """The states executed from `start` following each state's `Next` until one ends the execution."""
    path: list[str] = []
    name: str | None = start
    while name is not None:
        if name in path:
            raise ValueError(f"the path loops at {name}")
        path.append(name)
        state = states[name]
        if state.get("End") or state["Type"] in ("Succeed", "Fail"):
            break
        name = state.get("Next")
        if name is None:
            raise ValueError(f"{path[-1]} neither ends nor names a Next state")
    return path


@dataclass(frozen=True)
class SfnTransitions:
    child_per_row: list[str]
    parent_per_batch: list[str]

    def per_row(self, rows_per_batch: int) -> float:
        # +1: the child execution the Distributed Map starts, billed as a transition of its own.
        return 1 + len(self.child_per_row) + len(self.parent_per_batch) / rows_per_batch


def sfn_transitions(asl: Mapping[str, Any] | None = None) -> SfnTransitions:
    machine = asl if asl is not None else json.loads(SFN_ASL.read_text(encoding="utf-8"))
    parent = happy_path(machine["States"], machine["StartAt"])
    (map_state,) = [machine["States"][n] for n in parent if machine["States"][n]["Type"] == "Map"]
    processor = map_state["ItemProcessor"]
    return SfnTransitions(happy_path(processor["States"], processor["StartAt"]), parent)


def step_functions_per_row(basis: RowBasis) -> dict[str, float]:
    transitions = sfn_transitions().per_row(basis.rows_per_batch)
    return {
        "state_transitions": transitions * STEP_FUNCTIONS_STANDARD_TRANSITION.each,
        "create_run_lambda": basis.create_run.usd,
        "relay_api": API_GATEWAY_HTTP_REQUEST.each,
        "relay_lambda": basis.relay.usd,  # its SendTaskSuccess call is not billed by Step Functions
        "fetch_outputs_lambda": basis.fetch.usd,
        # The outcome is the child's output, written by the ResultWriter (a few S3 PUTs per batch):
        # no per-row write of its own.
    }


# Lambda durable functions, one durable execution per row, started by an asynchronous invoke per row:
#     ctx.step(create_run); result = ctx.wait_for_callback(submit); ctx.step(fetch_outputs); count
# Durable operations per row (each billed, https://aws.amazon.com/lambda/pricing/): the execution
# start, the create step, wait_for_callback's two (the callback operation and the step that submits
# its id to the provider: the Python SDK's wait_for_callback is create_callback + a step), the fetch
# step = 5. Lambda invocations per row: 2 (the first, which suspends at the callback; the replay the
# callback resumes, which skips the checkpointed steps and runs the fetch): the first as long as
# creating a run, the second as long as fetching outputs. Durable executions have no fan-in, so
# knowing the batch is done takes a counter write per row (as rowcall's). Data written/retained:
# left out, rate not found (prices.py).
DURABLE_OPERATIONS_PER_ROW = 5
DURABLE_INVOCATIONS_PER_ROW = 2


def durable_per_row(basis: RowBasis) -> dict[str, float]:
    return {
        "durable_operations": DURABLE_OPERATIONS_PER_ROW * LAMBDA_DURABLE_OPERATION.each,
        "function_lambda": basis.create_run.usd + basis.fetch.usd,
        "relay_api": API_GATEWAY_HTTP_REQUEST.each,
        "relay_lambda": basis.relay.usd,
        "outcome_write": basis.outcome_write_units * DYNAMODB_WRITE_UNIT.each,
    }


@dataclass(frozen=True)
class PollingWorker:
    """A Lambda that creates runs and polls them: invocations of `invocation_s`, polling every
    `poll_every_s`, `runs_per_worker` runs tracked at once (the batch-from-CSV client's
    concurrency), a run lasting `run_s` (assumption: a typical image technique run). Between
    invocations its state rides an SQS message: one send, one receive, one delete each."""

    run_s: float = 30.0
    invocation_s: float = 30.0
    poll_every_s: float = 2.0
    runs_per_worker: int = 4
    memory_mb: int = 128  # the smallest: it waits on HTTP, and idle waiting is billed by memory

    def per_row(self, basis: RowBasis) -> dict[str, float]:
        # The worker is alive for as long as its runs last; `runs_per_worker` share its time.
        busy_s = self.run_s / self.runs_per_worker
        invocations = busy_s / self.invocation_s
        gb_seconds = busy_s * self.memory_mb / 1024
        return {
            "worker_lambda": invocations * LAMBDA_REQUEST.each + gb_seconds * LAMBDA_ARM_GB_SECOND.each,
            "handoff_sqs": invocations * 3 * SQS_STANDARD_REQUEST.each,
            "create_run_lambda": basis.create_run.usd,
            "outcome_write": basis.outcome_write_units * DYNAMODB_WRITE_UNIT.each,
        }

    def provider_polls_per_row(self) -> float:
        return self.run_s / self.poll_every_s


def per_million(items: Mapping[str, float]) -> dict[str, float]:
    scaled = {name: usd * MILLION for name, usd in items.items()}
    scaled["total"] = sum(scaled.values())
    return scaled
