"""A finished run's outcome, recorded exactly once; a completed run's outputs fetched once first.

FLORA's webhook says that a run ended, not what it made: the outputs come from the run itself
(its `poll_url`), asked for once, after its terminal webhook, never polled. A failed run's error
comes from the webhook, so it costs the provider nothing.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass

import httpx
from aws_lambda_powertools import Logger

from rowcall.finishing import BatchFinisher
from rowcall.ledger import Ledger
from rowcall.models import FinishedRun, RowOutcome, RowStatus, RunObject
from rowcall.provider import ProviderClient, ProviderConnection, ProviderUnavailable, RunNotFound

logger = Logger(child=True)

# A batch's technique never changes, so one read per batch and execution environment is enough.
TECHNIQUE_CACHE_SIZE = 1024


class RunNotFinished(Exception):
    """The provider says the run is still going, though its terminal webhook came: try later."""


@dataclass(frozen=True)
class RecordResult:
    recorded: bool
    status: RowStatus
    fetched: bool


def fetched_outcome(run: RunObject | RunNotFound, finished: FinishedRun) -> RowOutcome:
    """What the provider's answer to the one GET of a completed run means for its row."""
    if isinstance(run, RunNotFound):
        return RowOutcome(
            status=RowStatus.FAILED,
            run_id=finished.run_id,
            error_code="run_not_found",
            error_message=run.message or "the provider does not know this run",
        )
    if run.run_id != finished.run_id:
        raise ProviderUnavailable(f"asked for run {finished.run_id}, the provider answered {run.run_id}")
    terminal = run.terminal_status
    if terminal is None:
        raise RunNotFinished(f"run {run.run_id} is {run.status}")
    if terminal is RowStatus.COMPLETED:
        outputs = [o.model_dump(exclude_none=True) for o in run.outputs]
        return RowOutcome(status=RowStatus.COMPLETED, run_id=finished.run_id, outputs=outputs)
    return RowOutcome(
        status=RowStatus.FAILED,
        run_id=finished.run_id,
        error_code=run.error_code or "run_failed",
        error_message=run.error_message,
    )


def reported_failure(finished: FinishedRun) -> RowOutcome:
    return RowOutcome(
        status=RowStatus.FAILED,
        run_id=finished.run_id,
        error_code=finished.error_code or "run_failed",
        error_message=finished.error_message,
    )


class OutcomeRecorder:
    """Records the runs of one received batch concurrently: their GETs are in flight together."""

    def __init__(self, *, ledger: Ledger, finisher: BatchFinisher, provider: ProviderConnection) -> None:
        self._ledger = ledger
        self._finisher = finisher
        self._provider = provider
        self._techniques: OrderedDict[str, str] = OrderedDict()
        self._client: tuple[asyncio.AbstractEventLoop, ProviderClient] | None = None

    async def record(self, finished: FinishedRun) -> RecordResult:
        if finished.status is RowStatus.FAILED:
            outcome = reported_failure(finished)
        else:
            technique_id = await asyncio.to_thread(self._technique_of, finished.batch_id)
            if technique_id is None:
                # Not a batch of ours (or deleted): nothing to record, nothing to retry.
                logger.warning("run of an unknown batch dropped", extra={"batch_id": finished.batch_id})
                return RecordResult(False, finished.status, False)
            run = await self._provider_client().get_run(technique_id, finished.run_id)
            outcome = fetched_outcome(run, finished)
        recorded = await asyncio.to_thread(self._write, finished, outcome)
        return RecordResult(recorded, outcome.status, finished.status is RowStatus.COMPLETED)

    def _write(self, finished: FinishedRun, outcome: RowOutcome) -> bool:
        recorded = self._ledger.row_finished(
            finished.batch_id, finished.chunk, finished.record, outcome, attempt=finished.attempt
        )
        if not recorded:
            logger.info("outcome changed nothing", extra={"run_id": finished.run_id})
        # Also when nothing changed: completes what a crashed earlier delivery left half done.
        self._finisher.after_row_finished(finished.batch_id, finished.chunk)
        return recorded

    def _technique_of(self, batch_id: str) -> str | None:
        if batch_id in self._techniques:
            self._techniques.move_to_end(batch_id)
            return self._techniques[batch_id]
        batch = self._ledger.get_batch(batch_id)
        if batch is None:
            return None
        self._techniques[batch_id] = batch.spec.technique_id
        if len(self._techniques) > TECHNIQUE_CACHE_SIZE:
            self._techniques.popitem(last=False)
        return batch.spec.technique_id

    def _provider_client(self) -> ProviderClient:
        """One keep-alive client per event loop (Powertools keeps one loop across invocations)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client[0] is not loop:
            http = httpx.AsyncClient(timeout=self._provider.timeout_s, follow_redirects=False)
            client = ProviderClient(
                http,
                base_url=self._provider.base_url,
                api_key=self._provider.api_key,
                retry=self._provider.retry,
            )
            self._client = (loop, client)
        return self._client[1]
