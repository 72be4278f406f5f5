"""Run webhooks: authenticate twice, then hand the run's end to the finished-run queue.

Order matters: the per-row URL token is checked before anything else is read (a forged
callback costs one HMAC), then FLORA's `Flora-Signature` over the raw body, and only then is the
body parsed. The webhook writes nothing itself: one SQS send, so it answers in milliseconds and
FLORA's three retries are never spent on our latency, and the recorder behind the queue writes
the outcomes of many runs together.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from rowcall.flora_signature import verify_signature
from rowcall.identity import CallbackSigner, parse_row_id
from rowcall.models import FinishedRun, RowStatus, RunWebhook
from rowcall.queues import FinishedRunQueue

SecretSource = Callable[[], Sequence[str]]
KNOWN_BATCHES = 1024


class CallbackIntake:
    def __init__(
        self,
        *,
        finished_runs: FinishedRunQueue,
        callback_secrets: SecretSource,
        provider_signing_secrets: SecretSource,
        batch_exists: Callable[[str], bool] = lambda _: True,
    ) -> None:
        self._finished_runs = finished_runs
        self._batch_exists = batch_exists
        self._known_batches: OrderedDict[str, None] = OrderedDict()
        # Read on every callback (the sources cache for a few minutes), so a rotated secret is
        # seen by every warm container within that time.
        self._callback_secrets = callback_secrets
        self._provider_secrets = provider_signing_secrets

    def attempt_of(self, batch_id: str, row_id: str, token: str | None) -> int | None:
        """The attempt this row's callback URL was made for, or None when the token is not ours."""
        if not token or parse_row_id(row_id) is None:
            return None
        return CallbackSigner(self._callback_secrets()).verify(batch_id, row_id, token)

    def knows_batch(self, batch_id: str) -> bool:
        """A batch of this ledger (one read per batch and container, not one per webhook)."""
        if batch_id in self._known_batches:
            self._known_batches.move_to_end(batch_id)
            return True
        if not self._batch_exists(batch_id):
            return False
        self._known_batches[batch_id] = None
        if len(self._known_batches) > KNOWN_BATCHES:
            self._known_batches.popitem(last=False)
        return True

    def signed_by_provider(self, signature: str | None, raw_body: bytes) -> bool:
        return verify_signature(signature, raw_body, self._provider_secrets())

    def accept(
        self, batch_id: str, row_id: str, attempt: int, webhook: RunWebhook, content_key: str | None = None
    ) -> FinishedRun:
        """Queue the run's end; the queue drops a second message for the same run (a retried or
        duplicated delivery), and the ledger refuses an outcome the row is not waiting for."""
        parsed = parse_row_id(row_id)
        if parsed is None:  # pragma: no cover - attempt_of refused it already
            raise ValueError(f"not a row id: {row_id}")
        chunk, record = parsed
        data = webhook.data
        finished = FinishedRun(
            batch_id=batch_id,
            chunk=chunk,
            record=record,
            attempt=attempt,
            run_id=data.run_id,
            status=RowStatus.COMPLETED if data.status == "completed" else RowStatus.FAILED,
            error_code=data.error_code,
            error_message=data.error_message,
            content_key=content_key,
        )
        self._finished_runs.send(finished)
        return finished
