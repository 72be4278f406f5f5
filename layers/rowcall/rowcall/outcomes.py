"""A finished run's outcome, recorded exactly once; a completed run's outputs fetched once first.

FLORA's webhook says that a run ended, not what it made: the outputs come from the run itself
(its `poll_url`), asked for once, after its terminal webhook, never polled. A failed run's error
comes from the webhook, so it costs the provider nothing. Replicate's webhook is the finished
prediction itself: its outputs come with the message and nothing is asked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from aws_lambda_powertools import Logger

from rowcall.finishing import BatchFinisher, RowResult
from rowcall.ledger import Ledger, ReuseSource
from rowcall.models import FinishedRun, RowOutcome, RowStatus, RunObject, to_micro_usd
from rowcall.providers.port import (
    ProviderConnector,
    ProviderNotConfigured,
    Providers,
    ProviderUnavailable,
    RunNotFound,
    RunProvider,
)
from rowcall.reuse import RowReuse
from rowcall.saved_outputs import SaveMessage, SaveQueue

logger = Logger(child=True)

# A batch's technique never changes, so one read per batch and execution environment is enough.
TECHNIQUE_CACHE_SIZE = 1024


class RunNotFinished(Exception):
    """The provider says the run is still going, though its terminal webhook came: try later."""


@dataclass
class RecordReport:
    """What one received batch of finished runs came to."""

    failed: set[str] = field(default_factory=set)
    """Message ids to retry: their outcome could not be fetched or written."""
    recorded: int = 0
    fetched: int = 0
    dropped: int = 0
    remembered: int = 0
    """Content-key items written for completed rows (`rowcall.reuse`)."""
    duplicates: int = 0
    """Outcomes of a second run of one row attempt (a provider without idempotency keys)."""


def fetched_outcome(run: RunObject | RunNotFound, run_id: str) -> RowOutcome:
    """What the provider's answer to the one GET of a run (`run_id`) means for its row."""
    if isinstance(run, RunNotFound):
        return RowOutcome(
            status=RowStatus.FAILED,
            run_id=run_id,
            error_code="run_not_found",
            error_message=run.message or "the provider does not know this run",
        )
    if run.run_id != run_id:
        raise ProviderUnavailable(f"asked for run {run_id}, the provider answered {run.run_id}")
    terminal = run.terminal_status
    if terminal is None:
        raise RunNotFinished(f"run {run.run_id} is {run.status}")
    if terminal is RowStatus.COMPLETED:
        outputs = [o.model_dump(exclude_none=True) for o in run.outputs]
        charged = None if run.charged_cost is None else to_micro_usd(run.charged_cost)
        return RowOutcome(
            status=RowStatus.COMPLETED, run_id=run_id, outputs=outputs, charged_cost_micro_usd=charged
        )
    return RowOutcome(
        status=RowStatus.FAILED,
        run_id=run_id,
        error_code=run.error_code or "run_failed",
        error_message=run.error_message,
        charged_cost_micro_usd=0,
    )


def reported_failure(finished: FinishedRun) -> RowOutcome:
    return RowOutcome(
        status=RowStatus.FAILED,
        run_id=finished.run_id,
        error_code=finished.error_code or "run_failed",
        error_message=finished.error_message,
        charged_cost_micro_usd=0,  # a failed run is not charged (contract §5)
    )


