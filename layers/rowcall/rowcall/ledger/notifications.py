"""A finish's on-done delivery, as steps on the batch item: claimed by one sender at a time,
each once-per-finish step recorded when done, settled delivered, failed or waiting to retry."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any, Literal

from rowcall.ledger.keys import batch_key
from rowcall.ledger.table import Table
from rowcall.models import BatchState, DoneMessage, iso, utcnow

NotificationStep = Literal["results_written", "sns_published"]


class NotificationLedger:
    def __init__(self, table: Table, clock: Callable[[], datetime] = utcnow) -> None:
        self._table = table
        self._clock = clock

    def claim(self, message: DoneMessage, *, lease_seconds: int, now_epoch: float) -> BatchState | None:
        """Only one delivery of a finish runs at a time; an expired lease can be taken over."""
        stored = self._table.update(
            batch_key(message.batch_id),
            "SET #notification.#status = :sending, #notification.#lease_until = :until",
            condition="#finish_seq = :seq AND #notification.#attempts = :attempt AND "
            "(#notification.#status = :pending OR "
            "(#notification.#status IN (:sending, :retrying) AND #notification.#lease_until <= :now))",
            values={
                ":sending": "sending",
                ":pending": "pending",
                ":retrying": "retrying",
                ":until": math.ceil(now_epoch) + lease_seconds,
                ":now": math.ceil(now_epoch),
                ":seq": message.finish_seq,
                ":attempt": message.attempt,
            },
        )
        return BatchState.model_validate(stored) if stored is not None else None

    def release(self, message: DoneMessage, *, now_epoch: float) -> bool:
        """Gives up a claim whose delivery failed mid-way, so its retry can claim at once
        instead of waiting out the lease (kept for deliveries that die without a word).
        False when the delivery had already settled its attempt."""
        released = self._table.update(
            batch_key(message.batch_id),
            "SET #notification.#lease_until = :now",
            condition="#finish_seq = :seq AND #notification.#attempts = :attempt AND "
            "#notification.#status = :sending",
            values={
                ":now": math.floor(now_epoch),
                ":seq": message.finish_seq,
                ":attempt": message.attempt,
                ":sending": "sending",
            },
        )
        return released is not None

    def record_step(self, batch_id: str, finish_seq: int, step: NotificationStep) -> None:
        """Marks a once-per-finish step as done."""
        self._table.update(
            batch_key(batch_id),
            f"SET #notification.#{step} = :true",
            condition="#finish_seq = :seq",
            values={":true": True, ":seq": finish_seq},
        )

    def record_results(self, batch_id: str, finish_seq: int, csv_key: str, errors_key: str) -> None:
        self._table.update(
            batch_key(batch_id),
            "SET #results = :results, #notification.#results_written = :true",
            condition="#finish_seq = :seq",
            values={
                ":results": {"csv_key": csv_key, "errors_key": errors_key},
                ":true": True,
                ":seq": finish_seq,
            },
        )

    def settle(
        self,
        batch_id: str,
        finish_seq: int,
        *,
        status: str,
        attempts: int,
        retry_at_epoch: float | None = None,
    ) -> None:
        """Delivered, failed for good, or waiting for its next attempt (lease ends at that time).

        Delivered or failed, the batch leaves the index of open work."""
        values: dict[str, Any] = {
            ":status": status,
            ":attempts": attempts,
            ":seq": finish_seq,
            ":now": iso(self._clock()),
        }
        sets = "SET #notification.#status = :status, #notification.#attempts = :attempts, #updated_at = :now"
        if status == "delivered":
            sets += ", #notification.#delivered_at = :now"
        if retry_at_epoch is not None:
            sets += ", #notification.#lease_until = :until"
            values[":until"] = math.ceil(retry_at_epoch)
        if status in ("delivered", "failed"):
            sets += " REMOVE #open_pk, #open_sk"
        self._table.update(batch_key(batch_id), sets, condition="#finish_seq = :seq", values=values)
