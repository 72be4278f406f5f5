"""SQS behaviour of the embedded AWS where moto differs from SQS in ways the pipeline could depend on.

Installed inside the moto server process by `moto_fidelity.apply_all`. moto already refuses a
SendMessageBatch over 10 entries, a batch whose bodies exceed 1 MiB, a body over the queue's
MaximumMessageSize and DelaySeconds over 900 (checked here through the server: tests/unit/
test_strict_aws.py); this module adds what it lets through. The checks read the request through moto's
`_get_param`, which parses the JSON protocol boto3 >= 1.34 speaks as well as the query protocol.
"""

from __future__ import annotations

import base64
import functools
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

# API reference, TooManyEntriesInBatchRequest: "the maximum number of entries you can include in a
# single SendMessageBatch, DeleteMessageBatch, or ChangeMessageVisibilityBatch request is 10."
MAX_BATCH_ENTRIES = 10
# API reference, SendMessageBatch: the sum of the batched messages' lengths is at most 1 MiB; and
# MessageAttributeValue: "All parts of the message attribute, including Name, Type, and Value, are
# part of the message size restriction (1 MiB or 1,048,576 bytes)."
MAX_PAYLOAD_BYTES = 1024 * 1024
# API reference, SendMessage MessageDeduplicationId: messages with a deduplication id already sent
# "are accepted successfully but aren't delivered during the 5-minute deduplication interval".
DEDUPLICATION_INTERVAL_S = 300.0
# API reference, CreateQueue QueueName: up to 80 characters; a FIFO queue's name ends in `.fifo`.
MAX_QUEUE_NAME = 80
FIFO_SUFFIX = ".fifo"


def _utf8(text: Any) -> int:
    return len(text.encode()) if isinstance(text, str) else len(text)


def _binary(value: Any) -> int:
    return len(value) if isinstance(value, bytes | bytearray) else len(base64.b64decode(value))


def message_size(body: str, attributes: Mapping[str, Mapping[str, Any]] | None) -> int:
    """Bytes SQS counts for one message: UTF-8 body plus each attribute's name, type and value."""
    size = _utf8(body)
    for name, attribute in (attributes or {}).items():
        size += _utf8(name) + _utf8(attribute.get("DataType", ""))
        if attribute.get("StringValue") is not None:
            size += _utf8(attribute["StringValue"])
        if attribute.get("BinaryValue") is not None:
            size += _binary(attribute["BinaryValue"])
    return size


def _too_many_entries(count: int) -> Exception:
    from moto.sqs.exceptions import TooManyEntriesInBatchRequest

    error: Exception = TooManyEntriesInBatchRequest(count)
    return error


def check_entry_count(entries: Iterable[Any]) -> None:
    count = len(list(entries))
    if count > MAX_BATCH_ENTRIES:
        raise _too_many_entries(count)


def check_message(body: str, attributes: Mapping[str, Any] | None, maximum: int) -> int:
    """Refuse a message over the queue's MaximumMessageSize as SQS does; returns its size.

    moto compares only the body's character count; SQS counts UTF-8 bytes and the attributes.
    """
    from moto.sqs.exceptions import InvalidParameterValue

    size = message_size(body, attributes)
    if size > maximum:
        raise InvalidParameterValue(
            f"One or more parameters are invalid. Reason: Message must be shorter than {maximum} bytes."
        )
    return size


def check_batch_payload(entries: Iterable[Mapping[str, Any]], maximum: int) -> None:
    from moto.sqs.exceptions import BatchRequestTooLong

    entries = list(entries)
    check_entry_count(entries)
    total = sum(message_size(e.get("MessageBody", ""), e.get("MessageAttributes")) for e in entries)
    if total > MAX_PAYLOAD_BYTES:
        raise BatchRequestTooLong(total)
    for entry in entries:
        check_message(entry.get("MessageBody", ""), entry.get("MessageAttributes"), maximum)


def _queue_maximum(handler: Any) -> int:
    queue = handler.sqs_backend.get_queue(handler._get_queue_name())
    return int(queue.maximum_message_size)


def _checked(method: Callable[[Any], Any], check: Callable[[Any], None]) -> Callable[[Any], Any]:
    @functools.wraps(method)
    def checked(handler: Any) -> Any:
        # Raised inside the action method, moto answers it in the request's protocol with HTTP 400
        # and, for JSON, the `x-amzn-query-error` header botocore turns into AWS.SimpleQueueService.*.
        try:
            check(handler)
        except Exception as refused:
            log.warning("embedded AWS refused SQS %s: %s", method.__name__, refused)
            raise
        return method(handler)

    return checked


