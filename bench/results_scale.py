"""A 500,000-row batch's results.csv and row-errors.csv written as the notifier writes them: memory,
/tmp, time and parts, and what that means for the notifier on Lambda.

    .venv/bin/python bench/results_scale.py [ROWS] [--tracemalloc]

What is real: `rowcall.results.upload_results` and everything under it (the source CSV read back
from S3 and parsed, the merge in file order, `RowLedger.rows_of_chunk` over `Table.query` paging,
`plain`, the pydantic row models, formula escaping, `StreamingUpload`'s multipart upload), and S3:
moto's server in its own process, strict as under `rowcall up` (a part under 5 MiB that is not the
last is refused), over HTTP on loopback. What stands in: DynamoDB's Query. Writing 500,000 row items
through moto would take longer than everything measured, so `RowPages` (tests/unit/synthetic_batch.py)
makes each chunk's row items on demand; here each page is also serialized to DynamoDB's JSON and
parsed back by botocore's own parser, so the client-side cost of a real Query page is in the figures
and only the network round trip is missing (estimated below, as are Lambda's slower CPU and S3's
transfer rates, each assumption printed beside its figure).

The measurement runs in a fresh child process (`--child`), so its peak RSS is the results writing
and the interpreter, not the set-up; an audit hook in it records every file opened for writing under
the temporary directory.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import boto3  # noqa: E402
from botocore.parsers import create_parser  # noqa: E402

from rowcall.models import SourceObject  # noqa: E402
from rowcall.results import errors_key, results_key, upload_results  # noqa: E402
from rowcall.streaming_upload import StreamingUpload  # noqa: E402
from rowcall_local.moto_process import MotoProcess  # noqa: E402
from tests.unit.synthetic_batch import (  # noqa: E402
    BATCH_ID,
    RecordingS3,
    RowPages,
    Shape,
    batch_state,
    ledger,
    source_lines,
)

BUCKET = "results-scale"
SOURCE_KEY = "uploads/scale.csv"
MIB = 1024 * 1024
# The notifier as template.yaml deploys it.
LAMBDA_MEMORY_MB = 1024
LAMBDA_TIMEOUT_S = 300
LAMBDA_TMP_MB = 512
# Lambda gives a function CPU in proportion to its memory: one vCPU at 1,769 MB.
LAMBDA_VCPU = LAMBDA_MEMORY_MB / 1769
# Assumptions for what this machine cannot measure, all on the slow side for in-region traffic.
DYNAMODB_QUERY_RTT_S = 0.010
S3_REQUEST_RTT_S = 0.030
S3_STREAM_MB_S = 50.0


def s3_client(url: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )


class WireRowPages(RowPages):
    """Each page goes through DynamoDB's JSON and botocore's parser, as a real Query response does."""

    def __init__(self, shape: Shape) -> None:
        super().__init__(shape)
        model = boto3.client("dynamodb", region_name="us-east-1").meta.service_model
        self._shape = model.operation_model("Query").output_shape
        self._parser = create_parser("json")
        self.seconds = 0.0
        self.wire_bytes = 0

    def query(self, **kwargs: Any) -> dict[str, Any]:
        started = time.perf_counter()
        body = json.dumps(super().query(**kwargs)).encode()
        self.wire_bytes += len(body)
        response = {"body": body, "headers": {}, "status_code": 200}
        parsed: dict[str, Any] = self._parser.parse(response, self._shape)
        self.seconds += time.perf_counter() - started
        return parsed


class TimedS3(RecordingS3):
    """Part sizes (RecordingS3) and the time spent in S3's write requests."""

    def __init__(self, s3: Any) -> None:
        super().__init__(s3)
        self.seconds = 0.0
        self.requests = 0

    def __getattr__(self, name: str) -> Any:
        call = getattr(self._s3, name)
        if name not in ("create_multipart_upload", "complete_multipart_upload"):
            return call

        def timed(**kwargs: Any) -> Any:
            return self._timed(call, **kwargs)

        return timed

    def _timed(self, call: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return call(**kwargs)
        finally:
            self.seconds += time.perf_counter() - started
            self.requests += 1

    def upload_part(self, **kwargs: Any) -> Any:
        return self._timed(super().upload_part, **kwargs)

    def put_object(self, **kwargs: Any) -> Any:
        return self._timed(super().put_object, **kwargs)


def _watch_temp_writes() -> list[str]:
    """Every file opened for writing under the temporary directory (an unnamed O_TMPFILE, which a
    SpooledTemporaryFile rolls over into, included: its open names the directory)."""
    roots = tuple({os.path.realpath(tempfile.gettempdir()), "/tmp", "/var/tmp"})
    writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | getattr(os, "O_TMPFILE", 0)
    seen: list[str] = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event.startswith("tempfile."):
            seen.append(f"{event} {args!r}")
        elif event == "open" and isinstance(args[0], str | bytes):
            path = os.path.realpath(os.fsdecode(args[0]))
            mode, flags = args[1] or "", args[2] or 0
            if path.startswith(roots) and (any(c in str(mode) for c in "wax+") or flags & writes):
                seen.append(path)

    sys.addaudithook(hook)
    return seen


def child(url: str, rows: int, traced: bool) -> dict[str, Any]:
    temp_writes = _watch_temp_writes()
    shape = Shape(rows=rows)
    pages = WireRowPages(shape)
    s3 = TimedS3(s3_client(url))
    s3.head_bucket(Bucket=BUCKET)  # the client's connection pool and models loaded, as when warm
    batch = batch_state(shape, SourceObject(bucket=BUCKET, key=SOURCE_KEY))
    baseline_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    if traced:
        tracemalloc.start()
    started = time.perf_counter()
    upload_results(s3, ledger(pages), batch)
    wall = time.perf_counter() - started
    traced_peak = tracemalloc.get_traced_memory()[1] if traced else None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage.ru_utime - cpu_before.ru_utime) + (usage.ru_stime - cpu_before.ru_stime)
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_baseline_mb": baseline_kb / 1024,
        "rss_peak_mb": usage.ru_maxrss / 1024,
        "traced_peak_mb": None if traced_peak is None else traced_peak / MIB,
        "tmp_writes": temp_writes,
        "query_pages": pages.pages,
        "query_items": pages.items,
        "query_wire_mb": pages.wire_bytes / MIB,
        "query_s": pages.seconds,
        "s3_write_s": s3.seconds,
        "s3_write_requests": s3.requests,
        "parts": {key: sizes for key, sizes in s3.log.sizes.items()},
        "aborted": s3.log.aborted,
    }


