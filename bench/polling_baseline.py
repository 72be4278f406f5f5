"""Callbacks vs polling, measured against the same provider emulator with the same run durations.

    .venv/bin/python bench/polling_baseline.py [ROWS] [BATCHES]      (default 300 rows in 5 batches)

The baseline is the batch-from-CSV polling client: four runs in flight, each created without a
callback URL and then fetched every 2 s until it is finished; a 429 or 5xx (or a refused
connection) backs off exponentially with jitter before the next try. rowcall gets the same rows
as uploads to the local stack, with the provider's callbacks and an on-done to a local webhook
receiver. Both use an emulator whose runs last 1-3 s (`delay_ms=(1000, 3000)`).

Per design: provider requests per row (creates + fetches + lists, from the emulator's `_stats`),
polls per row (fetches of a run not yet finished), wall time, and per batch the delay from its
last run finishing (the emulator's completed_at) to the batch known done (polling: the fetch that
saw the last run finished; rowcall: the batch's finished_at in its on-done) and to the on-done
delivered (polling: the same moment, the client is its own receiver; rowcall: the on-done's
arrival at the receiver). The p95 is over the batches (few samples: it is the worst of them).
"""

from __future__ import annotations

import concurrent.futures
import csv
import io
import json
import random
import secrets
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rowcall_local.provider_emulator import ProviderEmulator, ProviderFaults
from rowcall_local.stack import LocalStack, StackOptions
from rowcall_local.webhook_receiver import WebhookReceiver

RUN_MS = (1000, 3000)
CONCURRENCY = 4
POLL_S = 2.0
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
TECHNIQUE = "flora-default"


def batch_csv(batch: int, rows: int) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["sku", "prompt", "reference"])
    for n in range(rows):
        writer.writerow(
            [f"B{batch}-{n:05d}", f"product {n}, soft light", f"https://img.example/{batch}/{n}.png"]
        )
    return out.getvalue().encode()


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered) + 0.5) - 1))]


# --- the polling client ---------------------------------------------------------------------------


@dataclass
class _Polled:
    completed_at_ms: int
    seen_at: float


class PollingClient:
    """Creates one run per row and polls it to the end, `concurrency` rows at a time."""

    def __init__(self, base_url: str, api_key: str, concurrency: int = CONCURRENCY, poll_s: float = POLL_S):
        self._http = httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {api_key}"}, timeout=10
        )
        self._concurrency = concurrency
        self._poll_s = poll_s
        self._rng = random.Random(7)
        self._rng_lock = threading.Lock()

    def _backoff(self, attempt: int) -> None:
        with self._rng_lock:
            jitter = self._rng.random()
        time.sleep(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt) * (0.5 + jitter / 2))

    def _request(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        attempt = 0
        while True:
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code < 300:
                return dict(response.json())
            if response is not None and response.status_code not in (429, 500, 502, 503, 504):
                raise RuntimeError(f"{method} {url} answered {response.status_code}: {response.text[:200]}")
            self._backoff(attempt)
            attempt += 1

    def _one(self, row: list[str], batch: int) -> _Polled:
        run = self._request(
            "POST",
            f"/techniques/{TECHNIQUE}/runs",
            json={
                "inputs": [{"id": "reference", "type": "imageUrl", "value": row[2]}],
                "mode": "async",
                "idempotency_key": f"b{batch}-{row[0]}",
            },
        )
        while True:
            time.sleep(self._poll_s)
            run = self._request("GET", run["poll_url"])
            if run["status"] in ("completed", "failed"):
                return _Polled(int(run["completed_at"]), time.time())

    def run_batch(self, data: bytes, batch: int) -> list[_Polled]:
        rows = list(csv.reader(io.StringIO(data.decode())))[1:]
        with concurrent.futures.ThreadPoolExecutor(self._concurrency) as pool:
            return list(pool.map(lambda r: self._one(r, batch), rows))

    def close(self) -> None:
        self._http.close()


def measure_polling(rows: int = 300, batches: int = 5) -> dict[str, float]:
    api_key = secrets.token_urlsafe(16)
    faults = ProviderFaults(delay_ms=RUN_MS, seed=11)
    with ProviderEmulator(api_key, faults, webhook_secret="whsec_" + secrets.token_hex(16)) as provider:
        client = PollingClient(provider.url, api_key)
        delays: list[float] = []
        started = time.monotonic()
        for b in range(batches):
            polled = client.run_batch(batch_csv(b, rows // batches), b)
            last_finished = max(p.completed_at_ms for p in polled) / 1000
            known = max(p.seen_at for p in polled)
            delays.append((known - last_finished) * 1000)
        wall = time.monotonic() - started
        client.close()
        stats = provider.stats()
    return {
        "polling_provider_requests_per_row": (stats["creates"] + stats["gets"] + stats["lists"]) / rows,
        "polling_provider_polls_per_row": stats["polls"] / rows,
        "polling_wall_s": wall,
        "polling_done_latency_ms_p95": p95(delays),
        "polling_done_latency_ms_median": statistics.median(delays),
    }


# --- rowcall --------------------------------------------------------------------------------------


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def measure_rowcall(rows: int = 300, batches: int = 5) -> dict[str, float]:
    state = Path(tempfile.mkdtemp(prefix="rowcall-callbacks-"))
    options = StackOptions(state_dir=state, provider_faults=ProviderFaults(delay_ms=RUN_MS, seed=11))
    hook = WebhookReceiver()
    try:
        with LocalStack(options) as stack:
            assert stack.provider is not None
            info = stack.info
            s3 = stack.aws.s3()
            started = time.monotonic()
            for b in range(batches):
                s3.put_object(
                    Bucket=info["bucket"],
                    Key=f"uploads/callbacks-{b}.csv",
                    Body=batch_csv(b, rows // batches),
                    Metadata={
                        "key-column": "sku",
                        "input-types": "reference=imageUrl",
                        "on-done-url": hook.url,
                    },
                )
            got = hook.wait_for(lambda received: len(received) >= batches, timeout_s=600)
            wall = time.monotonic() - started
            stats = stack.provider.stats()
            finished = stack.provider.finished_runs()
    finally:
        hook.close()
    known_ms: list[float] = []
    delivered_ms: list[float] = []
    for delivery in got:
        body = json.loads(delivery.body)
        data = body.get("data", body)
        batch_id = data["batch_id"]
        last = max(done for url, done in finished if url and f"/{batch_id}/" in url) / 1000
        known_ms.append((_unix(body["timestamp"]) - last) * 1000)
        delivered_ms.append((delivery.at - last) * 1000)
    return {
        "provider_requests_per_row": (stats["creates"] + stats["gets"] + stats["lists"]) / rows,
        "provider_polls_per_row": stats["polls"] / rows,
        "rowcall_wall_s": wall,
        "rowcall_done_latency_ms_p95": p95(known_ms),
        "on_done_latency_ms_p95": p95(delivered_ms),
        "on_done_latency_ms_median": statistics.median(delivered_ms),
    }


def measure(rows: int = 300, batches: int = 5) -> dict[str, float]:
    return measure_rowcall(rows, batches) | measure_polling(rows, batches)


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    for name, value in measure(*args).items():
        print(f"{name:40s} {value:10.2f}")
