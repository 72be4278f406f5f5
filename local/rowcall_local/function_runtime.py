"""Inside one function instance (a child process): load the handler once, serve invocations.

Plays the part of Lambda's Python runtime: the environment, `sys.path`, working directory and
context object are what the handler would get on AWS, with AWS endpoints pointed at moto.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from rowcall_local import crash_points, profiling
from rowcall_local.child_process import detach_from_terminal_signals, exit_now, redirect_output
from rowcall_local.xray_daemon import TRACE_HEADER_ENV, Sampler, TraceContext, send_function_segment

Handler = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a child needs to become an execution environment of one function."""

    function_id: str
    function_name: str
    function_arn: str
    handler: str
    code_dir: str
    layer_dirs: tuple[str, ...]
    environment: dict[str, str]
    memory_mb: int
    timeout_s: int
    log_path: str
    xray_sample_rate: float | None = None
    """Fraction of invocations sampled for X-Ray; None is Lambda's default rule (xray_daemon.Sampler)."""
    crash_after_write: tuple[str, str] | None = None
    """Test-only (text, marker file): killed after a DynamoDB write naming the text (crash_points.py)."""

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"


class LambdaContext:
    """The attributes and method of Lambda's Python context object that handlers use."""

    function_version = "$LATEST"

    def __init__(self, spec: InstanceSpec, request_id: str, log_stream_name: str) -> None:
        self.function_name = spec.function_name
        self.memory_limit_in_mb = spec.memory_mb
        self.invoked_function_arn = spec.function_arn
        self.aws_request_id = request_id
        self.log_group_name = spec.log_group_name
        self.log_stream_name = log_stream_name
        self._deadline = time.monotonic() + spec.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def error_payload(exc: BaseException) -> dict[str, Any]:
    """Lambda's shape for an unhandled error."""
    return {
        "errorType": type(exc).__name__,
        "errorMessage": str(exc),
        "stackTrace": traceback.format_exception(exc),
    }


def _load_handler(spec: InstanceSpec) -> Handler:
    module_name, _, attr = spec.handler.rpartition(".")
    module = importlib.import_module(module_name)
    handler: Handler = getattr(module, attr)
    return handler


def serve(conn: Connection, spec: InstanceSpec) -> None:
    """Child process entry: init, report ready, then one invocation at a time until told to stop."""
    detach_from_terminal_signals()
    redirect_output(Path(spec.log_path))
    profile_dir = profiling.directory()  # read before the environment is replaced
    # Exactly the environment the runtime was given: spawn inherits the parent's whole
    # environment, and a developer's AWS_PROFILE or AWS_ENDPOINT_URL_S3 must not reach a handler.
    os.environ.clear()
    os.environ.update(spec.environment)
    os.chdir(spec.code_dir)
    sys.path[:0] = [spec.code_dir, *spec.layer_dirs]
    if spec.crash_after_write is not None:
        crash_points.install(spec.crash_after_write[0], Path(spec.crash_after_write[1]))
    log_stream = f"{time.strftime('%Y/%m/%d')}/[$LATEST]{os.getpid()}"
    handler: Handler | None = None
    init_error: dict[str, Any] | None = None
    try:
        handler = _load_handler(spec)
    except Exception as exc:  # Lambda reports init errors on invoke and tries again on a new one
        init_error = error_payload(exc)
        traceback.print_exc()
    conn.send(("ready", init_error))
    profile = profiling.InvocationProfile(spec.function_id, profile_dir) if profile_dir else None
    sampler = Sampler(spec.xray_sample_rate)
    while True:
        try:
            message = conn.recv()
        except EOFError:
            message = None
        if message is None:
            if profile is not None:
                profile.dump()
            exit_now()
        request_id, event = message
        if handler is None:
            try:
                handler = _load_handler(spec)
            except Exception as exc:
                traceback.print_exc()
                conn.send(("error", error_payload(exc), 0.0))
                continue
        print(f"START RequestId: {request_id} Version: $LATEST", flush=True)
        started = time.monotonic()
        started_at = time.time()
        # Lambda's part of tracing: the sampling decision and the trace header, per invocation.
        trace = TraceContext.new(sampler.sampled(started_at), started_at)
        os.environ[TRACE_HEADER_ENV] = trace.header
        try:
            with profile or contextlib.nullcontext():
                result = handler(event, LambdaContext(spec, request_id, log_stream))
            reply: tuple[str, Any] = ("ok", json.loads(json.dumps(result)))
        except Exception as exc:
            traceback.print_exc()
            reply = ("error", error_payload(exc))
        duration_ms = (time.monotonic() - started) * 1000
        send_function_segment(
            trace, spec.function_name, request_id, started_at, time.time(), error=reply[0] == "error"
        )
        print(f"END RequestId: {request_id}", flush=True)
        print(f"REPORT RequestId: {request_id}\tDuration: {duration_ms:.2f} ms", flush=True)
        # The handler's own duration travels back with its reply: Lambda bills this, not the
        # time the event spent in the pipe or waiting for an idle instance.
        conn.send((*reply, duration_ms))
