"""The safety net: a scheduled sweep over the work that is waiting, and only that.

It reads the sparse index of open chunks and open batches (never a scan that grows with
history) and repairs what can strand a batch:
- a run silent longer than `reconcile_after_s` (FLORA gave its webhook up, or never sent it) is
  asked for once (`GET` of the run); its answer is recorded through the same exactly-once path as
  a webhook; a run still unknown after `callback_deadline_s` fails with `callback_timeout`;
- a chunk whose counter missed outcomes (a crash between a row write and its count) is recounted
  and settled;
- rows never started because their chunk's message was dead-lettered, lost with a killed worker
  or never consumed: the chunk message is sent again (workers skip rows already started);
- a finished batch whose on-done is stuck is handed to the notifier again (its claim drops
  duplicates); an ingest cut off for good ends its batch `failed` (`ingest_interrupted`).
With no faults it finds nothing to do and asks the provider nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from aws_lambda_powertools import Logger

from rowcall.admission import Admission
from rowcall.batch_actions import BatchActions, WrongState
from rowcall.finishing import BatchFinisher, RowResult
from rowcall.ledger import Ledger, StartedRun
from rowcall.ledger.budget import utc_day
from rowcall.ledger.keys import rows_pk
from rowcall.models import (
    BatchState,
    BatchStatus,
    ChunkCounter,
    ChunkMessage,
    DoneMessage,
    RowOutcome,
    RowState,
    RowStatus,
    RunObject,
    to_micro_usd,
)
from rowcall.outcomes import RunNotFinished, fetched_outcome
from rowcall.providers.port import ProviderConnector, Providers, ProviderUnavailable, RunNotFound
from rowcall.queues import SEND_BATCH_LIMIT, ChunkQueue, DoneQueue
from rowcall.saved_outputs import SaveMessage, SaveQueue

logger = Logger(child=True)

# Slack over the last possible attempt's end: clock skew between functions and the sweep's minute.
INGEST_STALL_MARGIN_S = 300


def ingest_stall_after(max_event_age_s: float, ingest_timeout_s: float) -> float:
    """How long an ingest may stay quiet before no attempt of its S3 event can still run.

    Lambda starts an async attempt (first, retry, or after throttling) only while the event is
    younger than `MaximumEventAgeInSeconds`, counted from when Lambda received it - before the batch
    was first written, so before any `updated_at` of it. An attempt started then runs at most the
    function's timeout. Quiet for both (and a margin), the ingest is gone, not queued.
    """
    return max_event_age_s + ingest_timeout_s + INGEST_STALL_MARGIN_S


# Lambda's defaults (6 hours, 15 minutes) where the sweep is not told the ingest's own settings.
INGEST_STALL_S = ingest_stall_after(6 * 3600, 15 * 60)
# The notifier's claim lease; past it, a delivery that held it has died.
NOTIFY_STALL_S = 330


@dataclass(frozen=True)
class SafetyNetTimes:
    reconcile_after_s: float
    callback_deadline_s: float
    ingest_stall_s: float = INGEST_STALL_S


@dataclass
class SweepReport:
    open_chunks: int = 0
    looked_into: int = 0
    """Open chunks quiet long enough that their rows and start pages were read."""
    asked: int = 0
    recorded: int = 0
    timed_out: int = 0
    recounted: int = 0
    chunks_resent: int = 0
    saves_resent: int = 0
    on_dones_resent: int = 0
    ingests_failed: int = 0
    closed: int = 0
    woken: int = 0
    resumed: int = 0
    slots_given_back: int = 0
    """Slots of grants whose workers died before settling them (`ledger/grants.py`)."""
    problems: list[str] = field(default_factory=list)

    @property
    def findings(self) -> int:
        return (
            self.recorded
            + self.timed_out
            + self.chunks_resent
            + self.saves_resent
            + self.on_dones_resent
            + self.ingests_failed
            + self.woken
            + self.resumed
            + self.slots_given_back
        )


class SafetyNet:
    def __init__(
        self,
        *,
        ledger: Ledger,
        finisher: BatchFinisher,
        chunk_queue: ChunkQueue,
        done_queue: DoneQueue,
        provider: ProviderConnector,
        times: SafetyNetTimes,
        clock: Callable[[], float] = time.time,
        save_queue: SaveQueue | None = None,
        admission: Admission | None = None,
        daily_budget_usd: float | None = None,
        replicate: ProviderConnector | None = None,
    ) -> None:
        self._save_queue = save_queue
        self._save_backlog: int | None = None
        self._ledger = ledger
        self._finisher = finisher
        self._chunk_queue = chunk_queue
        self._done_queue = done_queue
        self._providers = Providers({"flora": provider} | ({"replicate": replicate} if replicate else {}))
        self._times = times
        self._clock = clock
        self._admission = admission
        self._daily_budget = to_micro_usd(daily_budget_usd) if daily_budget_usd is not None else None
        self._waiting: set[tuple[str, int]] = set()

    def sweep(self) -> SweepReport:
        report = SweepReport()
        self._save_backlog = None  # read once per sweep, when a row waits to be saved
        batches: dict[str, BatchState | None] = {}
        # Chunks in the waiting list are not lost: slots given back wake them.
        self._waiting = {(w.batch_id, w.chunk) for w in self._ledger.waiting.waiters()}
        open_chunks: dict[str, list[int]] = defaultdict(list)
        for batch_id, chunk in self._ledger.chunks.open_chunks():
            open_chunks[batch_id].append(chunk)
        for batch_id, chunks in open_chunks.items():
            report.open_chunks += len(chunks)
            try:
                batch = batches[batch_id] = self._ledger.batches.get(batch_id)
                # One query for a batch's open counters (a read unit per ~16 of them), not a
                # GetItem each; the chunks settled in between are read too, and skipped.
                counters = self._ledger.chunks.counters_between(batch_id, min(chunks), max(chunks))
            except Exception as exc:
                logger.exception("batch's chunks not swept", extra={"batch_id": batch_id})
                report.problems.append(f"{batch_id}: {type(exc).__name__}")
                continue
            for chunk in chunks:
                try:
                    self._sweep_chunk(batch, batch_id, counters.get(chunk), report)
                except Exception as exc:  # one chunk's trouble must not stop the sweep
                    logger.exception("chunk sweep failed", extra={"batch_id": batch_id, "chunk": chunk})
                    report.problems.append(f"{batch_id}/{chunk}: {type(exc).__name__}")
        for batch_id in self._ledger.batches.open_batches():
            try:
                self._sweep_batch(batch_id, report)
            except Exception as exc:
                logger.exception("batch sweep failed", extra={"batch_id": batch_id})
                report.problems.append(f"{batch_id}: {type(exc).__name__}")
        self._resume_new_day(batches, report)
        if self._admission is not None:
            self._give_back_lost_slots(report)
        if self._admission is not None and self._waiting:
            # Waiters while slots are free: a wake-up was lost (its waker died, or a wake found
            # the list empty a moment before a chunk was listed and that chunk died too), or
            # slots of a dead worker's grant were just given back.
            report.woken += self._admission.repair()
        return report

    def _give_back_lost_slots(self, report: SweepReport) -> None:
        """Slots taken by workers that died before settling their grants go back. One read of
        the slot item a sweep; more only for a grant left open past its lease."""
        try:
            swept = self._ledger.grants.sweep(self._clock())
        except Exception as exc:
            logger.exception("lost slots not given back")
            report.problems.append(f"slots: {type(exc).__name__}")
            return
        if swept.grants:
            logger.warning(
                "slots of unsettled grants given back",
                extra={
                    "given_back": swept.given_back,
                    "kept_for_runs": swept.kept_for_runs,
                    "grants": swept.grants,
                },
            )
        # The waiters are woken by the repair that follows, as many as slots are free now.
        report.slots_given_back += swept.given_back

    def _resume_new_day(self, batches: dict[str, BatchState | None], report: SweepReport) -> None:
        """Batches paused `daily_budget` run again once today's budget affords their next run:
        the next UTC day (or sooner, if the budget was raised)."""
        today = utc_day(self._clock())
        spent: int | None = None
        for batch in batches.values():
            if batch is None or batch.status is not BatchStatus.PAUSED or batch.reason != "daily_budget":
                continue
            if self._daily_budget is not None:
                spent = self._ledger.budget.reserved_on(today) if spent is None else spent
                run_cost = batch.run_cost_micro_usd or 0
                if spent + run_cost > self._daily_budget:
                    continue
            try:
                BatchActions(self._ledger, self._chunk_queue, self._finisher).resume(batch.batch_id)
            except WrongState:
                continue  # resumed by someone else meanwhile
            logger.info("batch resumed: a new UTC day", extra={"batch_id": batch.batch_id})
            report.resumed += 1

    # -- chunks ------------------------------------------------------------------------------
    def _sweep_chunk(
        self, batch: BatchState | None, batch_id: str, counter: ChunkCounter | None, report: SweepReport
    ) -> None:
        if counter is None or counter.settled:
            return
        chunk = counter.index
        if (
            batch is None
            or batch.status is BatchStatus.FAILED
            or (batch.status is BatchStatus.CANCELED and not batch.cancel_pending)
        ):
            self._ledger.chunks.close(batch_id, chunk)  # nothing more will run here
            report.closed += 1
            return
        now = self._clock()
        if counter.finished >= counter.rows:
            # Counted finished yet open: the recorder that counted its last outcome died before
            # settling it (or is settling it now; the settle is conditional). No need to wait.
            self._finisher.recount(batch_id, chunk)
            report.recounted += 1
            if batch.spec.save_outputs and self._still(counter, now):
                # Every row finished but the chunk still open: outputs may wait for a save
                # message that was lost.
                waiting = self._ledger.rows.progress_of_chunk(batch_id, chunk)
                self._resend_saves(batch_id, chunk, waiting, now, report)
            return
        if not self._still(counter, now):
            return  # an outcome or a start within `reconcile_after_s`: nothing of it is stale yet
        report.looked_into += 1
        if _untouched(counter):
            # No worker has started or recorded anything here: no row, no start page to read.
            rows: dict[int, RowState] = {}
            starts: dict[int, StartedRun] = {}
        else:
            rows = {row.record: row for row in self._ledger.rows.progress_of_chunk(batch_id, chunk)}
            starts = self._ledger.rows.starts(batch_id, chunk)
        finished = {record for record, row in rows.items() if row.finished}
        self._resend_saves(batch_id, chunk, rows.values(), now, report)
        if len(finished) >= counter.rows:
            self._finisher.recount(batch_id, chunk)
            report.recounted += 1
            return
        # Only the runs of each row's current attempt: a reprocessed row's earlier run is history.
        started = {
            r: s
            for r, s in starts.items()
            if s.has_run and s.attempt == (rows[r].attempt if r in rows else 1)
        }
        silent = [
            run
            for record, run in started.items()
            if record not in finished and now - run.started_at >= self._times.reconcile_after_s
        ]
        if silent:
            self._reconcile(batch, chunk, silent, report)
        if batch.status is BatchStatus.CANCELED:
            # Its runs in flight are asked for and timed out as any; nothing new starts, and the
            # last of them finishes the batch (or the sweep of the batch itself does).
            return
        never_started = len(started.keys() | finished) < counter.rows
        if (
            never_started
            and self._stalled(counter, now)
            and batch.status is not BatchStatus.PAUSED
            and (batch_id, chunk) not in self._waiting
        ):
            plan = {c.index: c for c in self._ledger.batches.chunk_plan(batch_id)}
            self._chunk_queue.send([ChunkMessage(batch_id=batch_id, chunk=plan[chunk])])
            report.chunks_resent += 1
        if counter.finished < len(finished) and self._quiet(counter, now):
            self._finisher.recount(batch_id, chunk)  # outcomes written but never counted
            report.recounted += 1

    def _resend_saves(
        self, batch_id: str, chunk: int, rows: Iterable[RowState], now: float, report: SweepReport
    ) -> None:
        """Rows whose outputs have waited `reconcile-after-s` to be saved: their save message was
        lost (a recorder that died after the row write), dead-lettered, or its saver died. Sent
        again marked `resent`, so the saver first records any copy already made."""
        if self._save_queue is None:
            return
        candidates = [r for r in rows if r.save_pending]
        if not candidates:
            return
        if self._save_backlog is None:
            self._save_backlog = self._save_queue.backlog()
        if self._save_backlog > 0:
            # Saves still wait in the queue: these rows' messages are most likely among them,
            # and sending them again would only lengthen the wait (measured: a chaos run's net
            # sent 200 copies a sweep into a backlog). Looked at again once it has drained.
            return
        stalled = [
            SaveMessage(
                batch_id=batch_id,
                chunk=chunk,
                record=row.record,
                attempt=row.attempt,
                run_id=row.run_id or "",  # empty: a reused row, whose copies have no run
                resent=True,
            )
            for row in candidates
            if (row.run_id or row.reused_from)
            and (row.updated_at is None or now - _epoch(row.updated_at) >= self._times.reconcile_after_s)
        ]
        if stalled:
            self._save_queue.send(stalled)
            report.saves_resent += len(stalled)

    def _still(self, counter: ChunkCounter, now: float) -> bool:
        """Nothing has moved the chunk's counter (an outcome, a run started, its creation) for
        `reconcile_after_s`: only then can it hold a silent run, a short count or rows whose
        message was lost, so only then are its rows and start pages read. A delivery that only
        waited for slots does not count as movement (its runs may be the silent ones holding
        the slots); a chunk from before `last_run_at` was kept is judged by outcomes alone."""
        moved = max(counter.last_outcome_at or 0, counter.last_run_at or 0, counter.created_at or 0)
        return now - moved >= self._times.reconcile_after_s

    def _quiet(self, counter: ChunkCounter, now: float) -> bool:
        last = max(counter.last_outcome_at or 0, counter.last_start_at or 0, counter.created_at or 0)
        return now - last >= self._times.reconcile_after_s

    def _stalled(self, counter: ChunkCounter, now: float) -> bool:
        """No worker holds it and nothing has happened to it for a while."""
        leased = counter.worker_until is not None and counter.worker_until >= now
        return not leased and self._quiet(counter, now)

    def _reconcile(
        self, batch: BatchState, chunk: int, silent: list[StartedRun], report: SweepReport
    ) -> None:
        asked = self._asked(batch.batch_id, chunk)
        now = self._clock()
        results: list[RowResult] = []
        to_ask = [run for run in silent if run.run_id and _asked_key(run) not in asked]
        answers = asyncio.run(self._ask(batch, to_ask)) if to_ask else []
        for run, answer in zip(to_ask, answers, strict=True):
            report.asked += 1
            outcome = self._answered(run, answer)
            if outcome is not None:
                save = bool(
                    self._save_queue is not None
                    and batch.spec.save_outputs
                    and outcome.status is RowStatus.COMPLETED
                    and outcome.outputs
                )
                results.append(RowResult(run.record, run.attempt, outcome, save=save))
        newly_asked = {_asked_key(run): now for run in to_ask}
        deadline = self._times.callback_deadline_s
        for run in silent:
            if run in to_ask:
                continue
            if now - run.started_at >= self._times.callback_deadline_s:
                timeout = RowOutcome(
                    status=RowStatus.FAILED,
                    run_id=run.run_id,
                    error_code="callback_timeout",
                    error_message=f"no webhook and no answer {deadline:.0f} s after its start",
                )
                results.append(RowResult(run.record, run.attempt, timeout))
                report.timed_out += 1
        if newly_asked:
            self._remember_asked(batch.batch_id, chunk, asked | newly_asked)
        if results:
            recorded = self._finisher.record_outcomes(batch.batch_id, chunk, results)
            self._finisher.release_slots(recorded)
            report.recorded += recorded
            saves = [
                SaveMessage(
                    batch_id=batch.batch_id,
                    chunk=chunk,
                    record=r.record,
                    attempt=r.attempt,
                    run_id=r.outcome.run_id,
                )
                for r in results
                if r.save and r.outcome.run_id
            ]
            if saves and self._save_queue is not None:
                self._save_queue.send(saves)

    def _answered(self, run: StartedRun, answer: object) -> RowOutcome | None:
        """The run's outcome from the one GET; None while it is still going (asked once: its
        webhook or the deadline decides) or when the provider could not be asked."""
        if not isinstance(answer, RunObject | RunNotFound) or run.run_id is None:
            logger.warning("safety net could not ask for a run", extra={"run_id": run.run_id})
            return None
        try:
            return fetched_outcome(answer, run.run_id)
        except (RunNotFinished, ProviderUnavailable):
            return None

    async def _ask(self, batch: BatchState, runs: list[StartedRun]) -> list[object]:
        """One GET per silent run, of the batch's provider (FLORA's run, Replicate's prediction)."""
        technique_id = batch.spec.technique_id
        connector = self._providers.connectors.get(batch.spec.provider)
        if connector is None:  # its token was removed since: the deadline decides these runs
            return [ProviderUnavailable(f"provider {batch.spec.provider} is not configured")] * len(runs)
        async with connector.http() as http:
            client = connector.client(http)
            gate = asyncio.Semaphore(8)

            async def ask(run: StartedRun) -> RunObject | RunNotFound:
                async with gate:
                    assert run.run_id is not None
                    return await client.get_run(technique_id, run.run_id)

            return list(await asyncio.gather(*(ask(r) for r in runs), return_exceptions=True))

    def _asked(self, batch_id: str, chunk: int) -> dict[str, float]:
        stored = self._ledger.table.get({"pk": rows_pk(batch_id, chunk), "sk": "ASKED"})
        return dict(json.loads(stored["runs"])) if stored else {}

    def _remember_asked(self, batch_id: str, chunk: int, asked: dict[str, float]) -> None:
        """Which silent runs were asked for already, so each is asked once."""
        self._ledger.table.put(
            {"pk": rows_pk(batch_id, chunk), "sk": "ASKED", "runs": json.dumps(asked, separators=(",", ":"))}
        )

    # -- batches -----------------------------------------------------------------------------
    def _sweep_batch(self, batch_id: str, report: SweepReport) -> None:
        batch = self._ledger.batches.get(batch_id)
        if batch is None:
            return
        now = self._clock()
        if batch.status in (BatchStatus.VALIDATING, BatchStatus.INGESTING):
            if now - _epoch(batch.updated_at) >= self._times.ingest_stall_s:
                self._finisher.fail(
                    batch_id, "ingest_interrupted", "the upload's ingest stopped and did not resume"
                )
                report.ingests_failed += 1
            return
        if batch.status is BatchStatus.RUNNING and batch.reprocess is not None:
            self._resend_reopening(batch, now, report)
            return
        if batch.cancel_pending:
            self._finisher.finish_canceled(batch_id)
            return
        if not batch.status.is_terminal:
            return
        notification = batch.notification
        stuck = (notification.status == "pending" and self._ledger.batches.on_done_stranded(batch)) or (
            notification.status in ("sending", "retrying")
            and (notification.lease_until or 0) + NOTIFY_STALL_S <= now
        )
        if stuck:
            self._done_queue.send(
                DoneMessage(batch_id=batch_id, finish_seq=batch.finish_seq, attempt=notification.attempts)
            )
            report.on_dones_resent += 1

    def _resend_reopening(self, batch: BatchState, now: float, report: SweepReport) -> None:
        """A reprocess whose API call died before it handed every reopening chunk to the
        workers: those chunks are still settled (out of the open index), so they are sent from
        here once the batch has been quiet for a while."""
        plan = batch.reprocess
        if plan is None or now - _epoch(batch.updated_at) < self._times.reconcile_after_s:
            return
        waiting = [
            c.index
            for c in self._ledger.chunks.counters(batch.batch_id)
            if plan.pending_reopen(c) and not (c.worker_until is not None and c.worker_until >= now)
        ]
        if not waiting:
            return
        chunks = {c.index: c for c in self._ledger.batches.chunk_plan(batch.batch_id)}
        for start in range(0, len(waiting), SEND_BATCH_LIMIT):
            group = waiting[start : start + SEND_BATCH_LIMIT]
            self._chunk_queue.send([ChunkMessage(batch_id=batch.batch_id, chunk=chunks[i]) for i in group])
        report.chunks_resent += len(waiting)


def _untouched(counter: ChunkCounter) -> bool:
    """No worker has held it, started or refused a row of it, or had an outcome counted."""
    return (
        not counter.started
        and not counter.finished
        and counter.last_start_at is None
        and counter.last_outcome_at is None
        and counter.last_run_at is None
        and counter.worker_until is None
    )


def _asked_key(run: StartedRun) -> str:
    """Attempt 1 keeps the record alone (as written before reprocess existed)."""
    return str(run.record) if run.attempt == 1 else f"{run.record}.{run.attempt}"


def _epoch(moment: str) -> float:
    return datetime.fromisoformat(moment.replace("Z", "+00:00")).timestamp()


__all__ = ["ProviderUnavailable", "SafetyNet", "SafetyNetTimes", "SweepReport", "ingest_stall_after"]
