"""estimated_completion: the pending rows at the rate observed since the batch last started running."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rowcall.batch_actions import BatchActions
from rowcall.models import BatchSpec, BatchState, BatchStatus, ChunkCounter, SourceObject, iso
from rowcall.views import batch_view

from .conftest import Aws, ingest

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def batch(status: BatchStatus = BatchStatus.RUNNING, **fields: object) -> BatchState:
    return BatchState.model_validate(
        {
            "batch_id": "b_1",
            "name": "n",
            "source": SourceObject(bucket="b", key="uploads/k.csv"),
            "spec": BatchSpec(technique_id="t", name="n"),
            "status": status,
            "total_count": 100,
            "chunk_count": 1,
            "created_at": iso(NOW - timedelta(hours=5)),
            "updated_at": iso(NOW),
            "running_at": iso(NOW - timedelta(seconds=100)),
        }
        | fields
    )


def estimate(state: BatchState, finished: int) -> str | None:
    counters = [ChunkCounter(index=0, rows=100, completed=finished)]
    value = batch_view(state, counters, NOW)["estimated_completion"]
    assert value is None or isinstance(value, str)
    return value


def test_the_pending_rows_at_the_observed_rate() -> None:
    # 40 rows in 100 s since it started running: 60 more take 150 s.
    assert estimate(batch(), 40) == iso(NOW + timedelta(seconds=150))


def test_unknown_until_a_row_finishes_and_when_not_running() -> None:
    assert estimate(batch(), 0) is None
    assert estimate(batch(BatchStatus.PAUSED), 40) is None  # nothing finishes until resumed
    assert estimate(batch(BatchStatus.INGESTING, total_count=None), 0) is None
    assert estimate(batch(running_at=None), 40) is None


def test_after_a_resume_the_rate_is_measured_from_the_resume() -> None:
    # 40 rows before the pause, 10 in the 20 s since the resume: 50 left take 100 s, not the
    # 125 s the whole run's rate (50 rows in 100 s, pause included) would say.
    resumed = batch(rate_since=iso(NOW - timedelta(seconds=20)), rate_base=40)
    assert estimate(resumed, 50) == iso(NOW + timedelta(seconds=100))
    assert estimate(resumed, 40) is None  # nothing finished since the resume yet


def test_a_reopened_batch_is_measured_from_its_reopening() -> None:
    # Reprocessed: 90 rows still finished from before, the 10 rerun rows pending again; 5 done
    # in the 10 s since: 5 more take 10 s.
    reopened = batch(rate_since=iso(NOW - timedelta(seconds=10)), rate_base=90)
    assert estimate(reopened, 95) == iso(NOW + timedelta(seconds=10))


def test_resume_restarts_the_rate_from_the_rows_finished_so_far(aws: Aws) -> None:
    batch_id = ingest(aws, b"prompt\n" + b"".join(f"p{n}\n".encode() for n in range(6)))
    aws.drain(aws.chunk_queue_url)
    aws.ledger.chunks.add_outcomes(batch_id, 0, completed=3, failed=1)
    assert aws.ledger.batches.pause(batch_id, "insufficient_credits", "402")
    resumed = BatchActions(aws.ledger, aws.chunk_queue, aws.finisher).resume(batch_id)
    assert resumed.status is BatchStatus.RUNNING
    assert resumed.rate_base == 4 and resumed.rate_since == resumed.updated_at
