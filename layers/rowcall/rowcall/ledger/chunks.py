"""Chunk items: a chunk's plan, its counters of finished rows, its worker lease, its place in the
index of open work.

Counting is one `ADD` per chunk per batch of outcomes, not a transaction per row: a row's
outcome is one conditional row write, then its chunk's counter goes up by how many rows that
batch of writes actually moved. A crash between the two, or an `ADD` repeated after a lost
answer, makes the counter wrong; so the counter only says *when to look*: a chunk is settled
into its batch from a recount of its rows, and the safety net recounts a chunk gone quiet.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from rowcall.ledger.keys import (
    OPEN_INDEX,
    OPEN_PARTITION,
    batch_key,
    batch_pk,
    chunk_key,
    chunk_sk,
    open_chunk_sk,
)
from rowcall.ledger.table import Table
from rowcall.models import BatchStatus, ChunkCounter, ChunkPlan, RowState, RowStatus, iso, utcnow


def _counter(stored: dict[str, Any]) -> ChunkCounter:
    return ChunkCounter.model_validate(stored)


class ChunkLedger:
    def __init__(self, table: Table, clock: Callable[[], datetime] = utcnow) -> None:
        self._table = table
        self._clock = clock

    def create(self, batch_id: str, chunk: ChunkPlan) -> None:
        """Only ever created: a second delivery of the S3 event, still planning while rows of
        the first are finishing, must not zero counts that outcomes have already added."""
        self._table.put(
            {
                **chunk_key(batch_id, chunk.index),
                "index": chunk.index,
                "rows": chunk.rows,
                "completed": 0,
                "failed": 0,
                "started": 0,
                "created_at": time.time(),
                "open_pk": OPEN_PARTITION,
                "open_sk": open_chunk_sk(batch_id, chunk.index),
            },
            condition="attribute_not_exists(pk)",
        )

    def counter(self, batch_id: str, chunk: int) -> ChunkCounter | None:
        stored = self._table.get(chunk_key(batch_id, chunk))
        return _counter(stored) if stored else None

    def counters(self, batch_id: str) -> list[ChunkCounter]:
        return [_counter(c) for c in self._table.prefixed(batch_pk(batch_id), "CHUNK#")]

    def open_chunks(self) -> Iterable[tuple[str, int]]:
        """(batch_id, chunk) of every chunk not yet settled, across all batches."""
        for entry in self._table.query_all(
            "open_pk = :open AND begins_with(open_sk, :chunks)",
            {":open": OPEN_PARTITION, ":chunks": "CHUNK#"},
            index=OPEN_INDEX,
        ):
            _, batch_id, chunk = entry["open_sk"].split("#")
            yield batch_id, int(chunk)

    def add_outcomes(
        self,
        batch_id: str,
        chunk: int,
        *,
        completed: int,
        failed: int,
        charged_micro_usd: int = 0,
        saving: int = 0,
    ) -> ChunkCounter | None:
        """Count outcomes the caller's row writes moved, and what their runs were charged; the
        counter as it now stands. `saving`: how many of the completed rows wait for their outputs
        to be saved (a hint, as the counts are: the saver settles the chunk once it reaches 0,
        the recount decides)."""
        update = "ADD #completed :c, #failed :f, #charged_micro_usd :m SET #last_outcome_at = :now"
        values: dict[str, Any] = {":c": completed, ":f": failed, ":m": charged_micro_usd, ":now": time.time()}
        if saving:
            update = (
                "ADD #completed :c, #failed :f, #charged_micro_usd :m, #saving :s SET #last_outcome_at = :now"
            )
            values[":s"] = saving
        stored = self._table.update(
            chunk_key(batch_id, chunk), update, condition="attribute_exists(#rows)", values=values
        )
        return _counter(stored) if stored else None

    def add_started(self, batch_id: str, chunk: int, started: int) -> None:
        """Count runs started outside a worker's delivery (its release counts its own)."""
        if started <= 0:
            return
        now = time.time()
        self._table.update(
            chunk_key(batch_id, chunk),
            "ADD #started :n SET #last_start_at = :now, #last_run_at = :now",
            condition="attribute_exists(#rows)",
            values={":n": started, ":now": now},
        )

    def counters_between(self, batch_id: str, first: int, last: int) -> dict[int, ChunkCounter]:
        """The counters of chunks first..last of a batch in one query (paged past 1 MB): for
        many open chunks of one batch, a read unit per ~16 counters instead of one each."""
        found = self._table.query_all(
            "pk = :pk AND sk BETWEEN :first AND :last",
            {":pk": batch_pk(batch_id), ":first": chunk_sk(first), ":last": chunk_sk(last)},
        )
        return {counter.index: counter for counter in map(_counter, found)}

    def settle(self, batch_id: str, counter: ChunkCounter, rows: Iterable[RowState]) -> bool | None:
        """Fold a finished chunk into its batch's counts, once, from a recount of its rows.

        True: settled now. False: it is not finished after all, and the counter now says what
        the rows say (unless an outcome came in meanwhile). None: settled already.
        """
        if counter.settled:
            return None
        completed = failed = charged = reused = 0
        saving = False
        for row in rows:
            completed += row.status is RowStatus.COMPLETED
            failed += row.status is RowStatus.FAILED
            charged += (row.charged_cost_micro_usd or 0) if row.finished else 0
            saving |= row.save_pending
            reused += row.status is RowStatus.COMPLETED and row.reused_from is not None
        if completed + failed < counter.rows:
            self._table.update(
                chunk_key(batch_id, counter.index),
                "SET #completed = :c, #failed = :f, #charged_micro_usd = :m",
                condition="#completed = :was_c AND #failed = :was_f AND attribute_not_exists(#settled)",
                values={
                    ":c": completed,
                    ":f": failed,
                    ":m": charged,
                    ":was_c": counter.completed,
                    ":was_f": counter.failed,
                },
            )
            return False
        if saving:
            return False  # outputs still being saved: the saver settles it once they are
        settled = self._table.transact(
            [
                self._table.update_item(
                    chunk_key(batch_id, counter.index),
                    "SET #settled = :true, #completed = :c, #failed = :f, #charged_micro_usd = :m, "
                    "#reused = :r REMOVE #open_pk, #open_sk",
                    # `reused` is what the chunk's last settle added to the batch's reused_count:
                    # a chunk settled again after a reprocess adds only the difference.
                    condition="attribute_not_exists(#settled) AND "
                    "(attribute_not_exists(#reused) OR #reused = :was_r)",
                    values={
                        ":true": True,
                        ":c": completed,
                        ":f": failed,
                        ":m": charged,
                        ":r": reused,
                        ":was_r": counter.reused,
                    },
                ),
                # A canceled batch's final counts are a recount made when it finishes; a chunk
                # settling after that would count its rows twice.
                self._table.update_item(
                    batch_key(batch_id),
                    "ADD #chunks_settled :one, #completed_count :c, #failed_count :f, "
                    "#charged_cost_micro_usd :m, #reused_count :dr SET #updated_at = :now",
                    condition="#status <> :canceled",
                    values={
                        ":one": 1,
                        ":c": completed,
                        ":f": failed,
                        ":m": charged,
                        ":dr": reused - counter.reused,
                        ":now": iso(self._clock()),
                        ":canceled": BatchStatus.CANCELED.value,
                    },
                ),
            ]
        )
        return True if settled else None

    def reopen(
        self, batch_id: str, chunk: int, *, seq: int, completed: int, failed: int, charged_micro_usd: int = 0
    ) -> bool:
        """settled -> open for reprocess `seq`, once: its counter now counts only the rows that
        keep their outcome (the reopened ones are pending); back in the index of open work. The
        batch left out its counts when it reopened (`BatchLedger.reopen`)."""
        reopened = self._table.update(
            chunk_key(batch_id, chunk),
            "SET #reopened_seq = :seq, #completed = :c, #failed = :f, #charged_micro_usd = :m, "
            "#started = :kept, #open_pk = :open, #open_sk = :open_sk, #last_start_at = :at REMOVE #settled",
            condition="attribute_exists(#settled) AND "
            "(attribute_not_exists(#reopened_seq) OR #reopened_seq < :seq)",
            values={
                ":seq": seq,
                ":c": completed,
                ":f": failed,
                ":m": charged_micro_usd,
                # The rows that keep their outcome: the reruns are counted again as they start.
                ":kept": completed + failed,
                ":open": OPEN_PARTITION,
                ":open_sk": open_chunk_sk(batch_id, chunk),
                ":at": time.time(),
            },
        )
        return reopened is not None

    def close(self, batch_id: str, chunk: int) -> None:
        """Out of the index of open work: its batch ended without it (failed or canceled)."""
        self._table.update(
            chunk_key(batch_id, chunk), "REMOVE #open_pk, #open_sk", condition="attribute_exists(#rows)"
        )

    def claim(self, batch_id: str, chunk: int, *, holder: str, until_epoch: float) -> bool:
        """One worker at a time per chunk: a copy of the message delivered at the same moment
        would otherwise ask the provider again for every row the first is still starting."""
        claimed = self._table.update(
            chunk_key(batch_id, chunk),
            "SET #worker = :holder, #worker_until = :until",
            condition="attribute_exists(#rows) AND "
            "(attribute_not_exists(#worker_until) OR #worker_until < :now OR #worker = :holder)",
            values={
                ":holder": holder,
                ":until": math.ceil(until_epoch),
                ":now": int(self._clock().timestamp()),
            },
        )
        return claimed is not None

    def release(
        self, batch_id: str, chunk: int, *, holder: str, back_in_s: float = 0.0, started: int = 0
    ) -> None:
        """The delivery's end is activity too: a chunk cycling through the queue (waiting for
        slots, deferred) is never mistaken by the safety net for one whose message was lost.
        `back_in_s`: the delivery sent the chunk again with that delay, so the chunk counts as
        active until its copy is due (otherwise a wait of a few seconds plus a busy queue looked
        stalled, and each resend added a copy that cycled too: 333 deliveries of 14 chunks in a
        chaos run on a loaded machine).

        `started`: the runs the delivery started (and rows it refused), added to the chunk's
        `started`. A delivery that dies before its release leaves `started` short: the recorder
        then reads its batch more often than needed (`ChunkCounter.runs_maybe_out`), nothing
        else. `last_run_at` moves only when runs started: waiting for slots is not progress."""
        now = time.time()
        update = "SET #last_start_at = :at"
        values: dict[str, Any] = {":holder": holder, ":at": now + max(0.0, back_in_s)}
        if started > 0:
            update += ", #last_run_at = :now ADD #started :started"
            values |= {":now": now, ":started": started}
        self._table.update(
            chunk_key(batch_id, chunk),
            update + " REMOVE #worker, #worker_until",
            condition="#worker = :holder",
            values=values,
        )
