"""Saved outputs (contract section 7): the saver's copy throughput and its memory on a large output.

    .venv/bin/python bench/saved_outputs_bench.py

- Throughput: the saver's own copy path (`OutputSaver.save_output`: a streamed GET from the
  provider emulator over loopback HTTP, a streamed PutObject or multipart upload to the embedded
  AWS, sha256 on the way) with ten copies at once, as one saver invocation copies the rows of a
  received batch; for 16 KiB outputs (the emulator's default) and for 50 MiB ones.
- Peak RSS for a 1 GiB output, in a child process: the copy path as above, but the S3 client
  takes each part and drops it, so the figure is the saver's memory (one 8 MiB part, the download
  buffer, the interpreter) and not moto's, which keeps every object in its own memory.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3
import httpx

from rowcall.outbound import DestinationPolicy, webhook_client
from rowcall.saved_outputs import ROWS_AT_ONCE, OutputSaver
from rowcall_local.emulated_media import Media
from rowcall_local.moto_process import MotoProcess
from rowcall_local.provider_emulator import ProviderEmulator, ProviderFaults

API_KEY = "bench-key"
SECRET = "whsec_bench"
KIB = 1024
MIB = 1024 * KIB


def _runs(provider: ProviderEmulator, count: int) -> list[dict[str, Any]]:
    """`count` completed runs of the emulator; each has one output."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    run_ids = [
        httpx.post(
            f"{provider.url}/techniques/t/runs",
            json={"inputs": [], "mode": "async", "idempotency_key": f"bench-{n}-{time.time_ns()}"},
            headers=headers,
        ).json()["run_id"]
        for n in range(count)
    ]
    outputs = []
    for run_id in run_ids:
        deadline = time.monotonic() + 30
        while True:
            run = httpx.get(f"{provider.url}/techniques/t/runs/{run_id}", headers=headers).json()
            if run["status"] == "completed":
                outputs.append(run["outputs"][0] | {"run_id": run_id})
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"run {run_id} did not complete")
            time.sleep(0.02)
    return outputs


def throughput(output_bytes: int, count: int) -> dict[str, float]:
    moto = MotoProcess(Path(tempfile.mkdtemp(prefix="rowcall-saver-bench-")) / "moto.log")
    url = moto.start()
    try:
        return _throughput(url, output_bytes, count)
    finally:
        moto.stop()


def _throughput(moto_url: str, output_bytes: int, count: int) -> dict[str, float]:
    faults = ProviderFaults(delay_ms=(0, 1), output_bytes=output_bytes)
    with ProviderEmulator(API_KEY, faults, webhook_secret=SECRET) as provider:
        s3 = boto3.client(
            "s3",
            endpoint_url=moto_url,
            region_name="us-east-1",
            aws_access_key_id="t",
            aws_secret_access_key="t",
        )
        s3.create_bucket(Bucket="bench")
        saver = OutputSaver(
            s3=s3,
            bucket="bench",
            ledger=None,  # type: ignore[arg-type]  # the copy path asks nothing of the ledger
            finisher=None,  # type: ignore[arg-type]
            http=webhook_client(DestinationPolicy(allow_loopback=True), timeout_s=120),
        )
        outputs = _runs(provider, count)
        started = time.monotonic()
        with ThreadPoolExecutor(ROWS_AT_ONCE) as pool:
            saved = list(pool.map(lambda o: saver.save_output("b_bench", o["run_id"], o, False), outputs))
        seconds = time.monotonic() - started
        for entry, output in zip(saved, outputs, strict=True):
            if (
                entry.get("sha256")
                != Media(f"{output['run_id']}/output_0", "imageUrl", output_bytes).digest()
            ):
                raise RuntimeError(f"copy of {output['run_id']} differs: {entry}")
    total = sum(int(e["bytes"]) for e in saved)
    return {"outputs_per_s": count / seconds, "mb_per_s": total / 1e6 / seconds, "seconds": seconds}


class _DroppingS3:
    """Takes every part and keeps nothing: the saver's memory alone is measured."""

    def __init__(self) -> None:
        self.bytes = 0

    def create_multipart_upload(self, **kw: Any) -> dict[str, Any]:
        return {"UploadId": "u"}

    def upload_part(self, **kw: Any) -> dict[str, Any]:
        body = kw["Body"]
        self.bytes += len(body.read())
        return {"ETag": f'"{kw["PartNumber"]}"'}

    def complete_multipart_upload(self, **kw: Any) -> dict[str, Any]:
        return {}

    def put_object(self, **kw: Any) -> dict[str, Any]:
        self.bytes += len(kw["Body"].read())
        return {}

    def abort_multipart_upload(self, **kw: Any) -> dict[str, Any]:
        return {}


def _child_peak_rss(output_bytes: int) -> None:
    """In the child: copy one output of `output_bytes`, print the peak RSS in MB as JSON."""
    faults = ProviderFaults(delay_ms=(0, 1), output_bytes=output_bytes)
    with ProviderEmulator(API_KEY, faults, webhook_secret=SECRET) as provider:
        (output,) = _runs(provider, 1)
        dropping = _DroppingS3()
        saver = OutputSaver(
            s3=dropping,  # type: ignore[arg-type]
            bucket="bench",
            ledger=None,  # type: ignore[arg-type]
            finisher=None,  # type: ignore[arg-type]
            http=webhook_client(DestinationPolicy(allow_loopback=True), timeout_s=120),
        )
        started = time.monotonic()
        entry = saver.save_output("b_bench", "row", output, False)
        seconds = time.monotonic() - started
    if entry.get("bytes") != output_bytes or dropping.bytes != output_bytes:
        raise RuntimeError(f"copied {entry} / {dropping.bytes} bytes, not {output_bytes}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_rss_mb": peak_mb, "seconds": seconds, "sha256": entry["sha256"]}))


def peak_rss_mb(output_bytes: int) -> dict[str, float]:
    # The emulator serves from the same process; its part of the RSS is one 64 KiB block.
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(output_bytes)], capture_output=True, text=True, check=True
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def measure() -> dict[str, Any]:
    small = throughput(16 * KIB, 300)
    large = throughput(50 * MIB, 4)
    rss = peak_rss_mb(1024 * MIB)
    return {
        "saved_outputs_per_s_16kib": small["outputs_per_s"],
        "saved_mb_per_s_16kib": small["mb_per_s"],
        "saved_outputs_per_s_50mib": large["outputs_per_s"],
        "saved_mb_per_s_50mib": large["mb_per_s"],
        "saver_peak_rss_mb_1gib": rss["peak_rss_mb"],
        "saver_seconds_1gib": rss["seconds"],
    }


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child_peak_rss(int(sys.argv[2]))
    else:
        print(json.dumps(measure(), indent=2))
