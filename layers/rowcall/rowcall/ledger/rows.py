"""Row items: a row is written once, when its outcome is known (or when it is refused).

One row, one conditional write of about half a kilobyte (one write unit): the condition makes a
duplicate, late or earlier-attempt outcome a no-op, and no row is ever written twice for one
attempt. Counting the outcome is the chunk's business (`ChunkLedger.add_outcomes`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rowcall.ledger.keys import batch_key, batch_pk, chunk_key, row_key, row_sk, rows_pk
from rowcall.ledger.table import Table
from rowcall.models import RowOutcome, RowState, RowStatus, iso, utcnow

# What results.csv shows of a row. botocore's parsing of every attribute of every row is most of
# the notifier's CPU on a large batch (bench/results_scale.py); the rest of the item is not read.
_OUTCOME_ATTRIBUTES = (
    "#sk, #status, #run_id, #outputs, #error_code, #error_message, #charged_cost_micro_usd, #reused_from, "
    "#saved_outputs"
)

# What the safety net needs of a row: finished or not, for which attempt.
# run_id, save_pending and updated_at: the safety net sends again a save that was lost (reused_from:
# a reused row's copies have no run of their own).
_PROGRESS_ATTRIBUTES = "#sk, #status, #attempt, #run_id, #save_pending, #updated_at, #reused_from"

# What a reused row needs of its source row: its saved copies, for the run it was reused from.
_SAVED_ATTRIBUTES = "#pk, #sk, #status, #run_id, #save_pending, #saved_outputs"

# Keeps a failed row's item under 1 KB (one write unit) whatever the provider says.
MAX_ERROR_MESSAGE = 500


# A start page entry saying the row's create did not make a run (refused for now: 402, the
# provider unavailable, the batch refused): it resolves the row's intent without a run.
NO_RUN = ""


@dataclass(frozen=True)
class StartedRun:
    """What the worker's create did for a row (kept per chunk, a page of rows per item): a run
    (`run_id`), a run whose id FLORA did not say (None, a 409), or no run (`NO_RUN`)."""

    record: int
    attempt: int
    run_id: str | None
    line: int
    started_at: float

    @property
    def has_run(self) -> bool:
        return self.run_id != NO_RUN


def _row_state(stored: dict[str, Any]) -> RowState:
    batch_id, chunk = stored["pk"].removeprefix("BATCH#").split("#CHUNK#")
    return RowState.model_validate(
        stored | {"batch_id": batch_id, "chunk": int(chunk), "record": int(stored["sk"].removeprefix("ROW#"))}
    )


class RowLedger:
    def __init__(self, table: Table, clock: Callable[[], datetime] = utcnow) -> None:
        self._table = table
        self._clock = clock

    def finish(
        self,
        batch_id: str,
        chunk: int,
        record: int,
        outcome: RowOutcome,
        *,
        attempt: int,
        line: int | None = None,
        key: str | None = None,
        save_pending: bool = False,
    ) -> bool:
        """pending|running -> completed|failed for this attempt (and this run, once it has one).
        `save_pending`: its outputs are to be saved before its chunk may settle.

        False when the row was finished already or is waiting for another attempt or run.
        """
        values: dict[str, Any] = {
            ":status": outcome.status.value,
            ":attempt": attempt,
            ":now": iso(self._clock()),
            ":pending": RowStatus.PENDING.value,
            ":running": RowStatus.RUNNING.value,
        }
        sets = ["#status = :status", "#attempt = :attempt", "#updated_at = :now"]
        described = {
            "outputs": outcome.outputs or None,
            "error_code": outcome.error_code,
            "error_message": (outcome.error_message or "")[:MAX_ERROR_MESSAGE] or None,
            "line": line,
            "key": key,
            "run_id": outcome.run_id,
            "save_pending": True if save_pending else None,
            "charged_cost_micro_usd": outcome.charged_cost_micro_usd,
            "reused_from": outcome.reused_from,
        }
        for name, value in described.items():
            if value is not None:
                sets.append(f"#{name} = :{name}")
                values[f":{name}"] = value
        condition = (
            "(attribute_not_exists(#status) OR #status IN (:pending, :running))"
            " AND (attribute_not_exists(#attempt) OR #attempt = :attempt)"
        )
        if outcome.run_id:
            condition += " AND (attribute_not_exists(#run_id) OR #run_id = :run_id)"
        written = self._table.update(
            row_key(batch_id, chunk, record), "SET " + ", ".join(sets), condition=condition, values=values
        )
        return written is not None

    def reopen(
        self,
        batch_id: str,
        chunk: int,
        record: int,
        *,
        seq: int,
        at: float,
        saved_counts: tuple[int, int] = (0, 0),
    ) -> bool:
        """completed|failed -> pending at the next attempt, once per reprocess `seq`. The new
        attempt is what refuses a late outcome of the earlier one (`finish` checks it).

        `saved_counts`: the row's saved and given-up outputs (`record_saved` added them to the
        batch), which leave the batch's counts in the same transaction as the row's copies leave
        the row: the batch counts its rows' current outputs, not every attempt's. Its chunk is
        settled, so no save of the row is pending meanwhile."""
        key = row_key(batch_id, chunk, record)
        update = (
            "SET #status = :pending, #attempt = #attempt + :one, #reopen_seq = :seq, #reopened_at = :at, "
            "#updated_at = :now REMOVE #run_id, #outputs, #error_code, #error_message, "
            "#charged_cost_micro_usd, #saved_outputs, #save_pending, #reused_from"
        )
        condition = (
            "#status IN (:completed, :failed) AND (attribute_not_exists(#reopen_seq) OR #reopen_seq < :seq)"
        )
        values = {
            ":pending": RowStatus.PENDING.value,
            ":one": 1,
            ":seq": seq,
            ":at": round(at, 3),
            ":now": iso(self._clock()),
            ":completed": RowStatus.COMPLETED.value,
            ":failed": RowStatus.FAILED.value,
        }
        saved, failed = saved_counts
        if not (saved or failed):
            return self._table.update(key, update, condition=condition, values=values) is not None
        return self._table.transact(
            [
                self._table.update_item(key, update, condition=condition, values=values),
                self._table.update_item(
                    batch_key(batch_id),
                    "ADD #outputs_saved_count :saved_n, #outputs_failed_count :failed_n",
                    values={":saved_n": -saved, ":failed_n": -failed},
                ),
            ]
        )

    def record_saved(
        self,
        batch_id: str,
        chunk: int,
        record: int,
        saved: Sequence[dict[str, Any]],
        *,
        attempt: int,
        run_id: str,
        saved_count: int,
        failed_count: int,
    ) -> bool:
        """A completed row's outputs saved (or given up): recorded once, with the batch's counts
        and its chunk's hint in the same transaction, so a repeated save neither records nor
        counts twice. False
        when it was recorded already or the row moved on (a reprocess).

        `run_id` empty: a reused row, which has no run of its own (its copies come from the
        earlier row's, `rowcall.saved_outputs.ReusedOutputs`)."""
        values: dict[str, Any] = {
            ":saved": list(saved),
            ":now": iso(self._clock()),
            ":true": True,
            ":completed": RowStatus.COMPLETED.value,
            ":attempt": attempt,
        }
        if run_id:
            same_run = "#run_id = :run_id"
            values[":run_id"] = run_id
        else:
            same_run = "attribute_not_exists(#run_id)"
        return self._table.transact(
            [
                self._table.update_item(
                    row_key(batch_id, chunk, record),
                    "SET #saved_outputs = :saved, #updated_at = :now REMOVE #save_pending",
                    condition="#save_pending = :true AND #status = :completed AND #attempt = :attempt "
                    f"AND {same_run}",
                    values=values,
                ),
                self._table.update_item(
                    batch_key(batch_id),
                    "ADD #outputs_saved_count :saved_n, #outputs_failed_count :failed_n",
                    values={":saved_n": saved_count, ":failed_n": failed_count},
                ),
                # The chunk's hint of rows still saving (`ChunkLedger.add_outcomes`).
                self._table.update_item(
                    chunk_key(batch_id, chunk), "ADD #saving :minus_one", values={":minus_one": -1}
                ),
            ]
        )

    def claim_name(self, batch_id: str, name: str, *, chunk: int, record: int) -> bool:
        """The row's claim on a saved-output directory name of the batch: True when the name is
        this row's (claimed now or by this row before a crash), False when another row has it."""
        claim = {"pk": f"{batch_pk(batch_id)}#NAME#{name}", "sk": "NAME", "chunk": chunk, "record": record}
        if self._table.put(claim, condition="attribute_not_exists(pk)"):
            return True
        held = self._table.get({"pk": claim["pk"], "sk": "NAME"})
        return held is not None and int(held["chunk"]) == chunk and int(held["record"]) == record

    def saved_of(self, rows: Sequence[tuple[str, int, int]]) -> dict[tuple[str, int, int], RowState]:
        """The saved copies of rows (batch id, chunk, record) of any batches: one BatchGetItem per
        100 rows, only what a reuse needs of each."""
        wanted = list(dict.fromkeys(rows))
        found = self._table.get_many([row_key(*r) for r in wanted], projection=_SAVED_ATTRIBUTES)
        states = map(_row_state, found)
        return {(s.batch_id, s.chunk, s.record): s for s in states}

    def get(self, batch_id: str, chunk: int, record: int) -> RowState | None:
        stored = self._table.get(row_key(batch_id, chunk, record))
        return _row_state(stored) if stored else None

    def rows_of_chunk(self, batch_id: str, chunk: int) -> Iterator[RowState]:
        for stored in self._table.prefixed(rows_pk(batch_id, chunk), "ROW#"):
            yield _row_state(stored)

    def rows_between(self, batch_id: str, chunk: int, first: int, last: int) -> dict[int, RowState]:
        """The stored rows of records first..last of a chunk: one query (two past 1 MB)."""
        found = self._table.query_all(
            "pk = :pk AND sk BETWEEN :first AND :last",
            {":pk": rows_pk(batch_id, chunk), ":first": row_sk(first), ":last": row_sk(last)},
        )
        return {row.record: row for row in map(_row_state, found)}

    def outcomes_of_chunk(self, batch_id: str, chunk: int) -> Iterator[RowState]:
        """The chunk's rows in file order with their outcomes only (no key, line, attempt or times)."""
        for stored in self._table.prefixed(rows_pk(batch_id, chunk), "ROW#", projection=_OUTCOME_ATTRIBUTES):
            record = int(stored["sk"].removeprefix("ROW#"))
            yield RowState.model_validate(stored | {"batch_id": batch_id, "chunk": chunk, "record": record})

    def progress_of_chunk(self, batch_id: str, chunk: int) -> Iterator[RowState]:
        """The chunk's rows with their status and attempt only (the read units are the same as
        for whole items; botocore's parsing of the rest is not)."""
        for stored in self._table.prefixed(rows_pk(batch_id, chunk), "ROW#", projection=_PROGRESS_ATTRIBUTES):
            record = int(stored["sk"].removeprefix("ROW#"))
            yield RowState.model_validate(stored | {"batch_id": batch_id, "chunk": chunk, "record": record})

    def record_starts(self, batch_id: str, chunk: int, started: Sequence[StartedRun], page_id: str) -> None:
        """One item per page of started runs, so a chunk's starts cost a few write units, not one
        per row. The safety net reads them to ask the provider about a run that went silent."""
        if not started:
            return
        runs = [[s.record, s.attempt, s.run_id, s.line, round(s.started_at, 3)] for s in started]
        self._table.put_many(
            [
                {
                    "pk": rows_pk(batch_id, chunk),
                    "sk": f"START#{page_id}",
                    "runs": json.dumps(runs, separators=(",", ":")),
                }
            ]
        )

    def record_intents(
        self, batch_id: str, chunk: int, records: Sequence[int], page_id: str, at: float
    ) -> None:
        """Rows about to be created: a worker killed between the provider's answer and its start
        page leaves rows that may or may not have a run. Their retry waits instead of asking again
        (which FLORA would answer 409 without the run id) until the intent is stale."""
        if records:
            self._table.put_many(
                [
                    {
                        "pk": rows_pk(batch_id, chunk),
                        "sk": f"INTENT#{page_id}",
                        "records": json.dumps(list(records)),
                        "at": round(at, 3),
                    }
                ]
            )

    def intents(self, batch_id: str, chunk: int) -> dict[int, float]:
        """Each row's latest intent to create a run, and when."""
        found: dict[int, float] = {}
        for page in self._table.prefixed(rows_pk(batch_id, chunk), "INTENT#"):
            for record in json.loads(page["records"]):
                found[record] = max(found.get(record, 0.0), float(page["at"]))
        return found

    def creates_of(self, batch_id: str, chunk: int, holder: str, since: float) -> tuple[set[int], set[int]]:
        """What one delivery (`holder`) did from `since` on: the rows its intent pages named (their
        creates may have been sent) and those its start pages say made no new run (`NO_RUN`, or a
        409: the run is an earlier create's). Read only for a slot grant its worker never settled."""
        intended: set[int] = set()
        for page in self._table.prefixed(rows_pk(batch_id, chunk), f"INTENT#{holder}-"):
            if float(page["at"]) >= since:
                intended.update(json.loads(page["records"]))
        no_new_run: set[int] = set()
        for page in self._table.prefixed(rows_pk(batch_id, chunk), f"START#{holder}-"):
            for record, _attempt, run_id, _line, at in json.loads(page["runs"]):
                if at >= since and run_id in (NO_RUN, None):
                    no_new_run.add(record)
        return intended, no_new_run

    def intent_times(self, batch_id: str, chunk: int) -> dict[int, list[float]]:
        """Every intent of each row, and when (a provider without idempotency keys looks for the
        runs made since the earliest of an attempt's intents)."""
        found: dict[int, list[float]] = {}
        for page in self._table.prefixed(rows_pk(batch_id, chunk), "INTENT#"):
            for record in json.loads(page["records"]):
                found.setdefault(record, []).append(float(page["at"]))
        return found

    def starts(self, batch_id: str, chunk: int) -> dict[int, StartedRun]:
        """The latest entry of each row of the chunk that the worker recorded (runs, and rows
        whose create made none: see `StartedRun.has_run`)."""
        found: dict[int, StartedRun] = {}
        for page in self._table.prefixed(rows_pk(batch_id, chunk), "START#"):
            for record, attempt, run_id, line, at in json.loads(page["runs"]):
                previous = found.get(record)
                if previous is None or (attempt, at) >= (previous.attempt, previous.started_at):
                    found[record] = StartedRun(record, attempt, run_id, line, at)
        return found
