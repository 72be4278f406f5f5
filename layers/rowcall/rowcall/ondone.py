"""On-done delivery: results CSV, one SNS message, the signed webhook retried on its schedule.

One finish of a batch is delivered by one claim at a time. Each step that must happen once per
finish (results written, SNS published) is recorded when done, so a delivery taken over after a
crash skips it. Webhook attempts keep one `webhook-id` per finish, which is how consumers dedupe.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx
from aws_lambda_powertools import Logger

from rowcall.api import BatchQueries
from rowcall.ledger import Ledger
from rowcall.models import BatchState, BatchStatus, DoneMessage, ResultsLocation
from rowcall.outbound import ForbiddenDestination
from rowcall.queues import DoneQueue
from rowcall.results import upload_results
from rowcall.signing import WebhookSigner

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sns import SNSClient

logger = Logger(child=True)

# Standard Webhooks' schedule after the first attempt: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
RETRY_SCHEDULE_S = (5, 300, 1800, 7200, 18000, 36000, 36000)
LEASE_S = 330  # longer than the notifier's timeout, so a live delivery is never taken over
# A delivery that failed mid-way (an AWS error after its claim) hands itself back this soon,
# doubling, a few times; after that SQS's redelivery (the queue's 30-minute visibility timeout,
# then its dead-letter queue) takes over. Without it one error held the finish for 11 minutes.
REQUEUE_DELAYS_S = (5, 15, 60, 180)

EVENT_TYPES = {
    BatchStatus.COMPLETED: "batch.completed",
    BatchStatus.PARTIAL: "batch.completed",
    BatchStatus.FAILED: "batch.failed",
    BatchStatus.CANCELED: "batch.canceled",
}


def event_type(batch: BatchState) -> str:
    return EVENT_TYPES.get(batch.status, "batch.completed")


def webhook_id(batch_id: str, finish_seq: int) -> str:
    return f"msg_{batch_id}_{finish_seq}"


@dataclass(frozen=True)
class DeliveryResult:
    status: str
    attempts: int = 0
    detail: str = ""


class OnDoneDelivery:
    """`http` sends to a URL a user named: build it with `rowcall.outbound.webhook_client`, which
    checks the destination at each attempt and raises ForbiddenDestination (failed for good)."""

    def __init__(
        self,
        *,
        s3: S3Client,
        sns: SNSClient,
        ledger: Ledger,
        done_queue: DoneQueue,
        http: httpx.Client,
        signer: WebhookSigner,
        topic_arn: str,
        clock: Callable[[], float] = time.time,
        retry_schedule_s: tuple[int, ...] = RETRY_SCHEDULE_S,
    ) -> None:
        self._s3 = s3
        self._sns = sns
        self._ledger = ledger
        self._done = done_queue
        self._http = http
        self._signer = signer
        self._topic = topic_arn
        self._clock = clock
        self._schedule = retry_schedule_s
        self._queries = BatchQueries(ledger)

    def deliver(self, message: DoneMessage) -> DeliveryResult:
        now = self._clock()
        batch = self._ledger.notifications.claim(message, lease_seconds=LEASE_S, now_epoch=now)
        if batch is None:
            return self._not_claimed(message, now)
        try:
            return self._deliver_claimed(batch, message)
        except Exception:
            # Released first: the requeued message must find the claim free. An attempt already
            # settled (its retry message is what failed) is the redelivered original's to repair.
            if message.requeued >= len(REQUEUE_DELAYS_S) or not self._ledger.notifications.release(
                message, now_epoch=self._clock()
            ):
                raise
            self._done.send(
                message.model_copy(update={"requeued": message.requeued + 1}),
                delay_seconds=REQUEUE_DELAYS_S[message.requeued],
            )
            logger.exception(
                "on-done delivery failed mid-way; requeued", extra={"batch_id": message.batch_id}
            )
            return DeliveryResult("requeued", batch.notification.attempts)

    def _deliver_claimed(self, batch: BatchState, message: DoneMessage) -> DeliveryResult:
        notification = batch.notification
        if not notification.results_written:
            csv_key, err_key = upload_results(self._s3, self._ledger, batch)
            self._ledger.notifications.record_results(batch.batch_id, message.finish_seq, csv_key, err_key)
            batch = batch.model_copy(update={"results": ResultsLocation(csv_key=csv_key, errors_key=err_key)})
        body = self._body(batch)
        if not notification.sns_published:
            self._publish(batch, message, body)
            self._ledger.notifications.record_step(batch.batch_id, message.finish_seq, "sns_published")
        url = batch.spec.on_done_url
        if url is None:
            self._ledger.notifications.settle(
                batch.batch_id, message.finish_seq, status="delivered", attempts=notification.attempts + 1
            )
            return DeliveryResult("delivered", notification.attempts + 1, "sns only")
        return self._post_webhook(batch, message, url, body)

    def _not_claimed(self, message: DoneMessage, now: float) -> DeliveryResult:
        """Keeps a scheduled retry alive when this message cannot deliver it yet.

        A retry scheduled past SQS's 15-minute delay cap waits in hops until its time comes; and
        when the retry message of a failed attempt was never sent (the sender died after
        recording the attempt), the redelivered earlier message sends it again.
        """
        batch = self._ledger.batches.get(message.batch_id)
        if batch is None or batch.finish_seq != message.finish_seq:
            return DeliveryResult("not_claimed")
        notification = batch.notification
        if notification.status != "retrying" or notification.attempts not in (
            message.attempt,
            message.attempt + 1,
        ):
            return DeliveryResult("not_claimed")
        wait = max(0, math.ceil((notification.lease_until or 0) - now))
        self._done.send(
            message.model_copy(update={"attempt": notification.attempts, "requeued": 0}), delay_seconds=wait
        )
        return DeliveryResult("waiting", notification.attempts)

    def _body(self, batch: BatchState) -> bytes:
        payload: dict[str, Any] = {
            "type": event_type(batch),
            "timestamp": batch.finished_at or batch.updated_at,
            "data": self._queries.view(batch),
        }
        return json.dumps(payload, separators=(",", ":")).encode()

    def _publish(self, batch: BatchState, message: DoneMessage, body: bytes) -> None:
        self._sns.publish(
            TopicArn=self._topic,
            Message=body.decode(),
            MessageAttributes={
                "type": {"DataType": "String", "StringValue": event_type(batch)},
                "batch_id": {"DataType": "String", "StringValue": batch.batch_id},
                "webhook_id": {
                    "DataType": "String",
                    "StringValue": webhook_id(batch.batch_id, message.finish_seq),
                },
            },
        )

    def _refused(self, batch: BatchState, message: DoneMessage, attempts: int, reason: str) -> DeliveryResult:
        self._ledger.notifications.settle(
            batch.batch_id, message.finish_seq, status="failed", attempts=attempts
        )
        logger.error("on-done refused", extra={"batch_id": batch.batch_id, "reason": reason})
        return DeliveryResult("failed", attempts, reason)

    def _post_webhook(self, batch: BatchState, message: DoneMessage, url: str, body: bytes) -> DeliveryResult:
        attempts = batch.notification.attempts + 1
        headers = self._signer.headers(
            webhook_id(batch.batch_id, message.finish_seq), int(self._clock()), body
        )
        headers |= {"content-type": "application/json", "user-agent": "rowcall-on-done/1"}
        try:
            response = self._http.post(url, content=body, headers=headers)
            detail = f"HTTP {response.status_code}"
            delivered = 200 <= response.status_code < 300
        except ForbiddenDestination as exc:
            # Checked at upload, but DNS has changed since: never sent, and never retried (a retry
            # would only give a rebinding DNS server another try).
            return self._refused(batch, message, attempts, f"on-done-url: {exc}")
        except httpx.HTTPError as exc:
            detail, delivered = f"{type(exc).__name__}", False
        if delivered:
            self._ledger.notifications.settle(
                batch.batch_id, message.finish_seq, status="delivered", attempts=attempts
            )
            logger.info("on-done delivered", extra={"batch_id": batch.batch_id, "attempts": attempts})
            return DeliveryResult("delivered", attempts, detail)
        if attempts > len(self._schedule):
            self._ledger.notifications.settle(
                batch.batch_id, message.finish_seq, status="failed", attempts=attempts
            )
            logger.error(
                "on-done gave up", extra={"batch_id": batch.batch_id, "attempts": attempts, "detail": detail}
            )
            return DeliveryResult("failed", attempts, detail)
        delay = self._schedule[attempts - 1]
        self._ledger.notifications.settle(
            batch.batch_id,
            message.finish_seq,
            status="retrying",
            attempts=attempts,
            retry_at_epoch=self._clock() + delay,
        )
        self._done.send(message.model_copy(update={"attempt": attempts, "requeued": 0}), delay_seconds=delay)
        logger.warning(
            "on-done attempt failed", extra={"attempts": attempts, "detail": detail, "retry_in_s": delay}
        )
        return DeliveryResult("retrying", attempts, detail)
