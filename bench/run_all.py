"""`make bench`: every benchmark in one go; writes bench/results.json and prints each figure beside its goal.

    .venv/bin/python bench/run_all.py [--out bench/results.json]

Each piece also runs alone (bench/cost.py, bench/polling_baseline.py, bench/ingest_bench.py,
bench/e2e_throughput.py, bench/hot_items.py, bench/sweep_scale.py). A piece that fails is reported
and its keys are left out of the JSON rather than stopping the others; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import io
import json
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).with_name("results.json")

REQUIRED_KEYS = (
    "cost_per_million_rows_usd",
    "sfn_cost_per_million_rows_usd",
    "durable_cost_per_million_rows_usd",
    "polling_lambda_cost_per_million_rows_usd",
    "dynamodb_wru_per_row",
    "provider_requests_per_row",
    "provider_polls_per_row",
    "polling_provider_requests_per_row",
    "on_done_latency_ms_p95",
    "polling_done_latency_ms_p95",
    "ingest_ratio_vs_csv_reader",
    "ingest_peak_rss_mb_100mb",
    "ingest_peak_rss_mb_1gib",
    "e2e_rows_per_s",
    "moto_ops_per_s",
    "aws_ops_per_row",
    "hot_item_max_writes_per_s",
    "cap_utilisation_fast",
    "cap_utilisation_slow",
    "aws_requests_per_row_capped",
    "aws_requests_waiting_first_10s",
    "aws_requests_waiting_next_20s",
    "sweep_read_units_500k_running",
    "sweep_seconds_500k_running",
    "cost_per_million_rows_saved_outputs_usd",
    "saved_outputs_per_s_16kib",
    "saved_mb_per_s_16kib",
    "saved_outputs_per_s_50mib",
    "saved_mb_per_s_50mib",
    "saver_peak_rss_mb_1gib",
    "reuse_provider_requests_per_row",
    "reuse_aws_requests_per_row",
    "fresh_aws_requests_per_row",
    "flora_provider_requests_per_row",
    "replicate_creates_per_row",
    "replicate_gets_per_row",
    "replicate_polls_per_row",
)


@dataclass(frozen=True)
class Goal:
    key: str
    label: str
    check: Callable[[Mapping[str, float]], bool] | None
    goal: str


def _at_most(key: str, limit: float) -> Callable[[Mapping[str, float]], bool]:
    return lambda r: r[key] <= limit


def _at_least(key: str, limit: float) -> Callable[[Mapping[str, float]], bool]:
    return lambda r: r[key] >= limit


GOALS = (
    Goal(
        "cost_per_million_rows_usd",
        "rowcall cost per 1M rows (USD)",
        _at_most("cost_per_million_rows_usd", 2.50),
        "<= 2.50",
    ),
    Goal(
        "sfn_cost_per_million_rows_usd",
        "Step Functions design per 1M rows (USD)",
        lambda r: r["sfn_cost_per_million_rows_usd"] >= 20 * r["cost_per_million_rows_usd"],
        ">= 20x rowcall",
    ),
    Goal(
        "durable_cost_per_million_rows_usd", "Lambda durable functions per 1M rows (USD)", None, "(compared)"
    ),
    Goal(
        "polling_lambda_cost_per_million_rows_usd",
        "polling worker Lambda per 1M rows (USD)",
        None,
        "(compared)",
    ),
    Goal(
        "dynamodb_wru_per_row",
        "DynamoDB write units per row",
        _at_most("dynamodb_wru_per_row", 2.0),
        "<= 2.0",
    ),
    Goal(
        "provider_requests_per_row",
        "rowcall provider requests per row",
        _at_most("provider_requests_per_row", 2.0),
        "<= 2.00",
    ),
    Goal(
        "provider_polls_per_row",
        "rowcall provider polls per row",
        _at_most("provider_polls_per_row", 0.0),
        "0",
    ),
    Goal("polling_provider_requests_per_row", "polling client provider requests per row", None, "(compared)"),
    Goal(
        "on_done_latency_ms_p95",
        "last callback -> on-done delivered p95 (ms)",
        _at_most("on_done_latency_ms_p95", 500),
        "<= 500",
    ),
    Goal(
        "polling_done_latency_ms_p95", "polling: last run finished -> known done p95 (ms)", None, "(compared)"
    ),
    Goal(
        "ingest_ratio_vs_csv_reader",
        "ingest parse path rows/s / csv.reader rows/s",
        _at_least("ingest_ratio_vs_csv_reader", 0.6),
        ">= 0.6",
    ),
    Goal(
        "ingest_peak_rss_mb_100mb",
        "ingest peak RSS, 100 MB file (MB)",
        _at_most("ingest_peak_rss_mb_100mb", 200),
        "<= 200",
    ),
    Goal(
        "ingest_peak_rss_mb_1gib",
        "ingest peak RSS, 1 GiB file (MB)",
        lambda r: (
            r["ingest_peak_rss_mb_1gib"] <= 200
            and r["ingest_peak_rss_mb_1gib"] <= 1.25 * r["ingest_peak_rss_mb_100mb"]
        ),
        "<= 200 and flat",
    ),
    Goal("e2e_rows_per_s", "end to end rows/s, 20,000 rows", _at_least("e2e_rows_per_s", 100), ">= 100"),
    Goal("moto_ops_per_s", "moto operations/s in that run", None, "(explains)"),
    Goal("aws_ops_per_row", "AWS operations per row", _at_most("aws_ops_per_row", 2.3), "<= 2.3"),
    Goal(
        "e2e_ceiling_rows_per_s",
        "embedded AWS ceiling: moto ops/CPU-s / ops per row",
        None,
        "(explains)",
    ),
    Goal(
        "e2e_share_of_ceiling",
        "end to end rows/s / that ceiling",
        _at_least("e2e_share_of_ceiling", 0.9),
        ">= 0.9",
    ),
    Goal(
        "cost_per_million_rows_saved_outputs_usd",
        "rowcall cost per 1M rows, outputs saved (USD)",
        None,
        "(beside the figure without)",
    ),
    Goal("saved_outputs_per_s_16kib", "saver outputs/s, 16 KiB outputs", None, "(measured)"),
    Goal("saved_mb_per_s_16kib", "saver MB/s, 16 KiB outputs", None, "(measured)"),
    Goal("saved_outputs_per_s_50mib", "saver outputs/s, 50 MiB outputs", None, "(measured)"),
    Goal("saved_mb_per_s_50mib", "saver MB/s, 50 MiB outputs", None, "(measured)"),
    Goal(
        "saver_peak_rss_mb_1gib",
        "saver peak RSS, 1 GiB output (MB)",
        _at_most("saver_peak_rss_mb_1gib", 200),
        "<= 200",
    ),
    Goal(
        "hot_item_max_writes_per_s",
        "busiest item writes/s at 10,000 outcomes/s",
        _at_most("hot_item_max_writes_per_s", 1000),
        "<= 1000",
    ),
    Goal(
        "cap_utilisation_fast",
        "runs in flight / cap while rows wait, 0-300 ms runs",
        _at_least("cap_utilisation_fast", 0.9),
        ">= 0.9",
    ),
    Goal(
        "cap_utilisation_slow",
        "runs in flight / cap while rows wait, 5-10 s runs",
        _at_least("cap_utilisation_slow", 0.9),
        ">= 0.9",
    ),
    Goal(
        "aws_requests_per_row_capped",
        "AWS requests per row under the cap",
        lambda r: r["aws_requests_per_row_capped"] <= 1.5 * r["aws_ops_per_row"],
        "<= 1.5x uncapped",
    ),
    Goal("aws_requests_waiting_first_10s", "AWS requests, first 10 s waiting for slots", None, "(compared)"),
    Goal(
        "aws_requests_waiting_next_20s",
        "AWS requests, the next 20 s it waits",
        # Independent of the wait: no more in 20 s than in the first 10 (one sweep may fall in).
        lambda r: r["aws_requests_waiting_next_20s"] <= max(r["aws_requests_waiting_first_10s"], 60),
        "not growing",
    ),
    Goal(
        "sweep_read_units_500k_running",
        "sweep read units, 500k-row batch mid-run",
        _at_most("sweep_read_units_500k_running", 2000),
        "<= 2000",
    ),
    Goal("sweep_seconds_500k_running", "that sweep's duration (s)", None, "(explains)"),
    Goal(
        "reuse_provider_requests_per_row",
        "reuse batch: provider requests per row",
        _at_most("reuse_provider_requests_per_row", 0.0),
        "0.00",
    ),
    Goal(
        "reuse_aws_requests_per_row",
        "reuse batch: AWS requests per row",
        lambda r: r["reuse_aws_requests_per_row"] <= r["fresh_aws_requests_per_row"],
        "<= fresh batch's",
    ),
    Goal("fresh_aws_requests_per_row", "fresh batch (same CSV): AWS requests per row", None, "(compared)"),
    Goal(
        "flora_provider_requests_per_row",
        "FLORA provider requests per row (beside Replicate)",
        _at_most("flora_provider_requests_per_row", 2.0),
        "<= 2.00",
    ),
    Goal(
        "replicate_creates_per_row",
        "Replicate creates per row",
        _at_most("replicate_creates_per_row", 1.0),
        "1.00",
    ),
    Goal(
        "replicate_gets_per_row",
        "Replicate prediction GETs per row (webhook has outputs)",
        _at_most("replicate_gets_per_row", 0.0),
        "0.00",
    ),
    Goal(
        "replicate_polls_per_row",
        "Replicate polls per row",
        _at_most("replicate_polls_per_row", 0.0),
        "0",
    ),
)


# --- the pieces: each returns its figures; imported lazily so one missing module stops nothing ---


# Both runs of the saved-outputs cost: as many rows as outputs saved (one output a row).
SAVED_COST_ROWS = 2000


def _cost() -> dict[str, Any]:
    from bench import cost

    result = cost.measure(5000)
    cost.report(result)
    return result


def _cost_saved_outputs() -> dict[str, Any]:
    """The same rows run twice, outputs off then on (16 KiB each, the emulator's default): what
    saving adds, beside the figure without (bench/cost.py `with_outputs_saved`)."""
    from bench import cost

    off = cost.measure(SAVED_COST_ROWS, save_outputs="off")
    on = cost.measure(SAVED_COST_ROWS, save_outputs="on")
    cost.report(on)
    figures = cost.with_outputs_saved(off, on)
    cost.report_saved(figures)
    return {
        "cost_per_million_rows_saved_outputs_usd": figures["with_usd"],
        "cost_per_million_rows_saved_outputs_without_usd": figures["without_usd"],
        "saved_outputs_cost": figures,
        "saver_lambda": on["lambda"].get("SaverFunction"),
    }


def _saved_outputs() -> dict[str, Any]:
    from bench import saved_outputs_bench

    return saved_outputs_bench.measure()


_background = concurrent.futures.ThreadPoolExecutor(1)
_polling: concurrent.futures.Future[dict[str, float]] | None = None


def _start_polling() -> dict[str, Any]:
    """The polling client spends its time asleep between polls (about 3 requests a second, no
    stack of its own): it runs in the background while the pieces after it measure, which takes
    ~4 minutes off `make bench`. Its own figures are wall time and polling delays, which a
    loaded CPU hardly moves."""
    global _polling
    from bench import polling_baseline

    _polling = _background.submit(polling_baseline.measure_polling, 300, 5)
    return {}


def _callbacks() -> dict[str, Any]:
    from bench import polling_baseline

    return dict(polling_baseline.measure_rowcall(300, 5))


def _join_polling() -> dict[str, Any]:
    if _polling is None:
        from bench import polling_baseline

        return dict(polling_baseline.measure_polling(300, 5))
    return dict(_polling.result(timeout=1200))


def _ingest() -> dict[str, Any]:
    from bench import ingest_bench

    return dict(ingest_bench.measure())


def _e2e() -> dict[str, Any]:
    """bench/e2e_throughput.py over 20,000 rows with an instant provider. Its own three keys as
    they are; anything else it reports under an e2e_ name, so that it cannot overwrite another
    piece's figure of the same name: the on-done goal reads the callbacks-vs-polling run's,
    measured with real run durations."""
    from bench import e2e_throughput

    got = dict(e2e_throughput.measure(20000))
    own = ("e2e_rows_per_s", "moto_ops_per_s", "aws_ops_per_row")
    return {k if k in own or k.startswith("e2e_") else f"e2e_{k}": v for k, v in got.items()}


def _admission() -> dict[str, Any]:
    from bench import admission_bench

    return dict(admission_bench.measure())


def _hot_items() -> dict[str, Any]:
    from bench import hot_items

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        hot_items.main()
    print(out.getvalue(), end="")
    line = next(x for x in out.getvalue().splitlines() if x.startswith("hot_item_max_writes_per_s:"))
    return {"hot_item_max_writes_per_s": float(line.split()[1])}


def _sweep() -> dict[str, Any]:
    """In a child process: it installs the embedded AWS's meter and serves moto in-process."""
    import subprocess

    script = Path(__file__).with_name("sweep_scale.py")
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, check=True, timeout=1800
    )
    print(done.stdout, end="")
    figures: dict[str, Any] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(": ")
        if key in ("sweep_read_units_500k_running", "sweep_seconds_500k_running"):
            figures[key] = float(value)
    return figures


