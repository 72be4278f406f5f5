"""Run webhooks: authenticate twice, then hand the run's end to the finished-run queue.

Order matters: the per-row URL token is checked before anything else is read (a forged
callback costs one HMAC), then the signature of the batch's provider over the raw body (FLORA's
`Flora-Signature`, Replicate's Standard Webhooks headers: the batch decides which, never the
delivery), and only then is the body parsed. The webhook writes nothing itself: one SQS send, so
it answers in milliseconds and FLORA's three retries are never spent on our latency, and the
recorder behind the queue writes the outcomes of many runs together.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from rowcall.flora_signature import verify_signature
from rowcall.identity import CallbackSigner, parse_row_id
from rowcall.models import FinishedRun, RowStatus, RunWebhook
from rowcall.providers.flora import FloraDeliveries
from rowcall.providers.port import Delivery, DeliveryReader
from rowcall.providers.replicate import ReplicateDeliveries
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
        batch_provider: Callable[[str], str | None] | None = None,
        replicate_signing_secrets: SecretSource | None = None,
    ) -> None:
        self._finished_runs = finished_runs
        self._batch_exists = batch_exists
        # A batch's provider (None: no such batch); without it every batch is FLORA's.
        self._batch_provider = batch_provider or (
            lambda batch_id: "flora" if batch_exists(batch_id) else None
        )
        self._providers: OrderedDict[str, str] = OrderedDict()
        self._readers: dict[str, DeliveryReader] = {"flora": FloraDeliveries(provider_signing_secrets)}
        if replicate_signing_secrets is not None:
            self._readers["replicate"] = ReplicateDeliveries(replicate_signing_secrets)
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

    def provider_of(self, batch_id: str) -> str | None:
        """The batch's provider, None for no batch of this ledger (one read per batch and
        container, not one per webhook: a batch's provider never changes)."""
        if batch_id in self._providers:
            self._providers.move_to_end(batch_id)
            return self._providers[batch_id]
        provider = self._batch_provider(batch_id)
        if provider is None:
            return None
        self._providers[batch_id] = provider
        if len(self._providers) > KNOWN_BATCHES:
            self._providers.popitem(last=False)
        return provider

    def reader_for(self, provider: str | None) -> DeliveryReader | None:
        """How the provider's deliveries are verified and read; FLORA's for a batch this ledger
        does not have (its delivery is refused 401 or 404 as before); None for a provider this
        stack has no secret for."""
        return self._readers.get(provider or "flora")

    def accept_delivery(
        self, batch_id: str, row_id: str, attempt: int, delivery: Delivery, content_key: str | None = None
    ) -> FinishedRun:
        """`accept` for a delivery of any provider: the run itself goes with it where the webhook
        carried it (Replicate's prediction with its outputs), so the recorder asks nothing."""
        parsed = parse_row_id(row_id)
        if parsed is None:  # pragma: no cover - attempt_of refused it already
            raise ValueError(f"not a row id: {row_id}")
        chunk, record = parsed
        finished = FinishedRun(
            batch_id=batch_id,
            chunk=chunk,
            record=record,
            attempt=attempt,
            run_id=delivery.run_id,
            status=RowStatus.COMPLETED if delivery.completed else RowStatus.FAILED,
            error_code=delivery.error_code,
            error_message=delivery.error_message,
            content_key=content_key,
            run=delivery.run if delivery.completed else None,
        )
        self._finished_runs.send(finished)
        return finished

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
