"""The management API seen from outside: find the batch of an upload, poll a batch until a condition holds.

Used by `rowcall demo`, the benchmark and the end-to-end tests, which all watch a batch as a user would.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

TERMINAL_STATUSES = frozenset({"completed", "partial", "failed", "canceled"})

Batch = dict[str, Any]


def is_terminal(batch: Batch) -> bool:
    return batch.get("status") in TERMINAL_STATUSES


def is_notified(batch: Batch) -> bool:
    return (batch.get("notification") or {}).get("status") in ("delivered", "failed")


class BatchWatcher:
    """Polls through an authenticated client; raises TimeoutError when the time is up."""

    def __init__(self, api: httpx.Client, poll_s: float = 0.3) -> None:
        self._api = api
        self._poll_s = poll_s

    def _get(self, path: str, **params: Any) -> Any:
        response = self._api.get(path, params=params or None)
        if response.status_code != 200:
            raise RuntimeError(f"GET {path} answered {response.status_code}: {response.text[:300]}")
        return response.json()

    def find(self, key: str, timeout_s: float) -> Batch:
        """The batch made from the upload at `key` (newest first, so a re-upload's batch wins)."""
        deadline = time.monotonic() + timeout_s
        while True:
            for item in self._get("/batches", limit=100).get("items", []):
                if (item.get("source") or {}).get("key") == key:
                    return dict(item)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no batch appeared for s3 key {key} within {timeout_s:.0f}s")
            time.sleep(self._poll_s)

    def wait(
        self,
        batch_id: str,
        done: Callable[[Batch], bool],
        timeout_s: float,
        on_poll: Callable[[Batch], None] | None = None,
    ) -> Batch:
        deadline = time.monotonic() + timeout_s
        while True:
            batch: Batch = self._get(f"/batches/{batch_id}")
            if on_poll is not None:
                on_poll(batch)
            if done(batch):
                return batch
            if time.monotonic() > deadline:
                raise TimeoutError(f"batch {batch_id} not there within {timeout_s:.0f}s: {str(batch)[:400]}")
            time.sleep(self._poll_s)