def _reuse() -> dict[str, Any]:
    from bench import reuse_bench

    return dict(reuse_bench.measure(1000))


def _provider_requests() -> dict[str, Any]:
    from bench import provider_requests

    return dict(provider_requests.measure(200))


PIECES: dict[str, Callable[[], dict[str, Any]]] = {
    "polling_start": _start_polling,
    "callbacks": _callbacks,
    "cost": _cost,
    "cost_saved_outputs": _cost_saved_outputs,
    "saved_outputs": _saved_outputs,
    "ingest": _ingest,
    "hot_items": _hot_items,
    "sweep": _sweep,
    "e2e": _e2e,
    "admission": _admission,
    "reuse": _reuse,
    "provider_requests": _provider_requests,
    "polling": _join_polling,
}


def run(pieces: Mapping[str, Callable[[], dict[str, Any]]], out: Path) -> tuple[dict[str, Any], list[str]]:
    """Run every piece, merge their figures, write `out`; returns the results and the failures."""
    results: dict[str, Any] = {}
    failed: list[str] = []
    seconds: dict[str, float] = {}
    for name, piece in pieces.items():
        print(f"== {name}", flush=True)
        started = time.monotonic()
        try:
            results |= piece()
        except Exception:
            traceback.print_exc()
            failed.append(name)
        seconds[name] = round(time.monotonic() - started, 1)
    results["bench_seconds"] = seconds
    results |= ceiling(results)
    missing = [k for k in REQUIRED_KEYS if not isinstance(results.get(k), int | float)]
    results["missing_keys"] = missing
    out.write_text(json.dumps(results, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return results, failed


def ceiling(results: Mapping[str, Any]) -> dict[str, float]:
    """The rows/s one core of the embedded AWS allows (its requests per CPU-second over the requests a
    row costs), and what share of it the end-to-end run reached: moto is one GIL-bound process."""
    try:
        per_cpu = float(results["e2e_moto_ops_per_cpu_s"])
        per_row = float(results["aws_ops_per_row"])
        rate = float(results["e2e_rows_per_s"])
    except (KeyError, TypeError, ValueError):
        return {}
    if per_row <= 0 or per_cpu <= 0:
        return {}
    limit = per_cpu / per_row
    return {"e2e_ceiling_rows_per_s": limit, "e2e_share_of_ceiling": rate / limit}


def table(results: Mapping[str, Any]) -> str:
    lines = [f"{'figure':52s} {'value':>10s}  {'goal':16s} result", "-" * 90]
    for goal in GOALS:
        value = results.get(goal.key)
        if not isinstance(value, int | float):
            lines.append(f"{goal.label:52s} {'-':>10s}  {goal.goal:16s} not measured")
            continue
        verdict = ""
        if goal.check is not None:
            try:
                verdict = "met" if goal.check(results) else "MISSED"
            except KeyError:
                verdict = "not measured"
        lines.append(f"{goal.label:52s} {value:10.2f}  {goal.goal:16s} {verdict}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--only", nargs="*", choices=sorted(PIECES), help="run only these pieces")
    args = parser.parse_args()
    chosen = {k: v for k, v in PIECES.items() if not args.only or k in args.only}
    started = time.monotonic()
    results, failed = run(chosen, args.out)
    print()
    print(table(results))
    from bench import on_done_hops

    print()
    print(on_done_hops.table(dict(results)))
    large = {k.split(".", 1)[1]: v for k, v in results.items() if k.startswith("e2e_large_hop_ms.")}
    if large:
        print("  the 20,000-row batch's own: " + ", ".join(f"{k} {v:.0f} ms" for k, v in large.items()))
    print(f"\nwrote {args.out} in {time.monotonic() - started:.0f} s", end="")
    print(f"; failed: {', '.join(failed)}" if failed else "")
    return 1 if failed or results["missing_keys"] else 0


if __name__ == "__main__":
    sys.exit(main())
