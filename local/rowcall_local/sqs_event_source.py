"""SQS -> function, as a Lambda event source mapping does it (batches, partial batch responses)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from rowcall_local.function_pool import Invocation, PoolStopped
from rowcall_local.template_wiring import SqsTrigger

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageAttributeValueOutputTypeDef, MessageTypeDef

log = logging.getLogger(__name__)

Invoker = Callable[[str, Any], Invocation]


def _attribute_value(value: MessageAttributeValueOutputTypeDef) -> dict[str, Any]:
    return {
        "stringValue": value.get("StringValue"),
        "binaryValue": base64.b64encode(value["BinaryValue"]).decode() if "BinaryValue" in value else None,
        "stringListValues": list(value.get("StringListValues", [])),
        "binaryListValues": [base64.b64encode(v).decode() for v in value.get("BinaryListValues", [])],
        "dataType": value.get("DataType"),
    }


def sqs_record(message: MessageTypeDef, queue_arn: str, region: str) -> dict[str, Any]:
    """One record of Lambda's SQS event."""
    record: dict[str, Any] = {
        "messageId": message["MessageId"],
        "receiptHandle": message["ReceiptHandle"],
        "body": message.get("Body", ""),
        "attributes": dict(message.get("Attributes", {})),
        "messageAttributes": {
            k: _attribute_value(v) for k, v in message.get("MessageAttributes", {}).items()
        },
        "md5OfBody": message.get("MD5OfBody"),
        "eventSource": "aws:sqs",
        "eventSourceARN": queue_arn,
        "awsRegion": region,
    }
    if "MD5OfMessageAttributes" in message:
        record["md5OfMessageAttributes"] = message["MD5OfMessageAttributes"]
    return record


def failed_message_ids(payload: Any, message_ids: Sequence[str]) -> set[str]:
    """Which messages stay on the queue, read from a ReportBatchItemFailures response.

    As on AWS, a malformed response or an unknown/empty itemIdentifier fails the whole batch.
    """
    if payload is None or (isinstance(payload, dict) and not payload.get("batchItemFailures")):
        return set()
    failures = payload.get("batchItemFailures") if isinstance(payload, dict) else None
    if not isinstance(failures, list):
        return set(message_ids)
    failed = set()
    for failure in failures:
        item = failure.get("itemIdentifier") if isinstance(failure, dict) else None
        if not isinstance(item, str) or item not in message_ids:
            return set(message_ids)
        failed.add(item)
    return failed


def take_over_from_moto(lambda_client: LambdaClient, triggers: Sequence[SqsTrigger]) -> None:
    """Disable moto's own event source mappings: on every send, moto would otherwise receive the
    messages itself, "invoke" the function it cannot run, and delete them.
    """
    for trigger in triggers:
        lambda_client.update_event_source_mapping(UUID=trigger.mapping_uuid, Enabled=False)


class SqsEventSource:
    """Handles one received batch for one event source mapping."""

    def __init__(self, trigger: SqsTrigger, sqs: SQSClient, invoke: Invoker, region: str) -> None:
        self.trigger = trigger
        self._sqs = sqs
        self._invoke = invoke
        self._region = region

    def handle(self, messages: Sequence[MessageTypeDef]) -> None:
        event = {"Records": [sqs_record(m, self.trigger.queue_arn, self._region) for m in messages]}
        try:
            result = self._invoke(self.trigger.function_id, event)
        except PoolStopped:
            return
        if not result.ok:
            return  # the whole batch becomes visible again after the visibility timeout
        ids = [m["MessageId"] for m in messages]
        failed = failed_message_ids(result.payload, ids) if self.trigger.report_batch_item_failures else set()
        done = [m for m in messages if m["MessageId"] not in failed]
        for start in range(0, len(done), 10):
            chunk = done[start : start + 10]
            response = self._sqs.delete_message_batch(
                QueueUrl=self.trigger.queue_url,
                Entries=[{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(chunk)],
            )
            for failure in response.get("Failed", []):
                log.warning("%s: delete failed: %s", self.trigger.function_id, failure)