class OutcomeRecorder:
    """Records one received batch of finished runs: the GETs of its completed runs in flight
    together, then each chunk's outcomes written and counted together (one `ADD` per chunk)."""

    def __init__(
        self,
        *,
        ledger: Ledger,
        finisher: BatchFinisher,
        provider: ProviderConnector,
        reuse: RowReuse | None = None,
        save_queue: SaveQueue | None = None,
        replicate: ProviderConnector | None = None,
    ) -> None:
        self._ledger = ledger
        self._finisher = finisher
        self._providers = Providers({"flora": provider} | ({"replicate": replicate} if replicate else {}))
        self._reuse = reuse
        self._techniques: OrderedDict[str, str] = OrderedDict()
        # Each batch's provider, read with its technique.
        self._provider_of: dict[str, str] = {}
        # Batches whose outputs are saved (`save-outputs`), read with the technique.
        self._saving: dict[str, bool] = {}
        self._save_queue = save_queue

    def record(self, messages: Sequence[tuple[str, FinishedRun]]) -> RecordReport:
        report = RecordReport()
        resolved = asyncio.run(self._resolve_all([m for _, m in messages]))
        groups: dict[tuple[str, int], list[tuple[str, RowResult]]] = defaultdict(list)
        for (message_id, finished), outcome in zip(messages, resolved, strict=True):
            if isinstance(outcome, BaseException):
                logger.warning(
                    "outcome not resolved, retried later",
                    extra={"run_id": finished.run_id, "problem": f"{type(outcome).__name__}: {outcome}"},
                )
                report.failed.add(message_id)
            elif outcome is None:
                report.dropped += 1
            else:
                report.fetched += finished.status is RowStatus.COMPLETED
                save = self._saves(finished, outcome)
                result = RowResult(
                    record=finished.record,
                    attempt=finished.attempt,
                    outcome=outcome,
                    save=save,
                    content_key=finished.content_key,
                )
                groups[(finished.batch_id, finished.chunk)].append((message_id, result))
        completions: list[ReuseSource] = []
        for (batch_id, chunk), group in groups.items():
            try:
                moved: list[RowResult] = []
                report.recorded += self._finisher.record_outcomes(
                    batch_id, chunk, [r for _, r in group], moved_out=moved
                )
                self._count_duplicates(batch_id, chunk, [r for _, r in group], moved, report)
                self._send_saves(batch_id, chunk, [r for _, r in group])
                if self._reuse is not None:
                    completions += self._reuse.sources(batch_id, chunk, moved)
            except Exception:
                # Row writes are conditional, so the retry repeats none; a count missed here
                # is found by the recount when the chunk settles or goes quiet.
                logger.exception("outcomes not written, retried later", extra={"batch_id": batch_id})
                report.failed.update(message_id for message_id, _ in group)
        self._finisher.release_slots(report.recorded)
        self._remember(completions, report)
        return report

    def _count_duplicates(
        self,
        batch_id: str,
        chunk: int,
        results: list[RowResult],
        moved: list[RowResult],
        report: RecordReport,
    ) -> None:
        """A provider without idempotency keys (Replicate) may have made a second run for a row
        attempt the worker could not prevent (its create's answer lost, the list not showing it):
        its webhook comes to the same callback URL, and the ledger drops it as the row's second
        outcome. Such a drop under another run id is that duplicate, counted on the batch
        (contract §5b: reported). A second delivery of the same run is not one."""
        connector = self._providers.connectors.get(self._provider_of.get(batch_id, "flora"))
        if connector is None or connector.info.idempotent_creates:
            return
        dropped = [r for r in results if r not in moved and r.outcome.run_id]
        duplicates = 0
        for result in dropped:
            row = self._ledger.rows.get(batch_id, chunk, result.record)
            if (
                row is not None
                and row.attempt == result.attempt
                and row.run_id not in (None, result.outcome.run_id)
            ):
                duplicates += 1
        if duplicates:
            report.duplicates += duplicates
            logger.warning("duplicate runs reported", extra={"batch_id": batch_id, "duplicates": duplicates})
            self._ledger.batches.add_duplicate_runs(batch_id, duplicates)

    def _remember(self, completions: list[ReuseSource], report: RecordReport) -> None:
        """Completed rows under their content keys, in one request per received batch. Not worth a
        retry of the messages (their rows are written, a retry would find nothing to remember):
        a key missed here only means a later batch runs that row again."""
        if self._reuse is None or not completions:
            return
        try:
            report.remembered = self._reuse.remember(completions)
        except Exception:
            logger.exception("completed rows not remembered for reuse", extra={"rows": len(completions)})

    def _saves(self, finished: FinishedRun, outcome: RowOutcome) -> bool:
        return bool(
            self._save_queue is not None
            and outcome.status is RowStatus.COMPLETED
            and outcome.outputs
            and self._saving.get(finished.batch_id, False)
        )

    def _send_saves(self, batch_id: str, chunk: int, results: Sequence[RowResult]) -> None:
        """One save message per completed row to save, whether its write won just now or on an
        earlier delivery (whose send may have been lost): the saver drops one with nothing left
        to save."""
        messages = [
            SaveMessage(
                batch_id=batch_id,
                chunk=chunk,
                record=r.record,
                attempt=r.attempt,
                run_id=r.outcome.run_id or "",
            )
            for r in results
            if r.save and r.outcome.run_id
        ]
        if messages and self._save_queue is not None:
            self._save_queue.send(messages)

    async def _resolve_all(self, messages: Sequence[FinishedRun]) -> list[RowOutcome | BaseException | None]:
        clients: dict[str, RunProvider] = {}
        async with contextlib.AsyncExitStack() as stack:

            async def client_of(name: str) -> RunProvider:
                # One HTTP client per provider asked, opened only when a run needs a GET.
                if name not in clients:
                    connector = self._providers.get(name)
                    clients[name] = connector.client(await stack.enter_async_context(connector.http()))
                return clients[name]

            return await asyncio.gather(
                *(self._resolve(client_of, m) for m in messages), return_exceptions=True
            )

    async def _resolve(
        self, client_of: Callable[[str], Awaitable[RunProvider]], finished: FinishedRun
    ) -> RowOutcome | None:
        """The row's outcome; None for a run of a batch this ledger does not have."""
        if finished.status is RowStatus.FAILED:
            return reported_failure(finished)
        technique_id = await asyncio.to_thread(self._technique_of, finished.batch_id)
        if technique_id is None:
            logger.warning("run of an unknown batch dropped", extra={"batch_id": finished.batch_id})
            return None
        if finished.run is not None:
            # The webhook was the finished run (Replicate): nothing to ask.
            return fetched_outcome(finished.run, finished.run_id)
        provider = self._provider_of.get(finished.batch_id, "flora")
        try:
            client = await client_of(provider)
        except ProviderNotConfigured as exc:
            raise ProviderUnavailable(str(exc)) from None
        return fetched_outcome(await client.get_run(technique_id, finished.run_id), finished.run_id)

    def _technique_of(self, batch_id: str) -> str | None:
        if batch_id in self._techniques:
            self._techniques.move_to_end(batch_id)
            return self._techniques[batch_id]
        batch = self._ledger.batches.get(batch_id)
        if batch is None:
            return None
        self._finisher.knows(batch)
        self._techniques[batch_id] = batch.spec.technique_id
        self._saving[batch_id] = batch.spec.save_outputs
        self._provider_of[batch_id] = batch.spec.provider
        if len(self._techniques) > TECHNIQUE_CACHE_SIZE:
            forgotten, _ = self._techniques.popitem(last=False)
            self._saving.pop(forgotten, None)
            self._provider_of.pop(forgotten, None)
        return batch.spec.technique_id
