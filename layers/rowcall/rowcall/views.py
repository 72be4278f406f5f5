"""What API users and on-done subscribers see of a batch (contract §4)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from rowcall.models import BatchState, BatchStatus, ChunkCounter, iso, to_usd


def _parse(moment: str) -> datetime:
    return datetime.fromisoformat(moment.replace("Z", "+00:00"))


def batch_view(batch: BatchState, counters: list[ChunkCounter], now: datetime) -> dict[str, Any]:
    """Counts come from the chunk counters while rows are still finishing, from the batch once settled.

    A chunk a reprocess has yet to reopen still counts the rows it will rerun; those are left
    out (the plan says how many), so rows being reprocessed show as pending from the start."""
    charged = batch.charged_cost_micro_usd
    if batch.counts_settled:
        completed, failed = batch.completed_count, batch.failed_count
    else:
        completed = failed = 0
        plan = batch.reprocess
        for c in counters:
            rerun_c, rerun_f = plan.chunks[str(c.index)] if plan and plan.pending_reopen(c) else (0, 0)
            completed += c.completed - rerun_c
            failed += c.failed - rerun_f
        # Settled chunks' charges are the batch's already; open chunks hold theirs.
        charged += sum(c.charged_micro_usd for c in counters if not c.settled)
    pending = None if batch.total_count is None else max(0, batch.total_count - completed - failed)
    return {
        "batch_id": batch.batch_id,
        "name": batch.name,
        "source": batch.source.model_dump(),
        "technique_id": batch.spec.technique_id,
        "status": shown_status(batch).value,
        "total_count": batch.total_count,
        "completed_count": completed,
        "failed_count": failed,
        "pending_count": pending,
        "rows_skipped": batch.rows_skipped,
        "created_at": batch.created_at,
        "updated_at": batch.updated_at,
        "estimated_completion": _estimate(batch, completed + failed, pending, now),
        "reason": batch.reason,
        "reason_detail": batch.reason_message,
        "provider": batch.spec.provider,
        "run_cost_usd": batch.run_cost_usd,
        "estimated_cost_usd": to_usd(batch.estimated_cost_micro_usd),
        # Replicate publishes no price: nothing is charged that rowcall could sum (contract §5b).
        "charged_cost_usd": None if batch.spec.provider == "replicate" else to_usd(charged),
        "max_cost_usd": batch.max_cost_usd,
        "max_failed_percent": batch.spec.max_failed_percent,
        "reused_count": batch.reused_count,
        "outputs_saved_count": batch.outputs_saved_count,
        "outputs_failed_count": batch.outputs_failed_count,
        "duplicate_runs": batch.duplicate_runs,
        "results": batch.results.model_dump(),
        "notification": batch.notification.model_dump(include={"status", "attempts", "delivered_at"}),
    }


# Finished states a client may act on at once: each shows only once the results CSV is written.
_RESULTS_FIRST = (BatchStatus.COMPLETED, BatchStatus.PARTIAL, BatchStatus.FAILED)


def shown_status(batch: BatchState) -> BatchStatus:
    """The status the contract shows (section 7): a finished batch stays `running` until the
    notifier has written its results CSV and named it, so a client that sees `completed` can
    download at once. A cancel shows at once; its results are named when written."""
    if batch.status in _RESULTS_FIRST and batch.results.csv_key is None:
        return BatchStatus.RUNNING
    return batch.status


def _estimate(batch: BatchState, finished: int, pending: int | None, now: datetime) -> str | None:
    """Now plus the pending rows at the rate rows have finished since the batch last started
    running. Null while it is not running (paused: nothing finishes until it is resumed), when
    nothing is pending, and when no row has finished since (no rate observed yet)."""
    since = batch.rate_since or batch.running_at
    if batch.status is not BatchStatus.RUNNING or not pending or since is None:
        return None
    finished_since = finished - (batch.rate_base if batch.rate_since else 0)
    elapsed = (now - _parse(since)).total_seconds()
    if finished_since <= 0 or elapsed <= 0:
        return None
    return iso(now + timedelta(seconds=pending * elapsed / finished_since))