def _install_request_checks() -> None:
    from moto.sqs.responses import SQSResponse

    def send_one(handler: Any) -> None:
        check_message(
            handler._get_param("MessageBody") or "",
            handler._get_param("MessageAttributes"),
            _queue_maximum(handler),
        )

    def send_batch(handler: Any) -> None:
        check_batch_payload(handler._get_param("Entries", []) or [], _queue_maximum(handler))

    def count_only(handler: Any) -> None:
        check_entry_count(handler._get_param("Entries", []) or [])

    for name, check in (
        ("send_message", send_one),
        ("send_message_batch", send_batch),
        ("delete_message_batch", count_only),
        ("change_message_visibility_batch", count_only),
    ):
        setattr(SQSResponse, name, _checked(getattr(SQSResponse, name), check))


# --- FIFO -------------------------------------------------------------------------------------------


def fifo_physical_name(generated: str) -> str:
    """CloudFormation's generated name for a FIFO queue: `{stack}-{logicalId}-{random}.fifo`, <= 80.

    CloudFormation user guide, AWS::SQS::Queue QueueName: a FIFO queue's name must end in `.fifo`; a
    queue without QueueName gets a generated one, so CloudFormation ends it in `.fifo` itself (moto
    does not, and then refuses to create the queue). The stack/logical-id part is cut, never the
    random suffix that makes the name unique.
    """
    if generated.endswith(FIFO_SUFFIX):
        return generated
    prefix, _, suffix = generated.rpartition("-")
    room = MAX_QUEUE_NAME - len(FIFO_SUFFIX) - len(suffix) - 1
    if not prefix:
        return generated[: MAX_QUEUE_NAME - len(FIFO_SUFFIX)] + FIFO_SUFFIX
    return f"{prefix[:room].rstrip('-')}-{suffix}{FIFO_SUFFIX}"


def _is_true(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _name_generated_fifo_queues() -> None:
    from moto.sqs.models import Queue

    create = Queue.create_from_cloudformation_json.__func__  # type: ignore[attr-defined]

    def create_from_cloudformation_json(
        cls: Any,
        /,
        resource_name: str,
        cloudformation_json: Any,
        account_id: str,
        region_name: str,
        **kw: Any,
    ) -> Any:
        properties = cloudformation_json.get("Properties") or {}
        if _is_true(properties.get("FifoQueue")) and "QueueName" not in properties:
            resource_name = fifo_physical_name(str(resource_name))
        return create(cls, resource_name, cloudformation_json, account_id, region_name, **kw)

    setattr(Queue, "create_from_cloudformation_json", classmethod(create_from_cloudformation_json))  # noqa: B010


class DeduplicationWindow:
    """Deduplication ids one FIFO queue accepted in the last five minutes, deleted messages included.

    moto compares a new message only with messages still in the queue, so a message received and
    deleted could be sent again and delivered twice; SQS would drop it for five minutes after the
    first send. With `DeduplicationScope: messageGroup` the same id in another group is not a duplicate.
    """

    def __init__(self, interval_s: float = DEDUPLICATION_INTERVAL_S) -> None:
        self.interval_s = interval_s
        self._first_sent: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def admit(self, scope: str, dedup_id: str, now: float | None = None) -> bool:
        """True if the message is to be delivered; a delivered id is remembered for the interval."""
        now = time.monotonic() if now is None else now
        with self._lock:
            first = self._first_sent.get((scope, dedup_id))
            if first is not None and now - first < self.interval_s:
                return False
            self._first_sent[(scope, dedup_id)] = now
            if len(self._first_sent) > 10_000:  # forget what has expired, now and then
                self._first_sent = {k: t for k, t in self._first_sent.items() if now - t < self.interval_s}
            return True


def _deduplicate_for_five_minutes() -> None:
    import moto.sqs.models as sqs_models

    add_message = sqs_models.Queue.add_message
    windows_lock = threading.Lock()

    def window_of(queue: Any) -> DeduplicationWindow:
        # One window per queue object: a queue deleted and created again starts with none.
        with windows_lock:
            window: DeduplicationWindow = queue.__dict__.setdefault("_rowcall_dedup", DeduplicationWindow())
            return window

    def deduplicated_add_message(queue: Any, message: Any) -> None:
        dedup_id = getattr(message, "deduplication_id", None)
        if queue.fifo_queue and dedup_id:
            # ContentBasedDeduplication: moto has already set the id to the body's SHA-256, as SQS does.
            by_group = getattr(queue, "deduplication_scope", "queue") == "messageGroup"
            scope = (getattr(message, "group_id", None) or "") if by_group else ""
            if not window_of(queue).admit(scope, dedup_id):
                return  # accepted, not delivered: SendMessage still answers with a MessageId
        add_message(queue, message)

    setattr(sqs_models.Queue, "add_message", deduplicated_add_message)  # noqa: B010
    # moto's own check (messages still queued, blind to DeduplicationScope) would drop a message of
    # another group under messageGroup scope; the window above is the only deduplication now.
    setattr(sqs_models, "DEDUPLICATION_TIME_IN_SECONDS", float("-inf"))  # noqa: B010 - moto global


def install() -> None:
    _install_request_checks()
    _name_generated_fifo_queues()
    _deduplicate_for_five_minutes()
