"""`rowcall` command line: `rowcall up` runs the local stack, `rowcall demo` shows one batch end to end."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from rowcall.models import usd_text
from rowcall_local.child_process import when_parent_gone
from rowcall_local.provider_emulator import IDEMPOTENCY_MODES, ProviderFaults
from rowcall_local.stack import PROJECT_ROOT, LocalStack, StackOptions
from rowcall_local.technique_catalog import Technique, load_catalog

ENV_PREFIX = "ROWCALL_"


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text}: a rate is a fraction within 0..1")
    return value


def _delay_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition(":")
    try:
        bounds = (int(low), int(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: expected MIN:MAX milliseconds") from None
    if not 0 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"{text}: expected 0 <= MIN <= MAX")
    return bounds


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text}: must be >= {minimum}")
        return value

    return parse


def _crash_spec(text: str) -> dict[str, float]:
    """FUNCTION:SECONDS, or several separated by commas (each function killed once)."""
    spec: dict[str, float] = {}
    for part in text.split(","):
        function, _, seconds = part.strip().partition(":")
        try:
            spec[function] = _positive_seconds(seconds)
        except (ValueError, argparse.ArgumentTypeError):
            raise argparse.ArgumentTypeError(
                f"{part}: expected FUNCTION:SECONDS[,FUNCTION:SECONDS], e.g. WorkerFunction:2"
            ) from None
        if not function:
            raise argparse.ArgumentTypeError(f"{part}: expected FUNCTION:SECONDS, e.g. WorkerFunction:2")
    return spec


def _crash_write_spec(text: str) -> dict[str, str]:
    """FUNCTION:TEXT (the text may itself hold colons and spaces)."""
    function, _, needle = text.partition(":")
    if not function.strip() or not needle:
        raise argparse.ArgumentTypeError(f"{text}: expected FUNCTION:TEXT, e.g. WorkerFunction:#n <= :limit")
    return {function.strip(): needle}


def _positive_seconds(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text}: must be > 0")
    return value


def _usd(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text}: not a number of USD") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number >= 0")
    return value


def _catalog(text: str) -> tuple[Technique, ...]:
    try:
        return load_catalog(Path(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _idempotency_mode(text: str) -> str:
    if text not in IDEMPOTENCY_MODES:
        raise argparse.ArgumentTypeError(f"{text}: expected one of {', '.join(IDEMPOTENCY_MODES)}")
    return text


def _switch(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"{text}: expected on or off")


@dataclass(frozen=True)
class _Flag:
    name: str
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None


STACK_FLAGS = (
    _Flag("state-dir", Path, "where stack.json and logs/ go (default .rowcall)", "DIR"),
    _Flag("provider-delay-ms", _delay_range, "provider run duration range", "MIN:MAX"),
    _Flag("provider-fail-rate", _rate, "fraction of runs that end failed", "RATE"),
    _Flag("provider-429-rate", _rate, "fraction of run creates answered 429", "RATE"),
    _Flag("provider-5xx-rate", _rate, "fraction of run creates answered 5xx", "RATE"),
    _Flag("provider-duplicate-callback-rate", _rate, "fraction of callbacks sent twice", "RATE"),
    _Flag("provider-drop-callback-rate", _rate, "fraction of callbacks never sent", "RATE"),
    _Flag("provider-credits", _at_least(0), "runs the provider accepts before 402 insufficient_credits", "N"),
    _Flag(
        "provider-output-bytes", _at_least(0), "size of each output the provider serves (default 16384)", "N"
    ),
    _Flag(
        "provider-output-ttl-s",
        _positive_seconds,
        "outputs vanish from the provider's URLs this long after their run finished (default: never)",
        "SECONDS",
    ),
    _Flag(
        "provider-techniques",
        _catalog,
        "JSON list of technique definitions the emulator serves and checks run inputs against",
        "FILE",
    ),
    _Flag("provider-run-cost", _usd, "run_cost of the emulator's open techniques (default 0.04)", "USD"),
    _Flag("daily-budget-usd", _usd, "most run_cost started per UTC day (template DailyBudgetUsd)", "USD"),
    _Flag(
        "provider-idempotency",
        _idempotency_mode,
        "a repeated idempotency key: duplicate = 409 within 2 h (default); replay = the original run "
        "within 24 h, 422 idempotency_conflict for another body",
        "replay|duplicate",
    ),
    _Flag(
        "max-in-flight",
        _at_least(1),
        "cap on runs started but not finished, across all batches (template MaxInFlight)",
        "N",
    ),
    _Flag(
        "reconcile-after-s",
        _positive_seconds,
        "silence before the safety net asks for a run (template ReconcileAfterSeconds)",
        "SECONDS",
    ),
    _Flag(
        "callback-deadline-s",
        _positive_seconds,
        "a run still unknown this long after its start fails with callback_timeout",
        "SECONDS",
    ),
    _Flag("chunk-rows", _at_least(1), "rows per chunk message (template ChunkRows)", "N"),
    _Flag(
        "crash-once",
        _crash_spec,
        "test only: kill FUNCTION's first invocation still running after SECONDS (a crash half way)",
        "FUNCTION:SECONDS",
    ),
    _Flag(
        "crash-after-write",
        _crash_write_spec,
        "test only: kill FUNCTION's instance right after a DynamoDB write naming TEXT succeeds (once)",
        "FUNCTION:TEXT",
    ),
    _Flag(
        "schedule-every-s",
        _positive_seconds,
        "local only: fire scheduled functions (the safety net) this often instead of the template's rate",
        "SECONDS",
    ),
    _Flag("max-rows", _at_least(1), "most data rows per batch (template MaxRows)", "N"),
    _Flag("max-bytes", _at_least(1), "largest CSV accepted, bytes (template MaxBytes)", "N"),
    _Flag(
        "aws-fault-rate",
        _rate,
        "fraction of the functions' AWS requests answered with AWS's errors under load",
        "RATE",
    ),
    _Flag(
        "xray-sample-rate",
        _rate,
        "test only: fraction of invocations X-Ray samples (default: Lambda's rule, 1 a second then 5%%)",
        "RATE",
    ),
    _Flag(
        "enforce-iam",
        _switch,
        "run each function with its own role's credentials; the embedded AWS denies what the role lacks",
        "on|off",
    ),
)

_FAULT_FIELDS = {
    "provider_delay_ms": "delay_ms",
    "provider_fail_rate": "fail_rate",
    "provider_429_rate": "rate_429",
    "provider_5xx_rate": "rate_5xx",
    "provider_duplicate_callback_rate": "duplicate_callback_rate",
    "provider_drop_callback_rate": "drop_callback_rate",
    "provider_credits": "credits",
    "provider_output_bytes": "output_bytes",
    "provider_output_ttl_s": "output_ttl_s",
    "provider_techniques": "techniques",
    "provider_run_cost": "run_cost_usd",
    "provider_idempotency": "idempotency",
}


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.upper().replace("-", "_")


def _add_stack_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "stack", "each flag also reads ROWCALL_<FLAG> from the environment; the flag wins"
    )
    for flag in STACK_FLAGS:
        env = env_name(flag.name)
        raw = os.environ.get(env, "")
        try:
            default = flag.parse(raw) if raw else None
        except (argparse.ArgumentTypeError, ValueError) as exc:
            parser.error(f"{env}={raw}: {exc}")
        if flag.name == "state-dir" and default is None:
            default = Path(".rowcall")
        group.add_argument(
            f"--{flag.name}",
            type=flag.parse,
            default=default,
            metavar=flag.metavar,
            help=f"{flag.help} [{env}]",
        )


def stack_options(args: argparse.Namespace) -> StackOptions:
    faults = {
        field: getattr(args, attr) for attr, field in _FAULT_FIELDS.items() if getattr(args, attr) is not None
    }
    return StackOptions(
        state_dir=args.state_dir,
        provider_faults=ProviderFaults(**faults),
        max_rows=args.max_rows,
        max_bytes=args.max_bytes,
        max_in_flight=args.max_in_flight,
        reconcile_after_s=args.reconcile_after_s,
        callback_deadline_s=args.callback_deadline_s,
        chunk_rows=args.chunk_rows,
        schedule_every_s=args.schedule_every_s,
        crash_once=args.crash_once or {},
        crash_after_write=args.crash_after_write or {},
        aws_fault_rate=args.aws_fault_rate or 0.0,
        enforce_iam=bool(args.enforce_iam),
        parameters={}
        if args.daily_budget_usd is None
        else {"DailyBudgetUsd": usd_text(args.daily_budget_usd)},
        xray_sample_rate=args.xray_sample_rate,
    )


def _until_signalled() -> threading.Event:
    """Set on Ctrl-C, SIGTERM, the terminal hanging up, or the process that started this one going
    away (a killed test run, a CI time limit): a stack nobody can stop any more stops itself."""
    stop = threading.Event()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGHUP, handle)
    when_parent_gone(stop.set)
    return stop


def _up(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # httpx logs request URLs at INFO; run callbacks carry their token in the URL.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    stop = _until_signalled()
    stack = LocalStack(stack_options(args))
    try:
        stack.start()
        print(f"rowcall: ready {stack.stack_json}", flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        stack.stop()
    return 0


def _demo(args: argparse.Namespace) -> int:
    from rowcall_local.demo import run_demo

    return run_demo(args.csv, stack_options(args), timeout_s=args.timeout)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rowcall", description="rowcall's Docker-free local stack.")
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser(
        "up",
        help="run the local stack until Ctrl-C",
        description="Run the local stack in the foreground until SIGINT/SIGTERM. Writes "
        "<state-dir>/stack.json and prints `rowcall: ready <path>` when ready.",
    )
    _add_stack_flags(up)
    up.set_defaults(run=_up)
    demo = commands.add_parser(
        "demo",
        help="start the stack, run one CSV through it, show the result, stop",
        description="Start the stack, upload a CSV, show live progress, print the signed on-done and "
        "where the results are, stop the stack.",
    )
    demo.add_argument(
        "--csv",
        type=Path,
        default=PROJECT_ROOT / "events" / "sample.csv",
        help="CSV to upload (default events/sample.csv)",
    )
    demo.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait for the batch (default 300)"
    )
    _add_stack_flags(demo)
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
