"""Run webhooks: authenticate twice, then record a failure at once or queue the outputs' fetch.

Order matters: the per-row URL token is checked before anything else is read (a forged
callback costs one HMAC), then FLORA's `Flora-Signature` over the raw body, and only then is the
body parsed. Nothing slow happens here, so FLORA's three retries are not spent on our latency.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from aws_lambda_powertools import Logger

from rowcall.finishing import BatchFinisher
from rowcall.flora_signature import verify_signature
from rowcall.identity import CallbackSigner, parse_row_id
from rowcall.ledger import Ledger
from rowcall.models import FetchMessage, RowOutcome, RowStatus, RunWebhook
from rowcall.queues import FetchQueue

logger = Logger(child=True)

SecretSource = Callable[[], Sequence[str]]


@dataclass(frozen=True)
class CallbackResult:
    recorded: bool
    status: Literal["failed", "fetching", "unknown_row"]


class CallbackRecorder:
    def __init__(
        self,
        *,
        ledger: Ledger,
        finisher: BatchFinisher,
        fetch_queue: FetchQueue,
        callback_secrets: SecretSource,
        provider_signing_secrets: SecretSource,
    ) -> None:
        self._ledger = ledger
        self._finisher = finisher
        self._fetch_queue = fetch_queue
        # Read on every callback (the sources cache for a few minutes), so a rotated secret is
        # seen by every warm container within that time.
        self._callback_secrets = callback_secrets
        self._provider_secrets = provider_signing_secrets

    def attempt_of(self, batch_id: str, row_id: str, token: str | None) -> int | None:
        """The attempt this row's callback URL was made for, or None when the token is not ours."""
        if not token:
            return None
        return CallbackSigner(self._callback_secrets()).verify(batch_id, row_id, token)

    def signed_by_provider(self, signature: str | None, raw_body: bytes) -> bool:
        return verify_signature(signature, raw_body, self._provider_secrets())

    def record(self, batch_id: str, row_id: str, attempt: int, webhook: RunWebhook) -> CallbackResult:
        parsed = parse_row_id(row_id)
        if parsed is None:
            return CallbackResult(False, "unknown_row")
        chunk, record = parsed
        data = webhook.data
        if data.status == "completed":
            # The envelope carries no outputs; the fetch queue drops a second request for the run.
            fetch = FetchMessage(
                batch_id=batch_id, chunk=chunk, record=record, attempt=attempt, run_id=data.run_id
            )
            self._fetch_queue.send(fetch)
            return CallbackResult(False, "fetching")
        outcome = RowOutcome(
            status=RowStatus.FAILED,
            run_id=data.run_id,
            error_code=data.error_code or "run_failed",
            error_message=data.error_message,
        )
        recorded = self._ledger.row_finished(batch_id, chunk, record, outcome, attempt=attempt)
        if not recorded:
            logger.info("callback changed nothing", extra={"row_id": row_id, "run_id": data.run_id})
        # Also after a duplicate: it completes whatever a crashed earlier delivery left half done.
        self._finisher.after_row_finished(batch_id, chunk)
        return CallbackResult(recorded, "failed")
