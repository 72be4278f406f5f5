"""The batch item: its lifecycle as named conditional transitions, and the newest-first list."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from rowcall.dynamo import attr, plain
from rowcall.ledger.chunks import ChunkLedger
from rowcall.ledger.keys import (
    LIST_INDEX,
    LIST_PARTITION,
    OPEN_INDEX,
    OPEN_PARTITION,
    batch_key,
    batch_pk,
    open_batch_sk,
)
from rowcall.ledger.table import Table
from rowcall.models import (
    OPEN_BATCH_STATUSES,
    BatchState,
    BatchStatus,
    ChunkPlan,
    DoneMessage,
    ReprocessPlan,
    RowRules,
    iso,
    utcnow,
)

# A finished batch whose on-done is still unclaimed this long after is presumed to have lost its
# sender; the next event touching the batch (or the safety net) sends it again.
REOFFER_AFTER_S = 60
PLAN_PAGE = 2000
_PENDING_NOTIFICATION = {"status": "pending", "attempts": 0}
# The states a batch can still fail or be canceled from.
_NOT_FINISHED = "#status IN (:validating, :ingesting, :running, :paused)"
_NOT_FINISHED_VALUES = {
    ":validating": BatchStatus.VALIDATING.value,
    ":ingesting": BatchStatus.INGESTING.value,
    ":running": BatchStatus.RUNNING.value,
    ":paused": BatchStatus.PAUSED.value,
}


def encode_cursor(key: dict[str, Any] | None) -> str | None:
    if not key:
        return None
    return base64.urlsafe_b64encode(json.dumps(plain(key), separators=(",", ":")).encode()).decode()


def decode_cursor(cursor: str) -> dict[str, Any]:
    """Raises ValueError for anything that is not a cursor this ledger made."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except Exception as exc:
        raise ValueError("cursor is not valid") from exc
    if (
        not isinstance(raw, dict)
        or set(raw) != {"pk", "sk", "gsi1pk", "gsi1sk"}
        or raw["gsi1pk"] != LIST_PARTITION
        or not all(isinstance(v, str) for v in raw.values())
    ):
        raise ValueError("cursor is not valid")
    return {k: attr(v) for k, v in raw.items()}


@dataclass(frozen=True)
class Preflight:
    """What the pre-flight and the count decided, recorded with the plan: each input column's
    type (the technique's), the rows' rules, the price per run and the estimate."""

    input_types: dict[str, str]
    rules: RowRules
    run_cost_micro_usd: int | None
    estimate_micro_usd: int | None


def on_done_of(batch: BatchState) -> DoneMessage:
    return DoneMessage(batch_id=batch.batch_id, finish_seq=batch.finish_seq)


