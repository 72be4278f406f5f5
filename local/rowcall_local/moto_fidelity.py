"""Patches that make moto's server behave like the AWS services it stands in for, where it matters.

Applied only inside the moto server process; Lambda code never sees them.
"""

from __future__ import annotations

import functools
import threading
import time
from datetime import datetime
from typing import Any


def make_dynamodb_requests_atomic() -> None:
    """DynamoDB applies each request atomically; moto's threaded server does not.

    Seen here: concurrent TransactWriteItems failed with `dictionary changed size during
    iteration` (HTTP 500), and a conditional write could interleave with another request, which
    would let two racing callbacks both win. One lock around each DynamoDB request restores the
    guarantee the ledger is built on.
    """
    from moto.dynamodb.responses import DynamoHandler

    lock = threading.Lock()
    call_action = DynamoHandler.call_action

    def atomic_call_action(self: Any) -> Any:
        with lock:
            return call_action(self)

    DynamoHandler.call_action = atomic_call_action  # type: ignore[method-assign]


def make_transactions_cost_their_items() -> None:
    """moto snapshots every touched table whole before a TransactWriteItems, for rollback.

    That makes each callback's transaction cost O(table size): seen here, a 1,000-row batch ran
    at 6 rows/s. DynamoDB's cost depends on the items written, so snapshot just those items and
    put them back if the transaction is cancelled. Runs under the DynamoDB request lock.
    """
    import copy

    import moto.dynamodb.models as models
    from moto.dynamodb.models.table import Table

    original = models.DynamoDBBackend.transact_write_items

    class _TablesByReference:
        """`copy` as the transaction code sees it: tables are not copied, anything else is."""

        @staticmethod
        def deepcopy(value: Any, memo: Any = None) -> Any:
            return value if isinstance(value, Table) else copy.deepcopy(value, memo)

    def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
        snapshots: list[tuple[str, dict[str, Any], dict[str, Any] | None]] = []
        for entry in transact_items:
            op_type, op = next(iter(entry.items()))
            table = self.get_table(op["TableName"])
            if op_type == "Put":
                key = {table.hash_key_attr: op["Item"][table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = op["Item"][table.range_key_attr]
            else:
                key = op["Key"]
            current = self.get_item(op["TableName"], key)
            snapshots.append(
                (op["TableName"], key, copy.deepcopy(current.to_json()["Attributes"]) if current else None)
            )
        setattr(models, "copy", _TablesByReference)  # noqa: B010 - swapped back below
        try:
            original(self, transact_items)
        except Exception:
            for table_name, key, attributes in reversed(snapshots):
                if attributes is None:
                    if self.get_item(table_name, key) is not None:
                        self.delete_item(table_name, key)
                else:
                    self.put_item(table_name, attributes)
            raise
        finally:
            setattr(models, "copy", copy)  # noqa: B010

    models.DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def complete_s3_events() -> None:
    """S3 events carry the object's versionId and a sequencer on AWS; moto's carry neither.

    Without them a batch cannot be tied to the exact object version uploaded (two quick uploads
    of one key would look like one). Also fills the identity fields AWS sends, so the event has
    the shape Powertools' S3Model expects.
    """
    import itertools
    from urllib.parse import quote_plus

    import moto.s3.notifications as notifications

    build = notifications._get_s3_event
    # Sequencers grow per event, as AWS's do per key; the nanosecond clock keeps them unique.
    counter = itertools.count()

    def event_with_identity(event_name: str, bucket: Any, key: Any, notification_id: str) -> dict[str, Any]:
        event: dict[str, Any] = build(event_name, bucket, key, notification_id)
        for record in event["Records"]:
            s3_object = record["s3"]["object"]
            s3_object["key"] = quote_plus(key.name, safe="/")  # AWS leaves "/" as it is
            version = getattr(key, "version_id", None)
            if version and version != "null":
                s3_object["versionId"] = version
            s3_object["sequencer"] = f"{time.time_ns():016X}{next(counter) % 0x10000:04X}"
            record.setdefault("userIdentity", {"principalId": "AWS:LOCAL"})
            record.setdefault("requestParameters", {"sourceIPAddress": "127.0.0.1"})
            record.setdefault("responseElements", {"x-amz-request-id": "LOCAL", "x-amz-id-2": "LOCAL"})
            record["s3"]["bucket"].setdefault("ownerIdentity", {"principalId": "LOCAL"})
        return event

    notifications._get_s3_event = event_with_identity


def speed_up_sqs_clock() -> None:
    """moto's SQS recounts every queued message through a slow clock; give it a fast one.

    Measured (facts.md): 2,000-deep batch sends drop from ~320 ms to ~17 ms.
    """
    import moto.sqs.models as sqs_models

    slow = sqs_models.unix_time_millis  # type: ignore[attr-defined]

    def unix_time_millis(dt: datetime | None = None) -> float:
        if dt is None:
            return time.time() * 1000.0
        return float(slow(dt))

    sqs_models.unix_time_millis = unix_time_millis  # type: ignore[attr-defined]


class _QueueCounts(threading.local):
    """The message counts of the queue whose attributes this thread is reading, counted once."""

    queue: Any = None
    counts: tuple[int, int, int] = (0, 0, 0)


def count_sqs_messages_once() -> None:
    """moto's SQS recounts a whole queue, three times and through the clock for each message,
    whenever it reads any attribute of the queue: twice in each FIFO send's validation, once more
    as it adds the message, and three times for each message received (its retention check reads
    `MessageRetentionPeriod` through GetQueueAttributes). So every send and receive costs
    O(messages queued), and a queue's backlog slows its own draining (profiled here: at ~1,000
    queued finished runs, 45% of the moto process's time went to these counts).

    Same answers, counted once: `messages` reads the clock once per call; `attributes` counts the
    three ApproximateNumberOf* in one pass; the retention check reads the queue's retention period
    itself. SQS's own counts are approximate; these are exact as before.
    """
    import moto.sqs.models as sqs_models
    from moto.core.utils import camelcase_to_underscores

    queue_class = sqs_models.Queue
    clock = sqs_models.unix_time_millis  # type: ignore[attr-defined]
    reading = _QueueCounts()

    def messages(self: Any) -> list[Any]:
        now = clock()
        return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]

    def counts(self: Any) -> tuple[int, int, int]:
        """(visible and not delayed, delayed, not visible), as moto's three properties count them."""
        if reading.queue is self:
            return reading.counts
        now = clock()
        available = delayed = not_visible = 0
        for m in self._messages:
            is_visible, is_delayed = now > m.visible_at, now < m.delayed_until
            available += is_visible and not is_delayed
            delayed += is_delayed
            not_visible += not is_visible
        return available, delayed, not_visible

    attributes = queue_class.attributes.fget  # type: ignore[attr-defined]

    def counted_attributes(self: Any) -> dict[str, Any]:
        reading.queue, reading.counts = None, counts(self)
        reading.queue = self
        try:
            result: dict[str, Any] = attributes(self)
        finally:
            reading.queue = None
        return result

    queue_class.messages = property(messages)  # type: ignore[method-assign,assignment]
    queue_class.approximate_number_of_messages = property(lambda self: counts(self)[0])  # type: ignore[method-assign,assignment]
    queue_class.approximate_number_of_messages_delayed = property(lambda self: counts(self)[1])  # type: ignore[method-assign,assignment]
    queue_class.approximate_number_of_messages_not_visible = property(lambda self: counts(self)[2])  # type: ignore[method-assign,assignment]
    queue_class.attributes = property(counted_attributes)  # type: ignore[method-assign,assignment]
    # A pure function of an attribute name, called for every attribute on every read.
    cached = functools.lru_cache(maxsize=256)(camelcase_to_underscores)
    setattr(sqs_models, "camelcase_to_underscores", cached)  # noqa: B010 - moto's module global

    def is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
        retention_s = int(self.get_queue(queue_name).message_retention_period)
        return bool(retention_s + message.sent_timestamp / 1000 > time.time())

    backend = sqs_models.SQSBackend
    backend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period  # type: ignore[method-assign]


def make_sqs_queue_changes_atomic() -> None:
    """SQS never loses a message sent, nor brings back one deleted; moto's threaded server did both.

    moto deletes a message by building a new list of the queue's other messages and assigning it,
    outside the queue's lock: a message a concurrent SendMessage appended meanwhile was lost, and a
    message a concurrent delete had just removed came back - invisible, "in flight", for the
    queue's visibility timeout. Seen at 20,000 rows: 21 finished-run messages never reached the
    recorder and 470 were in flight at the end. Receives also change the queue's in-flight set
    while deletes discard from it. Each change to a queue now holds the queue's own lock (moto's
    `_messages_lock`, which it already takes to append). The lock is reentrant and a long poll's
    wait releases it, so a waiting receive lets sends and deletes through as before.
    """
    import moto.sqs.models as sqs_models

    queue_class, backend = sqs_models.Queue, sqs_models.SQSBackend

    def under_queue_lock(method: Any) -> Any:
        @functools.wraps(method)
        def locked(queue: Any, *args: Any, **kwargs: Any) -> Any:
            with queue._messages_lock:
                return method(queue, *args, **kwargs)

        return locked

    def under_named_queue_lock(method: Any) -> Any:
        @functools.wraps(method)
        def locked(self: Any, queue_name: str, *args: Any, **kwargs: Any) -> Any:
            with self.get_queue(queue_name)._messages_lock:
                return method(self, queue_name, *args, **kwargs)

        return locked

    for name in ("add_message", "delete_message"):
        setattr(queue_class, name, under_queue_lock(getattr(queue_class, name)))
    for name in ("receive_message", "change_message_visibility", "purge_queue"):
        setattr(backend, name, under_named_queue_lock(getattr(backend, name)))


def route_requests_without_listing_moto() -> None:
    """moto's server finds the backend of each request by listing its own package directory on
    disk (`list_of_moto_modules`: ~180 stat calls per request, profiled here); the installed
    package does not change while the server runs, so list it once."""
    import moto.backends as backends

    listed = tuple(backends.list_of_moto_modules())
    setattr(backends, "list_of_moto_modules", lambda: listed)  # noqa: B010 - moto's module function


_strict = threading.Lock()
_strict_installed = False


def refuse_what_aws_refuses() -> None:
    """moto accepts requests AWS refuses; the embedded AWS refuses them with AWS's own error (contract §2).

    Also installed in-process for the unit tests' `mock_aws`; once per process.
    """
    global _strict_installed
    from rowcall_local import strict_dynamodb, strict_s3, strict_sqs

    with _strict:
        if _strict_installed:
            return
        _strict_installed = True
    strict_dynamodb.install()
    strict_sqs.install()
    strict_s3.install()


def meter_dynamodb_capacity() -> None:
    """Bill each DynamoDB request as on-demand DynamoDB would, for `GET /_rowcall/capacity` (capacity_meter).

    moto answers `ReturnConsumedCapacity` with constants (0.5 or 1.0 whatever the item); the figures a
    cost target is held to must come from the item sizes.
    """
    from rowcall_local import capacity_meter

    capacity_meter.install()


def apply_all() -> None:
    refuse_what_aws_refuses()
    make_dynamodb_requests_atomic()
    make_transactions_cost_their_items()
    complete_s3_events()
    speed_up_sqs_clock()
    make_sqs_queue_changes_atomic()  # after refuse_what_aws_refuses: it wraps the deduplicating add
    count_sqs_messages_once()  # after the clock: it reads moto's clock once per count
    route_requests_without_listing_moto()
    meter_dynamodb_capacity()