def main(rows: int, traced: bool) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="results-scale-"))
    # moto spools objects over 5 MB to its own /tmp; hold them in its memory instead.
    os.environ["MOTO_S3_DEFAULT_KEY_BUFFER_SIZE"] = str(4 * 1024 * MIB)
    server = MotoProcess(work / "moto.log")
    try:
        url = server.start()
        s3 = s3_client(url)
        s3.create_bucket(Bucket=BUCKET)
        with StreamingUpload(s3, BUCKET, SOURCE_KEY, content_type="text/csv") as out:
            for line in source_lines(Shape(rows=rows)):
                out.write(line.decode())
        source_bytes = out.size
        command = [sys.executable, __file__, "--child", url, str(rows)] + (
            ["--tracemalloc"] if traced else []
        )
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode:
            raise SystemExit(done.stderr)
        measured: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
        results = s3.head_object(Bucket=BUCKET, Key=results_key(BATCH_ID))
        leftover = s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
    return report(rows, source_bytes, results["ContentLength"], len(leftover), measured)


def report(
    rows: int, source_bytes: int, results_bytes: int, leftover: int, m: dict[str, Any]
) -> dict[str, Any]:
    parts = m["parts"][results_key(BATCH_ID)]
    error_parts = m["parts"][errors_key(BATCH_ID)]
    # On Lambda: this run's CPU at Lambda's share of a core, plus the network waits this loopback
    # run does not have. The stand-in's page generation stays in (it replaces reading the page).
    network = (
        m["query_pages"] * DYNAMODB_QUERY_RTT_S
        + (source_bytes + results_bytes) / MIB / S3_STREAM_MB_S
        + (m["s3_write_requests"] + 2) * S3_REQUEST_RTT_S
    )
    lambda_s = m["cpu_s"] / LAMBDA_VCPU + network
    figures = {
        "rows": rows,
        "source_mb": round(source_bytes / MIB, 1),
        "results_mb": round(results_bytes / MIB, 1),
        "results_parts": len(parts),
        "part_mib": sorted({round(p / MIB, 2) for p in parts}),
        "row_errors_requests": len(error_parts),
        "peak_rss_mb": round(m["rss_peak_mb"], 1),
        "rss_before_mb": round(m["rss_baseline_mb"], 1),
        "traced_peak_mb": None if m["traced_peak_mb"] is None else round(m["traced_peak_mb"], 1),
        "tmp_files_written": len(m["tmp_writes"]),
        "wall_s": round(m["wall_s"], 1),
        "cpu_s": round(m["cpu_s"], 1),
        "query_pages": m["query_pages"],
        "query_s": round(m["query_s"], 1),
        "s3_write_s": round(m["s3_write_s"], 1),
        "multipart_uploads_left": leftover,
        "lambda_estimate_s": round(lambda_s, 0),
        "lambda_network_estimate_s": round(network, 1),
    }
    table = [
        ("rows", f"{rows:,}", ""),
        ("source.csv / results.csv", f"{figures['source_mb']} MiB / {figures['results_mb']} MiB", ""),
        (
            "results.csv parts",
            f"{len(parts)}: "
            + ", ".join(f"{p / MIB:.2f}" for p in parts[:2])
            + f", ... last {parts[-1] / MIB:.2f} MiB",
            "every part but the last >= 5 MiB",
        ),
        ("row-errors.csv", f"{len(error_parts)} PutObject ({error_parts[0]} bytes)", "smaller than a part"),
        (
            "peak RSS",
            f"{figures['peak_rss_mb']} MB (before: {figures['rss_before_mb']} MB)",
            f"notifier MemorySize {LAMBDA_MEMORY_MB} MB",
        ),
        (
            "traced Python peak",
            f"{figures['traced_peak_mb']} MiB" if m["traced_peak_mb"] else "(--tracemalloc)",
            "",
        ),
        ("files written under /tmp", str(len(m["tmp_writes"])), f"Lambda /tmp {LAMBDA_TMP_MB} MB"),
        ("wall / CPU here", f"{figures['wall_s']} s / {figures['cpu_s']} s", "S3 on loopback, 1 core"),
        (
            "  of which Query pages (stand-in + botocore parse)",
            f"{m['query_pages']} pages, {figures['query_s']} s",
            "",
        ),
        ("  of which S3 writes", f"{m['s3_write_requests']} requests, {figures['s3_write_s']} s", ""),
        ("multipart uploads left behind", str(leftover), ""),
        (
            "on Lambda (estimate)",
            f"~{lambda_s:.0f} s",
            f"CPU / {LAMBDA_VCPU:.2f} vCPU + {network:.0f} s network: Query "
            f"{DYNAMODB_QUERY_RTT_S * 1000:.0f} ms, S3 {S3_STREAM_MB_S:.0f} MB/s + "
            f"{S3_REQUEST_RTT_S * 1000:.0f} ms/request; timeout {LAMBDA_TIMEOUT_S} s",
        ),
    ]
    if m["traced_peak_mb"] is not None:
        table[-1] = ("on Lambda (estimate)", "(run without --tracemalloc: it slows Python several times)", "")
        figures["lambda_estimate_s"] = figures["lambda_network_estimate_s"] = None
    width = max(len(r[0]) for r in table)
    for name, value, note in table:
        print(f"{name:<{width}}  {value}" + (f"   ({note})" if note else ""))
    print(json.dumps(figures, separators=(",", ":")))
    return figures


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--tracemalloc"]
    traced = "--tracemalloc" in sys.argv
    if args[:1] == ["--child"]:
        print(json.dumps(child(args[1], int(args[2]), traced)))
    else:
        main(int(args[0]) if args else 500_000, traced)