class BatchLedger:
    def __init__(self, table: Table, chunks: ChunkLedger, clock: Callable[[], datetime] = utcnow) -> None:
        self._table = table
        self._chunks = chunks
        self._clock = clock

    def _now(self) -> str:
        return iso(self._clock())

    def _transition(
        self, batch_id: str, update: str, condition: str, values: dict[str, Any]
    ) -> BatchState | None:
        """The batch as the write left it, or None when its condition did not hold."""
        stored = self._table.update(batch_key(batch_id), update, condition=condition, values=values)
        return BatchState.model_validate(stored) if stored is not None else None

    def open(self, batch: BatchState) -> tuple[BatchState, bool]:
        """Record a new batch; a batch that exists already is returned as it is (not created)."""
        values = batch.model_dump(mode="json") | {
            **batch_key(batch.batch_id),
            "gsi1pk": LIST_PARTITION,
            "gsi1sk": f"{batch.created_at}#{batch.batch_id}",
            # Listed as open work until it runs: an ingest cut off for good is the safety net's.
            "open_pk": OPEN_PARTITION,
            "open_sk": open_batch_sk(batch.batch_id),
        }
        if self._table.put(values, condition="attribute_not_exists(pk)"):
            return batch, True
        existing = self.get(batch.batch_id)
        if existing is None:  # pragma: no cover - a put that lost to a delete
            raise RuntimeError(f"batch {batch.batch_id} exists and does not")
        return existing, False

    def get(self, batch_id: str) -> BatchState | None:
        stored = self._table.get(batch_key(batch_id))
        return BatchState.model_validate(stored) if stored else None

    def record_plan(
        self,
        batch_id: str,
        *,
        header: list[str],
        chunks: Sequence[ChunkPlan],
        rows_skipped: int,
        preflight: Preflight | None = None,
    ) -> bool:
        """validating -> ingesting: the count is final, the chunks and their counters exist.

        Counters and plan are written before the transition; a pass cut off before it is redone
        whole, and rewriting them then is harmless because no chunk has been sent yet.
        """
        for c in chunks:
            self._chunks.create(batch_id, c)
        # The plan is kept apart from the batch item so the batch item stays small and cheap to
        # update; pages of 2,000 chunks keep each item far below DynamoDB's 400 KB.
        self._table.put_many(
            [
                {
                    "pk": batch_pk(batch_id),
                    "sk": f"PLAN#{n:06d}",
                    "chunks": json.dumps([c.model_dump() for c in chunks[i : i + PLAN_PAGE]]),
                }
                for n, i in enumerate(range(0, len(chunks), PLAN_PAGE))
            ]
        )
        update = (
            "SET #status = :ingesting, #header = :header, #total_count = :total, #chunk_count = :chunks, "
            "#rows_skipped = :skipped, #updated_at = :now"
        )
        values: dict[str, Any] = {
            ":ingesting": BatchStatus.INGESTING.value,
            ":validating": BatchStatus.VALIDATING.value,
            ":header": header,
            ":total": sum(c.rows for c in chunks),
            ":chunks": len(chunks),
            ":skipped": rows_skipped,
            ":now": self._now(),
        }
        if preflight is not None:
            # In the same write as the count: a retried ingest finds the estimate it must check
            # the budget against before sending any chunk.
            update += ", #spec.#input_types = :types, #row_rules = :rules"
            values |= {":types": preflight.input_types, ":rules": preflight.rules.model_dump(mode="json")}
            if preflight.run_cost_micro_usd is not None:
                update += ", #run_cost_micro_usd = :run_cost, #estimated_cost_micro_usd = :estimate"
                values |= {
                    ":run_cost": preflight.run_cost_micro_usd,
                    ":estimate": preflight.estimate_micro_usd,
                }
        moved = self._transition(batch_id, update, "#status = :validating", values)
        return moved is not None

    def chunk_plan(self, batch_id: str) -> list[ChunkPlan]:
        plan: list[ChunkPlan] = []
        for stored in self._table.prefixed(batch_pk(batch_id), "PLAN#"):
            plan.extend(ChunkPlan.model_validate(c) for c in json.loads(stored["chunks"]))
        return sorted(plan, key=lambda c: c.index)

    def record_enqueued(self, batch_id: str, chunks_enqueued: int) -> None:
        self._transition(
            batch_id,
            "SET #chunks_enqueued = :n, #updated_at = :now",
            "#chunks_enqueued < :n",
            {":n": chunks_enqueued, ":now": self._now()},
        )

    def mark_running(self, batch_id: str) -> bool:
        """ingesting -> running, once every chunk is on the queue; its chunks are the open work now."""
        now = self._now()
        moved = self._transition(
            batch_id,
            "SET #status = :running, #running_at = :now, #updated_at = :now REMOVE #open_pk, #open_sk",
            "#status = :ingesting",
            {":running": BatchStatus.RUNNING.value, ":ingesting": BatchStatus.INGESTING.value, ":now": now},
        )
        return moved is not None

    def fail(self, batch_id: str, reason: str, message: str) -> DoneMessage | None:
        """A batch that cannot run ends `failed` once; the caller sends the returned on-done."""
        done = self._transition(
            batch_id,
            "SET #status = :failed, #reason = :reason, #reason_message = :message, #finished_at = :now, "
            "#updated_at = :now, #notification = :notification, #open_pk = :open, #open_sk = :open_sk "
            "ADD #finish_seq :one REMOVE #results",
            _NOT_FINISHED,
            {
                ":failed": BatchStatus.FAILED.value,
                ":reason": reason,
                ":message": message,
                ":now": self._now(),
                ":notification": _PENDING_NOTIFICATION,
                ":one": 1,
                ":open": OPEN_PARTITION,
                ":open_sk": open_batch_sk(batch_id),
                **_NOT_FINISHED_VALUES,
            },
        )
        return on_done_of(done) if done else None

    def pause(self, batch_id: str, reason: str, message: str) -> bool:
        """running -> paused: the provider will not start more runs (402); runs started finish."""
        paused = self._transition(
            batch_id,
            "SET #status = :paused, #reason = :reason, #reason_message = :message, #updated_at = :now",
            "#status = :running",
            {
                ":paused": BatchStatus.PAUSED.value,
                ":running": BatchStatus.RUNNING.value,
                ":reason": reason,
                ":message": message,
                ":now": self._now(),
            },
        )
        return paused is not None

    def resume(
        self, batch_id: str, *, finished: int = 0, max_cost_micro_usd: int | None = None
    ) -> BatchState | None:
        """paused -> running; None when it was not paused. `finished` (rows finished so far)
        restarts the completion rate, so the time spent paused does not slow the estimate; the
        failure threshold's count restarts too. `max_cost_micro_usd` sets the
        budget in the same write (the approval of a batch paused `over_budget`). A batch paused
        before its first run (from `ingesting`) leaves the open index here: its chunks are the
        open work now."""
        sets = (
            "#status = :running, #updated_at = :now, #rate_since = :now, #rate_base = :finished, "
            "#running_at = if_not_exists(#running_at, :now), "
            "#threshold_finished_base = if_not_exists(#threshold_finished, :zero), "
            "#threshold_failed_base = if_not_exists(#threshold_failed, :zero)"
        )
        values: dict[str, Any] = {
            ":running": BatchStatus.RUNNING.value,
            ":paused": BatchStatus.PAUSED.value,
            ":now": self._now(),
            ":finished": finished,
            ":zero": 0,
        }
        if max_cost_micro_usd is not None:
            sets += ", #max_cost_micro_usd = :budget"
            values[":budget"] = max_cost_micro_usd
        return self._transition(
            batch_id,
            f"SET {sets} REMOVE #reason, #reason_message, #open_pk, #open_sk",
            "#status = :paused",
            values,
        )

    def add_threshold_counts(self, batch_id: str, *, finished: int, failed: int) -> BatchState | None:
        """Rows finished and failed, counted on the batch item for its failure threshold (only a
        batch with one pays this write); the batch as it now stands. Like the chunk counters, a
        hint: an ADD repeated after a lost answer counts twice, which can only pause sooner."""
        return self._transition(
            batch_id,
            "ADD #threshold_finished :finished, #threshold_failed :failed",
            "attribute_exists(pk)",
            {":finished": finished, ":failed": failed},
        )

    def add_duplicate_runs(self, batch_id: str, count: int) -> None:
        """Runs a provider without idempotency keys made twice for one row attempt, found by the
        worker's search before a create (contract §5b: each one reported). A hint like the
        threshold counts: an ADD repeated after a lost answer counts twice."""
        if count > 0:
            self._transition(
                batch_id, "ADD #duplicate_runs :count", "attribute_exists(pk)", {":count": count}
            )

    def pause_before_run(self, batch_id: str, reason: str, message: str) -> bool:
        """ingesting -> paused before any chunk is sent (`over_budget`): nothing has run. It stays
        in the open index until resumed (its chunks wait, unsent, for `resume`)."""
        paused = self._transition(
            batch_id,
            "SET #status = :paused, #reason = :reason, #reason_message = :message, #updated_at = :now",
            "#status = :ingesting AND #chunks_enqueued = :none",
            {
                ":paused": BatchStatus.PAUSED.value,
                ":ingesting": BatchStatus.INGESTING.value,
                ":none": 0,
                ":reason": reason,
                ":message": message,
                ":now": self._now(),
            },
        )
        return paused is not None

    def cancel(self, batch_id: str) -> BatchState | None:
        """validating|ingesting|running|paused -> canceled; None from any other state.

        Nothing starts from now on (workers read the status before each group of creates); the
        finish that sends `batch.canceled` waits until the runs in flight are recorded
        (`cancel_pending`). Listed as open work so the safety net finishes it if no event does."""
        now = self._now()
        return self._transition(
            batch_id,
            "SET #status = :canceled, #cancel_pending = :true, #canceled_at = :now, #updated_at = :now, "
            "#open_pk = :open, #open_sk = :open_sk",
            _NOT_FINISHED,
            {
                ":canceled": BatchStatus.CANCELED.value,
                ":true": True,
                ":now": now,
                ":open": OPEN_PARTITION,
                ":open_sk": open_batch_sk(batch_id),
                **_NOT_FINISHED_VALUES,
            },
        )

    def finish_canceled(
        self, batch_id: str, *, completed: int, failed: int, charged_micro_usd: int | None = None
    ) -> DoneMessage | None:
        """A canceled batch whose runs in flight are all recorded: its final counts (a recount),
        its on-done. Exactly one caller wins (`cancel_pending` is removed)."""
        sets = (
            "#completed_count = :c, #failed_count = :f, #finished_at = :now, #updated_at = :now, "
            "#notification = :notification"
        )
        values: dict[str, Any] = {
            ":c": completed,
            ":f": failed,
            ":now": self._now(),
            ":notification": _PENDING_NOTIFICATION,
            ":one": 1,
            ":canceled": BatchStatus.CANCELED.value,
            ":true": True,
        }
        if charged_micro_usd is not None:
            sets += ", #charged_cost_micro_usd = :m"
            values[":m"] = charged_micro_usd
        finished = self._transition(
            batch_id,
            f"SET {sets} ADD #finish_seq :one REMOVE #cancel_pending, #results",
            "#status = :canceled AND #cancel_pending = :true",
            values,
        )
        return on_done_of(finished) if finished else None

    def reopen(
        self, batch: BatchState, plan: ReprocessPlan, *, uncounted: tuple[int, int], uncharged: int = 0
    ) -> BatchState | None:
        """completed|partial -> running for a reprocess; None when the batch moved on meanwhile
        (another reprocess, which read the same finish, got there first).

        The reopening chunks leave the batch's counts here, in the one write that reopens it
        (`uncounted`: their completed and failed rows as settled): the batch cannot finish
        again until each of them has reopened and settled once more, whatever dies half way."""
        completed, failed = uncounted
        return self._transition(
            batch.batch_id,
            "SET #status = :running, #reprocess = :plan, #running_at = :now, #updated_at = :now, "
            "#rate_since = :now, #rate_base = :kept, #open_pk = :open, #open_sk = :open_sk "
            "ADD #chunks_settled :minus_chunks, #completed_count :minus_c, #failed_count :minus_f, "
            "#charged_cost_micro_usd :minus_m",
            "#status IN (:completed, :partial) AND #finish_seq = :seq",
            {
                ":running": BatchStatus.RUNNING.value,
                ":plan": plan.model_dump(),
                ":now": self._now(),
                ":open": OPEN_PARTITION,
                ":open_sk": open_batch_sk(batch.batch_id),
                # The estimate's rate counts only rows finished from now on.
                ":kept": batch.completed_count + batch.failed_count - sum(map(sum, plan.chunks.values())),
                ":minus_chunks": -len(plan.chunks),
                ":minus_c": -completed,
                ":minus_f": -failed,
                # Their charges leave with their counts and come back with their settle: the
                # batch's charge is its rows' current runs' (an earlier attempt's is history).
                ":minus_m": -uncharged,
                ":completed": BatchStatus.COMPLETED.value,
                ":partial": BatchStatus.PARTIAL.value,
                ":seq": batch.finish_seq,
            },
        )

    def finish_if_done(self, batch_id: str) -> DoneMessage | None:
        """running -> completed|partial when every chunk is settled; exactly one caller wins.

        Also returns the on-done of a batch that finished a while ago but whose notification was
        never picked up, so a caller that died before sending it is covered by a later event.
        """
        batch = self.get(batch_id)
        if batch is None:
            return None
        if batch.status.is_terminal:
            return on_done_of(batch) if self._on_done_stranded(batch) else None
        if batch.status not in OPEN_BATCH_STATUSES or batch.chunk_count is None:
            return None
        if batch.chunks_settled < batch.chunk_count:
            return None
        status = BatchStatus.PARTIAL if batch.failed_count else BatchStatus.COMPLETED
        now = self._now()
        finished = self._transition(
            batch_id,
            "SET #status = :status, #finished_at = :now, #updated_at = :now, #notification = :notification, "
            "#open_pk = :open, #open_sk = :open_sk ADD #finish_seq :one REMOVE #results",
            "#status IN (:ingesting, :running) AND #chunks_settled = :chunks AND #chunk_count = :chunks",
            {
                ":status": status.value,
                ":now": now,
                ":notification": _PENDING_NOTIFICATION,
                ":open": OPEN_PARTITION,
                ":open_sk": open_batch_sk(batch_id),
                ":one": 1,
                ":ingesting": BatchStatus.INGESTING.value,
                ":running": BatchStatus.RUNNING.value,
                ":chunks": batch.chunk_count,
            },
        )
        return on_done_of(finished) if finished else None

    def open_batches(self) -> list[str]:
        """Batches still ingesting, or finished with their on-done not yet delivered or given up."""
        return [
            entry["open_sk"].removeprefix("BATCH#")
            for entry in self._table.query_all(
                "open_pk = :open AND begins_with(open_sk, :batches)",
                {":open": OPEN_PARTITION, ":batches": "BATCH#"},
                index=OPEN_INDEX,
            )
        ]

    def list(self, limit: int, cursor: str | None) -> tuple[list[BatchState], str | None]:
        items, last = self._table.query(
            "gsi1pk = :pk",
            {":pk": LIST_PARTITION},
            index=LIST_INDEX,
            forward=False,
            limit=limit,
            start=decode_cursor(cursor) if cursor else None,
        )
        return [BatchState.model_validate(i) for i in items], encode_cursor(last)

    def on_done_stranded(self, batch: BatchState) -> bool:
        return self._on_done_stranded(batch)

    def _on_done_stranded(self, batch: BatchState) -> bool:
        if batch.notification.status != "pending" or batch.finished_at is None:
            return False
        finished = datetime.fromisoformat(batch.finished_at.replace("Z", "+00:00"))
        return self._clock() - finished > timedelta(seconds=REOFFER_AFTER_S)
