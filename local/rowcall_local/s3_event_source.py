"""S3 -> function. moto does not apply a bucket's Lambda notifications, so the runtime routes
the template's S3 event through an internal queue (a bucket QueueConfiguration moto does apply)
and invokes the function asynchronously, with Lambda's async retries and on-failure destination.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from rowcall_local.function_pool import PoolStopped
from rowcall_local.sqs_event_source import Invoker
from rowcall_local.template_wiring import FunctionWiring, S3Trigger

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import QueueConfigurationTypeDef
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

log = logging.getLogger(__name__)

RETRY_DELAYS_S = (1.0, 2.0)  # Lambda waits ~1 and ~2 minutes between async retries; locally, seconds


def internal_queue_name(stack_name: str, trigger: S3Trigger) -> str:
    return f"{stack_name}-{trigger.function_id}-{trigger.event_name}-s3"[:80]


def connect_bucket(
    s3: S3Client,
    sqs: SQSClient,
    stack_name: str,
    triggers: Sequence[S3Trigger],
    timeout_s: Callable[[S3Trigger], int],
) -> dict[S3Trigger, str]:
    """Create each trigger's internal queue and point its bucket's notifications at them.

    Returns trigger -> queue URL. One configuration per bucket, since a put replaces it whole.
    """
    queues: dict[S3Trigger, str] = {}
    configs: dict[str, list[dict[str, Any]]] = {}
    for trigger in triggers:
        url = sqs.create_queue(
            QueueName=internal_queue_name(stack_name, trigger),
            # Invisible while the function (and its retries) may still be working on it.
            Attributes={"VisibilityTimeout": str(min(43200, timeout_s(trigger) * 3 + 60))},
        )["QueueUrl"]
        arn = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        queues[trigger] = url
        config: dict[str, Any] = {
            "Id": f"{trigger.function_id}-{trigger.event_name}",
            "QueueArn": arn,
            "Events": list(trigger.events),
        }
        if trigger.filter_rules:
            rules = [{"Name": name, "Value": value} for name, value in trigger.filter_rules]
            config["Filter"] = {"Key": {"FilterRules": rules}}
        configs.setdefault(trigger.bucket, []).append(config)
    for bucket, queue_configs in configs.items():
        s3.put_bucket_notification_configuration(
            Bucket=bucket,
            NotificationConfiguration={
                "QueueConfigurations": cast("list[QueueConfigurationTypeDef]", queue_configs)
            },
        )
    return queues


def _failure_record(
    function: FunctionWiring, event: Any, attempts: int, error: dict[str, Any]
) -> dict[str, Any]:
    """Lambda's on-failure destination record for an async invocation."""
    return {
        "version": "1.0",
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
        "requestContext": {
            "functionArn": f"{function.arn}:$LATEST",
            "condition": "RetriesExhausted",
            "approximateInvokeCount": attempts,
        },
        "requestPayload": event,
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
        "responsePayload": error,
    }


class S3EventSource:
    """Turns the internal queue's S3 notification messages into async invocations."""

    def __init__(
        self, trigger: S3Trigger, function: FunctionWiring, sqs: SQSClient, queue_url: str, invoke: Invoker
    ) -> None:
        self.trigger = trigger
        self._function = function
        self._sqs = sqs
        self._queue_url = queue_url
        self._invoke = invoke
        self._stop = threading.Event()

    def request_stop(self) -> None:
        self._stop.set()

    def handle(self, messages: Sequence[MessageTypeDef]) -> None:
        for message in messages:
            body = json.loads(message.get("Body", "{}"))
            # S3 sends s3:TestEvent when the configuration is set; it is not an object event.
            for record in body.get("Records", []):
                if not self._invoke_async({"Records": [record]}):
                    return  # stopping: leave the message for a later run
            self._sqs.delete_message(QueueUrl=self._queue_url, ReceiptHandle=message["ReceiptHandle"])

    def _invoke_async(self, event: dict[str, Any]) -> bool:
        """Invoke with Lambda's async retries; False only when stopping."""
        attempts = 1 + self._function.max_retry_attempts
        error: dict[str, Any] = {}
        for attempt in range(1, attempts + 1):
            try:
                result = self._invoke(self.trigger.function_id, event)
            except PoolStopped:
                return False
            if result.error is None:
                return True
            error = {"errorType": result.error.type, "errorMessage": result.error.message}
            if attempt < attempts:
                delay = RETRY_DELAYS_S[min(attempt - 1, len(RETRY_DELAYS_S) - 1)]
                if self._stop.wait(delay):
                    return False
        log.error("%s: S3 event dropped after %d attempts: %s", self.trigger.function_id, attempts, error)
        if self._function.on_failure_queue_url:
            self._sqs.send_message(
                QueueUrl=self._function.on_failure_queue_url,
                MessageBody=json.dumps(_failure_record(self._function, event, attempts, error)),
            )
        return True
