"""Watching a batch until it ends: counts, rate and ETA, live on a terminal and as lines elsewhere."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from rowcall_client.api import RowcallApi

TERMINAL_STATUSES = frozenset({"completed", "partial", "failed", "canceled"})

Batch = dict[str, Any]


def is_terminal(batch: Batch) -> bool:
    return batch.get("status") in TERMINAL_STATUSES


@dataclass
class Rate:
    """Rows finished per second since the first observation, and the time left at that rate."""

    clock: Callable[[], float] = time.monotonic
    _first: tuple[float, int] | None = field(default=None, init=False)

    def observe(self, finished: int, total: int | None) -> tuple[float | None, float | None]:
        now = self.clock()
        if self._first is None or finished < self._first[1]:
            self._first = (now, finished)  # a reprocess lowers the count: start over
        started_at, started_with = self._first
        elapsed = now - started_at
        if elapsed <= 0 or finished == started_with:
            return None, None
        rate = (finished - started_with) / elapsed
        eta = (total - finished) / rate if total is not None and rate > 0 else None
        return rate, eta


def counts(batch: Batch) -> tuple[int, int, int | None]:
    done = int(batch.get("completed_count") or 0)
    failed = int(batch.get("failed_count") or 0)
    total = batch.get("total_count")
    return done, failed, None if total is None else int(total)


def _usd(value: Any) -> str:
    return f"${float(value):.6f}".rstrip("0").rstrip(".") if value is not None else "-"


def cost_summary(batch: Batch) -> str:
    """`, $1.2 charged of est. $4 (budget $5)`: empty when the batch has no price at all."""
    charged, estimate, budget = (
        batch.get(k) for k in ("charged_cost_usd", "estimated_cost_usd", "max_cost_usd")
    )
    if charged is None and estimate is None and budget is None:
        return ""
    text = f", {_usd(charged)} charged"
    if estimate is not None:
        text += f" of est. {_usd(estimate)}"
    if budget is not None:
        text += f" (budget {_usd(budget)})"
    return text


def describe(batch: Batch, rate: float | None, eta: float | None) -> str:
    done, failed, total = counts(batch)
    parts = [
        f"{batch.get('status')}",
        f"{done} done",
        f"{failed} failed",
        f"of {'?' if total is None else total}",
        f"{rate:.1f} rows/s" if rate is not None else "- rows/s",
        f"ETA {_duration(eta)}" if eta is not None else "ETA -",
    ]
    return ", ".join(parts[:3]) + " " + ", ".join(parts[3:]) + cost_summary(batch)


def _duration(seconds: float) -> str:
    whole = int(seconds + 0.5)
    if whole >= 3600:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    if whole >= 60:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole}s"


def watch(
    api: RowcallApi,
    batch_id: str,
    console: Console,
    poll_s: float = 0.5,
    timeout_s: float | None = None,
) -> Batch:
    """Polls the batch until it ends; a live bar on a terminal, a line per change otherwise.

    Raises TimeoutError when `timeout_s` passes first."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    rate = Rate()
    if console.is_terminal:
        return _watch_live(api, batch_id, console, poll_s, deadline, rate)
    last = ""
    while True:
        batch = api.get_batch(batch_id)
        done, failed, total = counts(batch)
        line = describe(batch, *rate.observe(done + failed, total))
        if line.split(" rows/s")[0] != last.split(" rows/s")[0]:
            console.print(f"{batch_id}: {line}", highlight=False)
            last = line
        if is_terminal(batch):
            return batch
        _pause(poll_s, deadline, batch_id)


def _watch_live(
    api: RowcallApi,
    batch_id: str,
    console: Console,
    poll_s: float,
    deadline: float | None,
    rate: Rate,
) -> Batch:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[counts]}"),
        TextColumn("{task.fields[speed]}"),
        TextColumn("ETA {task.fields[eta]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("validating", total=None, counts="", speed="", eta="-")
        while True:
            batch = api.get_batch(batch_id)
            done, failed, total = counts(batch)
            speed, eta = rate.observe(done + failed, total)
            bar.update(
                task,
                description=str(batch.get("status")),
                completed=done + failed,
                total=total,
                counts=f"{done} done, {failed} failed / {'?' if total is None else total}",
                speed="-" if speed is None else f"{speed:.1f} rows/s",
                eta="-" if eta is None else _duration(eta),
            )
            if is_terminal(batch):
                return batch
            _pause(poll_s, deadline, batch_id)


def _pause(poll_s: float, deadline: float | None, batch_id: str) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError(f"batch {batch_id} did not end in time")
    time.sleep(poll_s)
