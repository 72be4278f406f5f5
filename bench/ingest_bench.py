"""Ingest of big files: rows/s of the handler's parsing path against bare csv.reader, and peak RSS.

    .venv/bin/python bench/ingest_bench.py [ROWS_1GIB]     (default 500,000 rows of ~2 KB = 1 GiB)

Two CSVs, 100 MB and 1 GiB, with rows of one width (1 GiB / 500k rows: ~2,147 bytes a row), are
written to a temp dir a block at a time (never held in memory) and uploaded (multipart, streamed
from disk) to a moto server process. Each size is then ingested in a subprocess of its own, so the
peak RSS (getrusage's ru_maxrss, read right after the ingest) is that ingest's alone:

1. handler: `rowcall.compose.ingestor().ingest(...)`, what the ingest function's handler calls -
   HEAD, the streamed GET of the whole object through boto3, pass 1 (split, parse, validate, plan
   chunks), the batch's ledger writes and pass 2's chunk messages, against moto over HTTP. Its
   rows/s includes moto serving 1 GiB, so it is not the parser's speed.
2. parse path: the same pass 1 over the same bytes read from the local file - `split_lines`,
   `scan_records`, the width check and chunk planning (`Ingestor._plan`) - and nothing else.
3. csv.reader: bare `csv.reader` over the same file decoded as UTF-8, counting rows.

`ingest_ratio_vs_csv_reader` is (2) rows/s over (3) rows/s: (2) and (3) alternated three times
over the 100 MB file, the best of each kept (once each over the 1 GiB file, reported beside it).
Peak RSS is the subprocess's VmHWM (Linux), read right after the handler's ingest.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 1024**3
ROWS_1GIB = 500_000
SIZES = {"100mb": 100 * 1000 * 1000, "1gib": GIB}
REPEATS = {"100mb": 3, "1gib": 1}  # passes of each parser, alternated, the best kept
WRITE_BLOCK_ROWS = 2000
LAMBDA_LIMIT_S = 900


def write_csv(path: Path, size: int, row_bytes: int) -> int:
    """Rows of `row_bytes` bytes (newline included) up to `size` bytes; returns the row count."""
    header = "sku,prompt,reference\n"
    rows = (size - len(header)) // row_bytes
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write(header)
        for start in range(0, rows, WRITE_BLOCK_ROWS):
            block = []
            for n in range(start + 1, min(rows, start + WRITE_BLOCK_ROWS) + 1):
                sku, url = f"SKU-{n:08d}", f"https://img.example/{n}.png"
                fill = row_bytes - len(sku) - len(url) - 5  # two commas, two quotes, the newline
                prompt = (f"studio photo of product {n}, soft light " * 60)[:fill]
                block.append(f'{sku},"{prompt}",{url}\n')
            out.write("".join(block))
    return rows


def _peak_rss_mb() -> float:
    """This process's peak RSS since its exec (VmHWM). Not getrusage's ru_maxrss: Linux carries
    that over exec from the forked copy of the parent, whose pages count until the exec."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn: Any) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def _child(args: dict[str, Any]) -> dict[str, Any]:
    """In the subprocess: the handler's ingest, then the two parsers over the local file."""
    os.environ.update(args["env"])
    from rowcall.compose import ingestor
    from rowcall.csvsplit import scan_records, split_lines
    from rowcall.ingest import ObjectCreated

    started = time.perf_counter()
    batch = ingestor().ingest(ObjectCreated(bucket=args["bucket"], key=args["key"]))
    handler_s = time.perf_counter() - started
    peak_rss_mb = _peak_rss_mb()
    assert batch is not None and batch.total_count == args["rows"], batch

    def file_chunks() -> Any:
        with open(args["path"], "rb") as f:
            while block := f.read(1024 * 1024):
                yield block

    def parse() -> None:
        records = scan_records(split_lines(file_chunks()), first_number=0)
        header = next(records).fields
        assert header is not None
        scan = ingestor()._plan("b_parse_only", header, records)
        assert sum(c.rows for c in scan.chunks) == args["rows"]

    def bare() -> None:
        with open(args["path"], encoding="utf-8", newline="") as f:
            assert sum(1 for _ in csv.reader(f)) - 1 == args["rows"]

    # Alternated and the best of each kept: on a shared machine a burst of other work lands on
    # one pass or another, and the ratio is the code's, not the neighbours'.
    parse_s = csv_s = float("inf")
    for _ in range(args["repeats"]):
        parse_s = min(parse_s, _timed(parse))
        csv_s = min(csv_s, _timed(bare))
    return {"handler_s": handler_s, "parse_s": parse_s, "csv_reader_s": csv_s, "peak_rss_mb": peak_rss_mb}


