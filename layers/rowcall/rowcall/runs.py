"""Worker: start one provider run per row of a chunk, each with its own signed callback URL."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from aws_lambda_powertools import Logger

from rowcall.admission import Admission
from rowcall.csvsplit import data_records, split_lines
from rowcall.finishing import BatchFinisher, RowResult
from rowcall.identity import CallbackSigner, idempotency_key_for, row_id_for
from rowcall.input_checks import row_checker
from rowcall.ledger import NO_RUN, Grant, Ledger, StartedRun
from rowcall.ledger.budget import Limits, Reservation
from rowcall.metadata import row_inputs, row_key
from rowcall.models import (
    OPEN_BATCH_STATUSES,
    BatchState,
    BatchStatus,
    ChunkCursor,
    ChunkMessage,
    ChunkPlan,
    CreateRunRequest,
    ReprocessPlan,
    RowOutcome,
    RowState,
    RowStatus,
    RunInput,
    to_micro_usd,
)
from rowcall.providers.flora import REPLAY_AGE_S
from rowcall.providers.port import (
    CreateSearch,
    ProviderConnector,
    ProviderNotConfigured,
    Providers,
    ProviderUnavailable,
    RunAlreadyCreated,
    RunCreated,
    RunProvider,
    RunRefused,
    created_epoch_s,
)
from rowcall.queues import ChunkQueue
from rowcall.reuse import RowReuse, content_key
from rowcall.saved_outputs import ReusedOutputs
from rowcall.source import read_source
from rowcall.start_log import StartLog

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

logger = Logger(child=True)
# httpx logs every request URL at INFO, and callback URLs carry their row's token.
logging.getLogger("httpx").setLevel(logging.WARNING)

# Stop starting rows this long before the invocation's deadline; the rest go with the retry.
DEADLINE_MARGIN_S = 20.0
LEASE_S = 30.0
# Under the cap a chunk starts at most cap / 4 rows per delivery before yielding to others; a
# chunk that finds no free slot waits in the ledger's waiting list until slots are given back.
FAIR_SHARE_DIVISOR = 4


def _replayed(created: RunCreated, sent_at: float) -> bool:
    """The provider answered with the run the same key made before (FLORA's 24-hour replay)."""
    at = created_epoch_s(created.run)
    return at is not None and at < sent_at - REPLAY_AGE_S


class _Lease:
    """Renews a worker's hold on its chunk every third of its length while the worker runs."""

    def __init__(self, ledger: Ledger, batch_id: str, chunk: int, holder: str) -> None:
        self._ledger = ledger
        self._batch_id = batch_id
        self._chunk = chunk
        self._holder = holder

    async def keep(self) -> None:
        while True:
            await asyncio.sleep(LEASE_S / 3)
            await asyncio.to_thread(
                self._ledger.chunks.claim,
                self._batch_id,
                self._chunk,
                holder=self._holder,
                until_epoch=time.time() + LEASE_S,
            )


@dataclass(frozen=True)
class RowJob:
    chunk: int
    record: int
    line: int
    key: str
    inputs: list[RunInput]
    attempt: int = 1
    offset: int = 0
    # What the row asks (`rowcall.reuse`); None where this stack keeps no content keys.
    content_key: str | None = None
    # The intents to create this attempt's run that no start page answered, on a provider without
    # idempotency keys (Replicate): a prediction their creates made may exist and is looked for
    # before the create.
    intents: tuple[float, ...] = ()

    @property
    def row_id(self) -> str:
        return row_id_for(self.chunk, self.record)


@dataclass
class ChunkReport:
    started: int = 0
    already_started: int = 0
    refused: int = 0
    deferred: int = 0
    skipped_known: int = 0
    reused: int = 0
    batch_refusal: str | None = None
    paused: bool = False
    not_open: str | None = None
    waiting_for_slots: int = 0
    stopped: str | None = None
    """The batch left the running state (canceled, paused, failed) while this chunk started."""
    cursor: ChunkCursor | None = None
    """The first row left waiting for slots: where the chunk's next delivery resumes."""
    woken: int = 0
    found_created: int = 0
    """Rows whose run an earlier, interrupted delivery had made (found by listing the provider's
    runs, where it has no idempotency key): recorded, not created again."""
    duplicates: int = 0
    """Runs found made twice for one row attempt (reported on the batch)."""


class ChunkIncomplete(Exception):
    """Some rows could not be started now; the chunk is retried and started rows are skipped."""


class ChunkBusy(ChunkIncomplete):
    """Another delivery of this chunk is at work; this one comes back later and skips its rows."""


class RunStarter:
    def __init__(
        self,
        *,
        s3: S3Client,
        ledger: Ledger,
        finisher: BatchFinisher,
        provider: ProviderConnector,
        signer: CallbackSigner,
        callback_base_url: str,
        concurrency: int,
        chunk_queue: ChunkQueue | None = None,
        max_in_flight: int = 0,
        intent_valid_s: float = 900.0,
        daily_budget_usd: float | None = None,
        clock: Callable[[], float] = time.time,
        reuse: RowReuse | None = None,
        replicate: ProviderConnector | None = None,
    ) -> None:
        self._s3 = s3
        self._ledger = ledger
        self._finisher = finisher
        self._providers = Providers({"flora": provider} | ({"replicate": replicate} if replicate else {}))
        self._signer = signer
        self._callback_base = callback_base_url.rstrip("/")
        self._concurrency = concurrency
        self._chunk_queue = chunk_queue
        self._cap = max_in_flight
        self._intent_valid_s = intent_valid_s
        self._daily_max = to_micro_usd(daily_budget_usd) if daily_budget_usd is not None else None
        self._clock = clock
        self._admission = None
        if chunk_queue is not None and max_in_flight:
            self._admission = Admission(ledger, chunk_queue, max_in_flight, clock)
        self._reuse = reuse
        # With reuse, a batch saving its outputs copies a reused row's from the earlier row's.
        self._reused_outputs = ReusedOutputs(s3, ledger) if reuse is not None else None

    def start_chunk(self, message: ChunkMessage, time_left_s: Callable[[], float]) -> ChunkReport:
        report = ChunkReport()
        batch = self._ledger.batches.get(message.batch_id)
        if batch is None or batch.status not in OPEN_BATCH_STATUSES or batch.header is None:
            report.not_open = batch.status.value if batch else "unknown_batch"
            logger.info("chunk not started: batch is not open", extra={"status": report.not_open})
            if batch is not None and batch.status.is_terminal:
                # The invocation that ended it may have died before handing over its on-done.
                self._finisher.finish_if_done(batch.batch_id)
                self._finisher.finish_canceled(batch.batch_id)
            self._pass_wake_on(message)
            return report
        chunk = message.chunk.index
        holder = uuid.uuid4().hex
        # A short lease, renewed while the worker is at it: a worker that dies (killed, timed
        # out) frees its chunk within LEASE_S for the redelivery or the safety net.
        until = time.time() + min(time_left_s(), LEASE_S)
        if not self._ledger.chunks.claim(batch.batch_id, chunk, holder=holder, until_epoch=until):
            self._pass_wake_on(message)
            raise ChunkBusy(f"chunk {chunk} is being started by another delivery")
        refused: list[RowResult] = []
        try:
            # Read again under the lease: a cancel before it is seen here, one after it by the
            # check before each group of creates; either way nothing starts once it is canceled.
            current = self._ledger.batches.get(batch.batch_id)
            if current is None or current.status not in OPEN_BATCH_STATUSES:
                report.stopped = current.status.value if current else "unknown_batch"
            else:
                batch = current
                self._start_rows(batch, message, holder, report, time_left_s, refused)
        finally:
            self._ledger.chunks.release(
                batch.batch_id,
                chunk,
                holder=holder,
                started=report.started + report.already_started + len(refused),
            )
        if refused:
            # One write per refused row and one count: never stranded `running` by a crash.
            moved: list[RowResult] = []
            self._finisher.record_outcomes(batch.batch_id, chunk, refused, moved_out=moved)
            if self._reused_outputs is not None:
                self._reused_outputs.record(batch.batch_id, chunk, moved, self._finisher)
        if report.stopped:
            # A canceled batch may have waited for this worker to let go of its chunk.
            self._finisher.finish_canceled(batch.batch_id, chunk)
        logger.info("chunk processed", extra={"chunk": chunk, **report.__dict__})
        if report.waiting_for_slots and not report.deferred and self._admission is not None:
            # Waits in the ledger, not in SQS nor in a sleeping Lambda: nothing runs for it until
            # slots are given back. A delivery that started nothing keeps its place in the list;
            # one that took its share goes behind the chunks already waiting.
            keep_place = report.started == 0 and message.waiting_since_ms is not None
            since = message.waiting_since_ms if keep_place else None
            report.woken = self._admission.wait(message.model_copy(update={"cursor": report.cursor}), since)
            return report
        if report.started == 0:
            self._pass_wake_on(message)
        if report.deferred:
            raise ChunkIncomplete(
                f"{report.deferred} rows of chunk {message.chunk.index} are left for a retry"
            )
        return report

    def _pass_wake_on(self, message: ChunkMessage) -> None:
        """A woken delivery that starts nothing (its batch paused or ended, its rows started by a
        copy, its chunk busy) hands its wake-up to the next waiter, or the slot that woke it would
        stay free until the safety net's repair."""
        woken = message.waiting_since_ms is not None
        if self._admission is not None and woken and self._admission.free() > 0:
            self._admission.wake(1)

    def _start_rows(
        self,
        batch: BatchState,
        message: ChunkMessage,
        holder: str,
        report: ChunkReport,
        time_left_s: Callable[[], float],
        refused: list[RowResult],
    ) -> None:
        plan = message.chunk
        chunk = plan.index
        cursor = message.cursor
        if batch.reprocess is not None and str(chunk) in batch.reprocess.chunks:
            self._reopen(batch, chunk, batch.reprocess)
            cursor = None  # rows before any cursor may have been reopened
        rows = {r.record: r for r in self._ledger.rows.rows_of_chunk(batch.batch_id, chunk)}
        attempts = {record: row.attempt for record, row in rows.items()}
        known = {record for record, row in rows.items() if row.finished}
        starts = self._ledger.rows.starts(batch.batch_id, chunk)
        known.update(
            record
            for record, entry in starts.items()
            if entry.has_run and entry.attempt == attempts.get(record, 1)
        )
        # Rows a crashed delivery was about to create, with nothing said of them since, may
        # have runs: leave them to their webhooks until the intent is stale, then create (a
        # 409 then says the run exists). An intent from before a row was reopened is not its.
        fresh_after = time.time() - self._intent_valid_s
        intents = self._ledger.rows.intents(batch.batch_id, chunk)
        for record, at in intents.items():
            since = starts.get(record)
            reopened = rows[record].reopened_at if record in rows else None
            if (
                at > fresh_after
                and (since is None or since.started_at < at)
                and (reopened is None or at > reopened)
            ):
                known.add(record)
        unanswered = self._unanswered_intents(batch, chunk, intents, starts, rows)
        jobs = []
        for job in self._jobs(batch, plan, attempts, cursor):
            if job.record in known:
                report.skipped_known += 1
            elif job.record in unanswered:
                jobs.append(replace(job, intents=unanswered[job.record]))
            else:
                jobs.append(job)
        # Outcomes to record after the lease is let go, like refused rows.
        jobs = self._take_reused(batch, jobs, report, refused)
        if jobs:
            known_runs = frozenset(e.run_id for e in starts.values() if e.has_run and e.run_id)
            started = StartLog(self._ledger.rows, batch.batch_id, chunk, holder, known_runs)
            try:
                lease = _Lease(self._ledger, batch.batch_id, chunk, holder)
                asyncio.run(self._start_all(batch, jobs, report, time_left_s, started, refused, lease))
            finally:
                started.flush()

    def _unanswered_intents(
        self,
        batch: BatchState,
        chunk: int,
        intents: dict[int, float],
        starts: dict[int, StartedRun],
        rows: dict[int, RowState],
    ) -> dict[int, tuple[float, ...]]:
        """On a provider without idempotency keys, the rows that some delivery meant to create
        (since their attempt began) and no start page names a run of: a create that was sent
        may have made a prediction. For each, when those intents were written."""
        connector = self._providers.connectors.get(batch.spec.provider)
        if connector is None or connector.info.idempotent_creates or not intents:
            return {}
        found: dict[int, tuple[float, ...]] = {}
        for record, at in self._ledger.rows.intent_times(batch.batch_id, chunk).items():
            row = rows.get(record)
            reopened = row.reopened_at if row is not None else None
            since = [t for t in at if reopened is None or t > reopened]
            start = starts.get(record)
            if since and not (
                start is not None and start.has_run and start.attempt == (row.attempt if row else 1)
            ):
                found[record] = tuple(sorted(since))
        return found

    def _take_reused(
        self, batch: BatchState, jobs: list[RowJob], report: ChunkReport, outcomes: list[RowResult]
    ) -> list[RowJob]:
        """With `reuse` on, the rows completed before (same content key) are completed from those
        rows, looked up in bulk before anything else: no run, no slot, no budget. The rows left."""
        if self._reuse is None or not batch.spec.reuse or not jobs:
            return jobs
        to_run, reused = self._reuse.take(jobs)
        if reused and self._reused_outputs is not None:
            # Their saved outputs copied first: a row whose earlier copies are gone runs instead.
            reused, run_instead = self._reused_outputs.copy(batch, jobs[0].chunk, reused)
            if run_instead:
                running = {job.record for job in to_run} | run_instead
                to_run = [job for job in jobs if job.record in running]
        report.reused += len(reused)
        outcomes.extend(reused)
        return to_run

    def _reopen(self, batch: BatchState, chunk: int, plan: ReprocessPlan) -> None:
        """The chunk's share of a reprocess, under its lease: its rows back to pending at their
        next attempt, then the chunk itself open again with the counts of the rows that keep
        their outcome. Each write is conditional on the reprocess's number, so a delivery cut
        off half way is finished by the next one and nothing is reopened twice."""
        counter = self._ledger.chunks.counter(batch.batch_id, chunk)
        if counter is None or not plan.pending_reopen(counter):
            return
        now = time.time()
        named = None if plan.rows is None else set(plan.rows.get(str(chunk), []))
        for row in self._ledger.rows.rows_of_chunk(batch.batch_id, chunk):
            wanted = row.status is RowStatus.FAILED if named is None else row.record in named
            if wanted and row.finished and row.reopen_seq < plan.seq:
                saved = sum(bool(entry.get("key")) for entry in row.saved_outputs)
                self._ledger.rows.reopen(
                    batch.batch_id,
                    chunk,
                    row.record,
                    seq=plan.seq,
                    at=now,
                    saved_counts=(saved, len(row.saved_outputs) - saved),
                )
        rows = list(self._ledger.rows.rows_of_chunk(batch.batch_id, chunk))
        completed = sum(r.status is RowStatus.COMPLETED for r in rows)
        failed = sum(r.status is RowStatus.FAILED for r in rows)
        charged = sum(r.charged_cost_micro_usd or 0 for r in rows if r.finished)
        self._ledger.chunks.reopen(
            batch.batch_id, chunk, seq=plan.seq, completed=completed, failed=failed, charged_micro_usd=charged
        )
        logger.info(
            "chunk reopened",
            extra={"chunk": chunk, "seq": plan.seq, "rerun": counter.rows - completed - failed},
        )
        # Nothing to rerun after all (every named row was reopened by an earlier delivery and
        # has finished since): it settles now, as after any outcome.
        self._finisher.after_outcomes(batch.batch_id, self._ledger.chunks.counter(batch.batch_id, chunk))

    def _jobs(
        self, batch: BatchState, chunk: ChunkPlan, attempts: dict[int, int], cursor: ChunkCursor | None = None
    ) -> Iterator[RowJob]:
        """The chunk's rows, from the cursor on when there is one (the rows before it were dealt
        with by the delivery that wrote it: read once, not once per delivery)."""
        header = batch.header or []
        start, line, first = chunk.start, chunk.first_line, chunk.first_record
        if (
            cursor is not None
            and chunk.start <= cursor.offset < chunk.end
            and cursor.record >= chunk.first_record
            and cursor.line >= chunk.first_line
        ):
            start, line, first = cursor.offset, cursor.line, cursor.record
        lines = split_lines(read_source(self._s3, batch.source, start=start, end=chunk.end))
        records = data_records(
            lines,
            width=len(header),
            offset=start,
            line=line,
            first_number=first,
            check=row_checker(header, batch.row_rules),
        )
        for record in records:
            if record.fields is None:
                continue
            inputs = row_inputs(header, record.fields, batch.spec)
            yield RowJob(
                chunk=chunk.index,
                record=record.number,
                line=record.line,
                key=row_key(header, record.fields, batch.spec, record.number),
                inputs=inputs,
                attempt=attempts.get(record.number, 1),
                offset=record.start,
                content_key=(
                    None
                    if self._reuse is None
                    else content_key(batch.spec.provider, batch.spec.technique_id, inputs)
                ),
            )

    async def _start_all(
        self,
        batch: BatchState,
        jobs: list[RowJob],
        report: ChunkReport,
        time_left_s: Callable[[], float],
        starts: StartLog,
        refused: list[RowResult],
        lease: _Lease,
    ) -> None:
        renewing = asyncio.create_task(lease.keep())
        try:
            try:
                connector = self._providers.get(batch.spec.provider)
            except ProviderNotConfigured as exc:
                # Ingest refuses such a batch before any run; one made before the token was removed
                # fails here, as a provider answering 401 would fail it.
                refusal = RunRefused(401, "provider_not_configured", str(exc), "provider_unauthorized")
                await asyncio.to_thread(self._refuse_batch, batch, refusal, report)
                return
            async with connector.http() as http:
                client = connector.client(http)
                if self._cap:
                    await self._start_under_cap(client, batch, jobs, report, time_left_s, starts, refused)
                else:
                    await self._start_group(client, batch, jobs, report, time_left_s, starts, refused)
        finally:
            renewing.cancel()

    async def _start_under_cap(
        self,
        client: RunProvider,
        batch: BatchState,
        jobs: list[RowJob],
        report: ChunkReport,
        time_left_s: Callable[[], float],
        starts: StartLog,
        refused: list[RowResult],
    ) -> None:
        """Slots first, a grant at a time; a chunk takes at most a fair share of the cap per
        delivery and then goes to the back of the waiting list, behind the other chunks."""
        share = max(1, self._cap // FAIR_SHARE_DIVISOR)
        remaining = list(jobs)
        taken = 0
        while remaining and not (report.batch_refusal or report.paused or report.stopped):
            wanted = min(len(remaining), self._concurrency, share - taken)
            grant = await asyncio.to_thread(
                self._take_slots, batch.batch_id, remaining[0].chunk, starts, wanted
            )
            if grant is None:
                break
            granted = grant.slots
            taken += granted
            group, remaining = remaining[:granted], remaining[granted:]
            before = report.started
            await self._start_group(client, batch, group, report, time_left_s, starts, refused)
            # A slot is held by each run started, and given back when its outcome is recorded;
            # the rest of the grant (refused, deferred, already started) goes back now, in the
            # write that settles the grant (a worker killed before it: the safety net's sweep).
            freed = await asyncio.to_thread(self._ledger.grants.settle, grant, report.started - before)
            if freed and self._admission is not None:
                report.woken += await asyncio.to_thread(self._admission.wake, freed)
        stopped = report.batch_refusal or report.paused or report.stopped
        report.waiting_for_slots = len(remaining) if not stopped else 0
        if remaining and not stopped:
            first = remaining[0]
            report.cursor = ChunkCursor(record=first.record, offset=first.offset, line=first.line)

    def _take_slots(self, batch_id: str, chunk: int, starts: StartLog, wanted: int) -> Grant | None:
        if wanted <= 0:
            return None
        return self._ledger.grants.take(
            wanted, self._cap, batch_id=batch_id, chunk=chunk, holder=starts.holder, now=time.time()
        )

    async def _start_group(
        self,
        client: RunProvider,
        batch: BatchState,
        jobs: list[RowJob],
        report: ChunkReport,
        time_left_s: Callable[[], float],
        starts: StartLog,
        refused: list[RowResult],
    ) -> None:
        limits = self._limits(batch)

        async def start(job: RowJob) -> bool:
            if report.batch_refusal or report.paused:
                await starts.add(job.record, job.attempt, NO_RUN, job.line)  # its intent resolved: no run
                return True
            return await self._start_row(client, batch, job, report, starts, refused)

        for first in range(0, len(jobs), self._concurrency):
            if report.batch_refusal or report.paused or report.stopped:
                return
            # One read per group: a cancel (or a pause or failure found by another chunk)
            # stops this chunk within a group of creates.
            status = await asyncio.to_thread(self._status, batch.batch_id)
            if status not in OPEN_BATCH_STATUSES:
                report.stopped = status.value if status else "unknown_batch"
                return
            if time_left_s() < DEADLINE_MARGIN_S:
                report.deferred += len(jobs) - first
                return
            group = jobs[first : first + self._concurrency]
            # The budget is reserved before the creates are sent, so no fault can overspend it.
            reservation = await asyncio.to_thread(
                self._ledger.budget.reserve, batch.batch_id, len(group), limits, self._clock()
            )
            if reservation.runs == 0 and reservation.short_by is None:
                report.deferred += len(jobs) - first  # the budget counters were too contended
                return
            group = group[: reservation.runs]
            settled = (
                await self._find_created(client, batch, group, report, starts, starts.known_run_ids)
                if group
                else set()
            )
            if settled:
                # Runs an earlier delivery made, or rows left for the next one: no new run for
                # these reservations.
                group = [job for job in group if job.record not in settled]
                await asyncio.to_thread(
                    self._ledger.budget.give_back, batch.batch_id, len(settled), limits, reservation.day
                )
            if group:
                await asyncio.to_thread(starts.intend, [job.record for job in group])
                no_new_run = sum(await asyncio.gather(*(start(job) for job in group)))
                # Refused or 409: no run was made for these reservations.
                await asyncio.to_thread(
                    self._ledger.budget.give_back, batch.batch_id, no_new_run, limits, reservation.day
                )
            if reservation.short_by is not None:
                # What it could afford is started; the rest waits for a resume (or the next day).
                await asyncio.to_thread(self._pause_for_budget, batch, reservation, limits, report)
                return

    async def _find_created(
        self,
        client: RunProvider,
        batch: BatchState,
        group: list[RowJob],
        report: ChunkReport,
        starts: StartLog,
        known_run_ids: frozenset[str] = frozenset(),
    ) -> set[int]:
        """At most one run per row attempt without idempotency keys: rows whose earlier create
        may have made a run (an intent no start page answered) look for it in the provider's list
        of runs first (one walk for the group, back to the earliest intent). A row found is
        recorded as started with that run and not created again; more than one run found for a
        row attempt is a duplicate made before (its webhook is dropped as the row's second
        outcome, and counted on the batch then: `rowcall.outcomes`). The rows not to create now: found, or
        left for the next delivery when the provider could not be asked."""
        searched = [job for job in group if job.intents]
        if not searched:
            return set()
        requests = {self._request(batch, job).callback_url: job for job in searched}
        searches = [CreateSearch(self._request(batch, job), job.intents) for job in searched]
        try:
            made = await client.find_created(batch.spec.technique_id, searches, known_run_ids)
        except ProviderUnavailable as exc:
            # Not knowing is not "none made": these rows wait for the next delivery.
            logger.warning("runs made before could not be looked for", extra={"problem": str(exc)})
            for job in searched:
                report.deferred += 1
                await starts.add(job.record, job.attempt, NO_RUN, job.line)
            return {job.record for job in searched}
        found: set[int] = set()
        duplicates = 0
        for url, runs in made.items():
            made_for = requests.get(url)
            if made_for is None or not runs:
                continue
            # The oldest is the row's run (the list is newest first); the rest are duplicates.
            await starts.add(made_for.record, made_for.attempt, runs[-1].run_id, made_for.line)
            report.already_started += 1
            report.found_created += 1
            duplicates += len(runs) - 1
            found.add(made_for.record)
        # Counted on the batch by the recorder, when each duplicate's webhook is dropped as the
        # row's second outcome (the list may not show them all; webhooks come for every one).
        report.duplicates += duplicates
        return found

    def _request(self, batch: BatchState, job: RowJob) -> CreateRunRequest:
        return CreateRunRequest(
            inputs=job.inputs,
            callback_url=self._callback_url(batch.batch_id, job.row_id, job.attempt, job.content_key),
            idempotency_key=idempotency_key_for(batch.batch_id, job.row_id, job.attempt),
        )

    async def _start_row(
        self,
        client: RunProvider,
        batch: BatchState,
        job: RowJob,
        report: ChunkReport,
        starts: StartLog,
        refused: list[RowResult],
    ) -> bool:
        """Whether the provider certainly made no new run for this create (its reservation is
        given back); a create whose answer was lost may have made one and keeps it."""
        attempt = job.attempt
        request = self._request(batch, job)
        sent_at = time.time()
        try:
            outcome = await client.create_run(batch.spec.technique_id, request)
        except ProviderUnavailable as exc:
            logger.warning("row deferred", extra={"row_id": job.row_id, "problem": str(exc)})
            report.deferred += 1
            await starts.add(job.record, attempt, NO_RUN, job.line)
            return False
        if isinstance(outcome, RunCreated | RunAlreadyCreated):
            run_id = outcome.run.run_id if isinstance(outcome, RunCreated) else None
            await starts.add(job.record, attempt, run_id, job.line)
            if isinstance(outcome, RunCreated) and not _replayed(outcome, sent_at):
                report.started += 1
                return False
            # A run an earlier delivery created (it died before its start page, or a 409): its id
            # is recorded now when the provider replays it, and it is not started twice (its slot
            # and its reservation are the earlier create's).
            report.already_started += 1
            return True
        if outcome.batch_reason is not None:
            await asyncio.to_thread(self._refuse_batch, batch, outcome, report)
            await starts.add(job.record, attempt, NO_RUN, job.line)
            return True
        if outcome.pauses_batch:
            await asyncio.to_thread(self._pause_batch, batch, outcome, report)
            await starts.add(job.record, attempt, NO_RUN, job.line)
            return True
        report.refused += 1
        failure = RowOutcome(
            status=RowStatus.FAILED, error_code=outcome.code, error_message=outcome.message or None
        )
        refused.append(RowResult(job.record, attempt, failure, line=job.line, key=job.key))
        return True

    def _status(self, batch_id: str) -> BatchStatus | None:
        batch = self._ledger.batches.get(batch_id)
        return batch.status if batch else None

    def _pause_batch(self, batch: BatchState, refusal: RunRefused, report: ChunkReport) -> None:
        """Nothing more starts (this chunk's other rows stop here, other chunks find the batch
        paused); runs already started finish and are counted; resume sends the chunks again."""
        if report.paused:
            return
        report.paused = True
        message = refusal.message or f"provider answered {refusal.status_code} {refusal.code}"
        if self._ledger.batches.pause(batch.batch_id, "insufficient_credits", message):
            logger.warning("batch paused", extra={"reason": refusal.code})

    def _limits(self, batch: BatchState) -> Limits:
        """A provider with no price is not budgeted (run cost 0)."""
        return Limits(
            run_cost=batch.run_cost_micro_usd or 0,
            batch_max=batch.max_cost_micro_usd,
            daily_max=self._daily_max,
        )

    def _pause_for_budget(
        self, batch: BatchState, reservation: Reservation, limits: Limits, report: ChunkReport
    ) -> None:
        """The batch cannot afford its next run: nothing more starts (runs started finish and
        are recorded). `over_budget` resumes with a higher `max_cost_usd`; `daily_budget` by
        itself the next UTC day (the safety net)."""
        if report.paused:
            return
        report.paused = True
        run_cost = limits.run_cost / 1_000_000
        if reservation.short_by == "daily_budget":
            ceiling = (limits.daily_max or 0) / 1_000_000
            message = (
                f"the stack's daily budget of ${ceiling:.2f} for {reservation.day} (UTC) allows no more runs"
            )
        else:
            ceiling = (limits.batch_max or 0) / 1_000_000
            message = f"the batch's budget of ${ceiling:.2f} allows no more runs of ${run_cost:.4f}"
        reason = reservation.short_by or "over_budget"
        if self._ledger.batches.pause(batch.batch_id, reason, message):
            logger.warning("batch paused", extra={"reason": reason})

    def _refuse_batch(self, batch: BatchState, refusal: RunRefused, report: ChunkReport) -> None:
        if report.batch_refusal is not None:
            return
        report.batch_refusal = refusal.batch_reason
        logger.warning("provider refused the batch", extra={"reason": refusal.batch_reason})
        self._finisher.fail(
            batch.batch_id,
            refusal.batch_reason or "provider_refused",
            f"provider answered {refusal.status_code} {refusal.code}",
        )

    def _callback_url(self, batch_id: str, row_id: str, attempt: int, content_key: str | None = None) -> str:
        token = self._signer.token(batch_id, row_id, attempt, content_key)
        return f"{self._callback_base}/callbacks/{batch_id}/{row_id}?token={token}"
