"""The two SQS queues the pipeline writes to."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rowcall.models import ChunkMessage, DoneMessage, FinishedRun

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

SEND_BATCH_LIMIT = 10
MAX_DELAY_SECONDS = 900


class ChunkQueue:
    def __init__(self, sqs: SQSClient, url: str) -> None:
        self._sqs = sqs
        self._url = url

    def send(self, messages: Sequence[ChunkMessage], delay_seconds: int = 0) -> None:
        """Send up to ten chunks; entries SQS refuses are sent again until none is left."""
        if len(messages) > SEND_BATCH_LIMIT:
            raise ValueError(f"at most {SEND_BATCH_LIMIT} messages per send")
        # Entry ids by position: one send may wake chunks of several batches with the same index.
        pending = {str(i): m for i, m in enumerate(messages)}
        delay = max(0, min(delay_seconds, MAX_DELAY_SECONDS))
        for _ in range(5):
            if not pending:
                return
            got = self._sqs.send_message_batch(
                QueueUrl=self._url,
                Entries=[
                    {
                        "Id": i,
                        "MessageBody": m.model_dump_json(),
                        "DelaySeconds": delay,
                    }
                    for i, m in pending.items()
                ],
            )
            for sent in got.get("Successful", []):
                pending.pop(sent["Id"], None)
        if pending:
            refused = sorted(f"{m.batch_id}/{m.chunk.index}" for m in pending.values())
            raise RuntimeError(f"SQS refused chunk messages {refused}")


class DoneQueue:
    def __init__(self, sqs: SQSClient, url: str) -> None:
        self._sqs = sqs
        self._url = url

    def send(self, message: DoneMessage, delay_seconds: int = 0) -> None:
        self._sqs.send_message(
            QueueUrl=self._url,
            MessageBody=message.model_dump_json(),
            DelaySeconds=max(0, min(delay_seconds, MAX_DELAY_SECONDS)),
        )


class FinishedRunQueue:
    """A FIFO queue deduplicated by run id: a run's webhook delivered twice, or retried by the
    provider within SQS's five-minute deduplication window, asks for its outputs once.

    Each run is its own message group, so no run waits behind another's retry.
    """

    def __init__(self, sqs: SQSClient, url: str) -> None:
        self._sqs = sqs
        self._url = url

    def send(self, message: FinishedRun) -> None:
        # Group and deduplication ids take at most 128 characters; a provider's run id may not.
        run = hashlib.sha256(message.run_id.encode()).hexdigest()
        self._sqs.send_message(
            QueueUrl=self._url,
            MessageBody=message.model_dump_json(),
            MessageGroupId=run,
            MessageDeduplicationId=run,
        )


class RedeliverySchedule:
    """Brings a message that will be retried back sooner than the queue's visibility timeout.

    The chunk queue's timeout is sized for the worker's longest run (6x its timeout), far too
    long to wait after a provider outage; a deferred chunk comes back after 30 s, doubling.
    """

    def __init__(self, sqs: SQSClient, *, base_s: int = 30, max_s: int = MAX_DELAY_SECONDS) -> None:
        self._sqs = sqs
        self._base = base_s
        self._max = max_s

    def delay_for(self, receive_count: int) -> int:
        return int(min(self._max, self._base * 2 ** max(0, receive_count - 1)))

    def retry_later(self, queue_arn: str, receipt_handle: str, receive_count: int) -> int:
        _, _, _, _, account, name = queue_arn.split(":", 5)
        url = self._sqs.get_queue_url(QueueName=name, QueueOwnerAWSAccountId=account)["QueueUrl"]
        delay = self.delay_for(receive_count)
        self._sqs.change_message_visibility(
            QueueUrl=url, ReceiptHandle=receipt_handle, VisibilityTimeout=delay
        )
        return delay