def measure(rows_1gib: int = ROWS_1GIB) -> dict[str, float]:
    import boto3
    from boto3.s3.transfer import TransferConfig

    from bench.hot_items import table_properties
    from rowcall_local.moto_process import MotoProcess

    row_bytes = GIB // rows_1gib
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="rowcall-ingest-") as tmp:
        moto = MotoProcess(Path(tmp) / "moto.log")
        endpoint = moto.start()
        try:
            env = {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",
                "AWS_DEFAULT_REGION": "us-east-1",
            }
            session = boto3.Session(
                region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="x"
            )
            s3, sqs = (
                session.client("s3", endpoint_url=endpoint),
                session.client("sqs", endpoint_url=endpoint),
            )
            session.client("dynamodb", endpoint_url=endpoint).create_table(
                TableName="ledger", **table_properties()
            )
            s3.create_bucket(Bucket="data")
            env |= {
                "TABLE_NAME": "ledger",
                "CHUNK_QUEUE_URL": sqs.create_queue(QueueName="chunks")["QueueUrl"],
                "DONE_QUEUE_URL": sqs.create_queue(QueueName="done")["QueueUrl"],
                "DEFAULT_TECHNIQUE_ID": "flora-default",
                "MAX_ROWS": "10000000",
                "MAX_BYTES": str(2 * GIB),
                "CHUNK_ROWS": "1000",
                "MAX_IN_FLIGHT": "0",
                "POWERTOOLS_SERVICE_NAME": "rowcall",
                "POWERTOOLS_LOG_LEVEL": "WARNING",
                "POWERTOOLS_METRICS_NAMESPACE": "rowcall",
                "POWERTOOLS_TRACE_DISABLED": "true",
            }
            for name, size in SIZES.items():
                path = Path(tmp) / f"{name}.csv"
                rows = write_csv(path, size, row_bytes)
                key = f"uploads/{name}.csv"
                s3.upload_file(
                    str(path), "data", key, Config=TransferConfig(multipart_chunksize=16 * 1024**2)
                )
                args = {
                    "env": env,
                    "bucket": "data",
                    "key": key,
                    "path": str(path),
                    "rows": rows,
                    "repeats": REPEATS[name],
                }
                child = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(args)],
                    capture_output=True,
                    text=True,
                    check=False,
                    timeout=1800,
                )
                if child.returncode != 0:
                    raise RuntimeError(f"ingest of {name} failed:\n{child.stderr[-3000:]}")
                got = json.loads(child.stdout.strip().splitlines()[-1])
                results |= {
                    f"ingest_rows_{name}": rows,
                    f"ingest_bytes_{name}": path.stat().st_size,
                    f"ingest_handler_s_{name}": got["handler_s"],
                    f"ingest_handler_rows_per_s_{name}": rows / got["handler_s"],
                    f"ingest_parse_rows_per_s_{name}": rows / got["parse_s"],
                    f"ingest_csv_reader_rows_per_s_{name}": rows / got["csv_reader_s"],
                    f"ingest_peak_rss_mb_{name}": got["peak_rss_mb"],
                }
                s3.delete_object(Bucket="data", Key=key)
                path.unlink()
        finally:
            moto.stop()
    for name in SIZES:
        results[f"ingest_ratio_vs_csv_reader_{name}"] = (
            results[f"ingest_parse_rows_per_s_{name}"] / results[f"ingest_csv_reader_rows_per_s_{name}"]
        )
    # The goal's figure: the best of three alternated passes over the 100 MB file (the 1 GiB
    # file's single pass is beside it, noisier on a shared machine).
    results["ingest_ratio_vs_csv_reader"] = results["ingest_ratio_vs_csv_reader_100mb"]
    results["ingest_1gib_share_of_lambda_limit"] = results["ingest_handler_s_1gib"] / LAMBDA_LIMIT_S
    return results


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        print(json.dumps(_child(json.loads(sys.argv[2]))))
    else:
        for name, value in measure(*(int(a) for a in sys.argv[1:2])).items():
            print(f"{name:42s} {value:14.3f}")
