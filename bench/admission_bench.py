"""Admission under the in-flight cap, measured on one local stack (cap 8):

    .venv/bin/python bench/admission_bench.py

1. `cap_utilisation_fast`: 400 rows of 0-300 ms runs. From the moment the cap first fills until
   the last row's run is created (rows waiting all that time), the provider emulator's
   time-averaged runs in flight (`in_flight_avg`, reset when the cap fills) / the cap.
   `aws_requests_per_row_capped`: every AWS request the embedded AWS answered from upload to the
   batch's end / rows (its meter, `GET /_rowcall/requests`), to set beside the uncapped
   `aws_ops_per_row` of bench/e2e_throughput.py.
2. `cap_utilisation_slow`: the same with 48 rows of 5-10 s runs.
3. Waiting: a batch holds every slot with 40 s runs while a second batch waits. The AWS requests
   answered during the first 10 s and the next 20 s of the wait (`aws_requests_waiting_first_10s`,
   `aws_requests_waiting_next_20s`, the event sources' long polls left out): with wake-ups, the
   waiting batch asks nothing, so neither grows with the wait (only a safety-net sweep, once a
   minute, whoever waits, can fall in a window).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rowcall_local import request_meter
from rowcall_local.provider_emulator import ProviderFaults
from rowcall_local.stack import LocalStack, StackOptions

CAP = 8
FAST_ROWS = 400
SLOW_ROWS = 48
POLLING = {"sqs:ReceiveMessage"}


def _csv(rows: int, tag: str) -> bytes:
    return ("sku,prompt\n" + "".join(f"{tag}{n},prompt {n}\n" for n in range(rows))).encode()


def _until(condition: Callable[[], bool], timeout_s: float, what: str, every_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {what}")
        time.sleep(every_s)


class _Bench:
    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self.moto = stack.info["aws_endpoint_url"]
        self.provider_url = stack.info["provider_url"]
        self.api = httpx.Client(
            base_url=stack.info["api_url"],
            timeout=30,
            headers={"Authorization": f"Bearer {stack.info['api_token']}"},
        )

    def stats(self) -> dict[str, Any]:
        got: dict[str, Any] = httpx.get(self.provider_url + "/_stats", timeout=10).json()
        return got

    def meter(self, reset: bool = False) -> dict[str, Any]:
        url = self.moto + request_meter.CONTROL_PATH
        got: dict[str, Any] = (
            httpx.post(url + "/reset", timeout=10) if reset else httpx.get(url, timeout=10)
        ).json()
        return got

    def upload(self, key: str, body: bytes) -> None:
        self.stack.aws.s3().put_object(
            Bucket=self.stack.info["bucket"],
            Key=key,
            Body=body,
            # As bench/e2e_throughput.py's uncapped figure it is set beside: outputs not saved. Reuse
            # off: the batches ask the same prompts, and a reused row takes no slot (nothing to measure).
            Metadata={"key-column": "sku", "save-outputs": "off", "reuse": "off"},
        )

    def batch(self, key: str) -> dict[str, Any]:
        items = self.api.get("/batches", params={"limit": 100}).json()["items"]
        found = [b for b in items if b["source"]["key"] == key]
        return found[0] if found else {}

    def utilisation(
        self, key: str, rows: int, delay_ms: tuple[int, int], timeout_s: float
    ) -> dict[str, float]:
        assert self.stack.provider is not None
        self.stack.provider.set_delay_ms(delay_ms)
        before = self.stats()["creates"]
        self.meter(reset=True)
        self.upload(key, _csv(rows, key[-8:-4]))
        # Runs of a few ms may end before a look at the emulator sees all CAP at once: the window
        # opens once CAP runs were created (the cap could fill from then on), not at a lucky look.
        _until(lambda: self.stats()["creates"] - before >= CAP, timeout_s, "the cap never filled")
        httpx.post(self.provider_url + "/_stats/reset", timeout=10).raise_for_status()
        filled = time.monotonic()
        _until(lambda: self.stats()["creates"] - before >= rows, timeout_s, "rows never all started")
        average = float(self.stats()["in_flight_avg"])
        waited_s = time.monotonic() - filled
        _until(lambda: self.batch(key).get("status") == "completed", timeout_s, "batch never completed", 0.5)
        requests = self.meter()["requests"]
        return {"utilisation": average / CAP, "waited_s": waited_s, "requests_per_row": requests / rows}

    def waiting(self) -> dict[str, float]:
        assert self.stack.provider is not None
        self.stack.provider.set_delay_ms((40_000, 40_000))
        self.upload("uploads/hold.csv", _csv(CAP, "hold"))
        _until(lambda: self.stats()["in_flight"] >= CAP, 60, "the holder never filled the cap")
        self.upload("uploads/wait.csv", _csv(CAP, "wait"))
        _until(lambda: self.batch("uploads/wait.csv").get("status") == "running", 60, "no waiting batch", 0.2)
        time.sleep(2)  # its first delivery finds no slot and lists itself
        self.meter(reset=True)
        time.sleep(10)
        first = self._pipeline_requests()
        self.meter(reset=True)
        time.sleep(20)
        second = self._pipeline_requests()
        if self.stats()["in_flight"] < CAP:
            raise RuntimeError("the holder's runs ended during the measured wait")
        return {"aws_requests_waiting_first_10s": first, "aws_requests_waiting_next_20s": second}

    def _pipeline_requests(self) -> float:
        counts = self.meter()["by_operation"]
        return float(sum(n for op, n in counts.items() if op not in POLLING))


def measure() -> dict[str, float]:
    state = Path(tempfile.mkdtemp(prefix="rowcall-admission-bench-"))
    options = StackOptions(
        state_dir=state, provider_faults=ProviderFaults(delay_ms=(0, 300)), max_in_flight=CAP
    )
    with LocalStack(options) as stack:
        bench = _Bench(stack)
        fast = bench.utilisation("uploads/fast.csv", FAST_ROWS, (0, 300), 600)
        slow = bench.utilisation("uploads/slow.csv", SLOW_ROWS, (5_000, 10_000), 600)
        waited = bench.waiting()
        max_in_flight = float(bench.stats()["max_in_flight"])
    return {
        "cap_utilisation_fast": fast["utilisation"],
        "cap_utilisation_fast_seconds": fast["waited_s"],
        "aws_requests_per_row_capped": fast["requests_per_row"],
        "cap_utilisation_slow": slow["utilisation"],
        "cap_utilisation_slow_seconds": slow["waited_s"],
        "admission_max_in_flight": max_in_flight,
        **waited,
    }


def main() -> None:
    result = measure()
    for name, value in result.items():
        print(f"{name:40s} {value:12.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
