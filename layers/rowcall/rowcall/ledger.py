"""The batch and row ledger: every state transition is one named conditional write.

What can happen twice is answered here. Each transition states the state it starts from in its
condition, so a duplicate S3 event, a redelivered chunk or a duplicate callback finds its work done
and changes nothing; racing writers are ordered by DynamoDB, and exactly one of them wins.
"""

from __future__ import annotations

import base64
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from rowcall.dynamo import attr, item, plain
from rowcall.identity import row_id_for
from rowcall.models import (
    OPEN_BATCH_STATUSES,
    BatchState,
    BatchStatus,
    ChunkCounter,
    ChunkPlan,
    DoneMessage,
    RowError,
    RowOutcome,
    RowState,
    RowStatus,
    iso,
    utcnow,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

LIST_PARTITION = "BATCHES"
TRANSACT_ATTEMPTS = 5
# A finished batch whose on-done is still unclaimed this long after is presumed to have lost its
# sender; the next event touching the batch sends it again (the claim drops duplicates).
REOFFER_AFTER_S = 60
_OPEN = [s.value for s in OPEN_BATCH_STATUSES]


def batch_pk(batch_id: str) -> str:
    return f"BATCH#{batch_id}"


def chunk_sk(chunk: int) -> str:
    return f"CHUNK#{chunk:06d}"


def rows_pk(batch_id: str, chunk: int) -> str:
    return f"BATCH#{batch_id}#CHUNK#{chunk:06d}"


def row_sk(record: int) -> str:
    return f"ROW#{record:09d}"


def errors_pk(batch_id: str) -> str:
    return f"BATCH#{batch_id}#ERRORS"


def _conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def _transaction_conflicted(exc: ClientError) -> bool:
    if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
        return False
    reasons = exc.response.get("CancellationReasons", [])
    return any(r.get("Code") == "TransactionConflict" for r in reasons) and not any(
        r.get("Code") == "ConditionalCheckFailed" for r in reasons
    )


def _transaction_condition_failed(exc: ClientError) -> bool:
    if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
        return False
    reasons = exc.response.get("CancellationReasons", [])
    return any(r.get("Code") == "ConditionalCheckFailed" for r in reasons)


def encode_cursor(key: dict[str, Any] | None) -> str | None:
    if not key:
        return None
    return base64.urlsafe_b64encode(json.dumps(plain(key), separators=(",", ":")).encode()).decode()


def decode_cursor(cursor: str) -> dict[str, Any]:
    """Raises ValueError for anything that is not a cursor this ledger made."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except Exception as exc:
        raise ValueError("cursor is not valid") from exc
    if (
        not isinstance(raw, dict)
        or set(raw) != {"pk", "sk", "gsi1pk", "gsi1sk"}
        or raw["gsi1pk"] != LIST_PARTITION
        or not all(isinstance(v, str) for v in raw.values())
    ):
        raise ValueError("cursor is not valid")
    return {k: attr(v) for k, v in raw.items()}


class Ledger:
    def __init__(self, dynamodb: DynamoDBClient, table: str, clock: Callable[[], datetime] = utcnow) -> None:
        self._db = dynamodb
        self._table = table
        self._clock = clock

    # -- batch lifecycle ---------------------------------------------------------------------
    def open_batch(self, batch: BatchState) -> tuple[BatchState, bool]:
        """Record a new batch; a batch that exists already is returned as it is (not created)."""
        values = batch.model_dump(mode="json")
        values |= {
            "pk": batch_pk(batch.batch_id),
            "sk": "META",
            "gsi1pk": LIST_PARTITION,
            "gsi1sk": f"{batch.created_at}#{batch.batch_id}",
        }
        try:
            self._db.put_item(
                TableName=self._table,
                Item=item(values),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if not _conditional_failure(exc):
                raise
            existing = self.get_batch(batch.batch_id)
            if existing is None:  # pragma: no cover - a put that lost to a delete
                raise
            return existing, False
        return batch, True

    def get_batch(self, batch_id: str) -> BatchState | None:
        got = self._db.get_item(
            TableName=self._table,
            Key=item({"pk": batch_pk(batch_id), "sk": "META"}),
            ConsistentRead=True,
        )
        stored = got.get("Item")
        return BatchState.model_validate(plain(stored)) if stored else None

    def record_plan(
        self,
        batch_id: str,
        *,
        header: list[str],
        chunks: Sequence[ChunkPlan],
        rows_skipped: int,
    ) -> bool:
        """validating -> ingesting: the count is final, the chunks and their counters exist.

        Counters and plan are written before the transition; a pass cut off before it is redone
        whole, and rewriting them then is harmless because no chunk has been sent yet.
        """
        for c in chunks:
            self._create_counter(batch_id, c)
        self._put_plan(batch_id, chunks)
        now = iso(self._clock())
        moved = self._transition(
            batch_id,
            "SET #status = :ingesting, header = :header, total_count = :total, chunk_count = :chunks, "
            "rows_skipped = :skipped, updated_at = :now",
            "#status = :validating",
            {
                ":ingesting": BatchStatus.INGESTING.value,
                ":validating": BatchStatus.VALIDATING.value,
                ":header": header,
                ":total": sum(c.rows for c in chunks),
                ":chunks": len(chunks),
                ":skipped": rows_skipped,
                ":now": now,
            },
        )
        return moved is not None

    def _create_counter(self, batch_id: str, chunk: ChunkPlan) -> None:
        """Only ever created: a second delivery of the S3 event, still planning while rows of
        the first are finishing, must not zero counts that callbacks have already added."""
        try:
            self._db.put_item(
                TableName=self._table,
                Item=item(
                    {
                        "pk": batch_pk(batch_id),
                        "sk": chunk_sk(chunk.index),
                        "index": chunk.index,
                        "rows": chunk.rows,
                        "completed": 0,
                        "failed": 0,
                    }
                ),
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if not _conditional_failure(exc):
                raise

    def chunk_plan(self, batch_id: str) -> list[ChunkPlan]:
        plan: list[ChunkPlan] = []
        for stored in self._query(batch_pk(batch_id), "PLAN#"):
            plan.extend(ChunkPlan.model_validate(c) for c in json.loads(stored["chunks"]))
        return sorted(plan, key=lambda c: c.index)

    def record_enqueued(self, batch_id: str, chunks_enqueued: int) -> None:
        self._transition(
            batch_id,
            "SET chunks_enqueued = :n, updated_at = :now",
            "chunks_enqueued < :n",
            {":n": chunks_enqueued, ":now": iso(self._clock())},
        )

    def mark_running(self, batch_id: str) -> bool:
        """ingesting -> running, once every chunk is on the queue."""
        now = iso(self._clock())
        moved = self._transition(
            batch_id,
            "SET #status = :running, running_at = :now, updated_at = :now",
            "#status = :ingesting",
            {":running": BatchStatus.RUNNING.value, ":ingesting": BatchStatus.INGESTING.value, ":now": now},
        )
        return moved is not None

    def fail_batch(self, batch_id: str, reason: str, message: str) -> DoneMessage | None:
        """A batch that cannot run ends `failed` once; the caller sends the returned on-done."""
        now = iso(self._clock())
        done = self._transition(
            batch_id,
            "SET #status = :failed, reason = :reason, reason_message = :message, finished_at = :now, "
            "updated_at = :now, notification = :notification ADD finish_seq :one",
            "#status IN (:validating, :ingesting, :running, :paused)",
            {
                ":failed": BatchStatus.FAILED.value,
                ":reason": reason,
                ":message": message,
                ":now": now,
                ":notification": {"status": "pending", "attempts": 0},
                ":one": 1,
                ":validating": BatchStatus.VALIDATING.value,
                ":ingesting": BatchStatus.INGESTING.value,
                ":running": BatchStatus.RUNNING.value,
                ":paused": BatchStatus.PAUSED.value,
            },
        )
        return self._on_done_of(done) if done else None

    def record_row_errors(self, batch_id: str, errors: Sequence[RowError]) -> None:
        """Row errors are keyed by line, so writing one again on a redone pass is harmless."""
        self._put_many(
            [{"pk": errors_pk(batch_id), "sk": f"LINE#{e.line:012d}", **e.model_dump()} for e in errors]
        )

    # -- rows --------------------------------------------------------------------------------
    def known_rows(self, batch_id: str, chunk: int) -> dict[int, RowState]:
        return {row.record: row for row in self.rows_of_chunk(batch_id, chunk)}

    def row_started(
        self, batch_id: str, chunk: int, record: int, *, run_id: str | None, attempt: int, line: int, key: str
    ) -> bool:
        """pending -> running. A callback may have finished the row already: then only the
        row's description is filled in and its terminal state stays."""
        now = iso(self._clock())
        names = {"#status": "status", "#key": "key", "#line": "line", "#record": "record"}
        values = {
            ":line": line,
            ":key": key,
            ":attempt": attempt,
            ":now": now,
            ":chunk": chunk,
            ":record": record,
            ":batch": batch_id,
        }
        key_attrs = item({"pk": rows_pk(batch_id, chunk), "sk": row_sk(record)})
        run_set = ", run_id = :run" if run_id else ""
        try:
            self._db.update_item(
                TableName=self._table,
                Key=key_attrs,
                UpdateExpression="SET #status = :running, #line = :line, #key = :key, attempt = :attempt, "
                "updated_at = :now, chunk = :chunk, #record = :record, batch_id = :batch" + run_set,
                ConditionExpression="attribute_not_exists(#status) OR #status = :pending",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=item(
                    values
                    | {":running": RowStatus.RUNNING.value, ":pending": RowStatus.PENDING.value}
                    | ({":run": run_id} if run_id else {})
                ),
            )
            return True
        except ClientError as exc:
            if not _conditional_failure(exc):
                raise
        self._db.update_item(
            TableName=self._table,
            Key=key_attrs,
            UpdateExpression="SET #line = :line, #key = :key, attempt = if_not_exists(attempt, :attempt)",
            ExpressionAttributeNames={"#key": "key", "#line": "line"},
            ExpressionAttributeValues=item({":line": line, ":key": key, ":attempt": attempt}),
        )
        return False

    def row_finished(
        self,
        batch_id: str,
        chunk: int,
        record: int,
        outcome: RowOutcome,
        *,
        attempt: int,
        line: int | None = None,
        key: str | None = None,
    ) -> bool:
        """pending|running -> completed|failed, counted in its chunk in the same transaction.

        False when the row was finished already (a duplicate or late callback) or the outcome is
        for an attempt or a run this row is not waiting for: nothing changes then.
        """
        now = iso(self._clock())
        counter = "completed" if outcome.status is RowStatus.COMPLETED else "failed"
        row_values: dict[str, Any] = {
            ":status": outcome.status.value,
            ":outputs": outcome.outputs,
            ":now": now,
            ":pending": RowStatus.PENDING.value,
            ":running": RowStatus.RUNNING.value,
            ":chunk": chunk,
            ":record": record,
            ":batch": batch_id,
            ":attempt": attempt,
        }
        sets = [
            "#status = :status",
            "attempt = :attempt",
            "outputs = :outputs",
            "updated_at = :now",
            "chunk = :chunk",
            "#record = :record",
            "batch_id = :batch",
        ]
        described = {
            "error_code": outcome.error_code,
            "error_message": outcome.error_message,
            "line": line,
            "key": key,
        }
        names = {"#status": "status", "#record": "record"}
        for name, value in described.items():
            if value is not None:
                names[f"#{name}"] = name
                sets.append(f"#{name} = :{name}")
                row_values[f":{name}"] = value
        condition = (
            "(attribute_not_exists(#status) OR #status IN (:pending, :running))"
            " AND (attribute_not_exists(attempt) OR attempt = :attempt)"
        )
        if outcome.run_id:
            sets.append("run_id = :run")
            row_values[":run"] = outcome.run_id
            condition += " AND (attribute_not_exists(run_id) OR run_id = :run)"
        transaction: list[TransactWriteItemTypeDef] = [
            {
                "Update": {
                    "TableName": self._table,
                    "Key": item({"pk": rows_pk(batch_id, chunk), "sk": row_sk(record)}),
                    "UpdateExpression": "SET " + ", ".join(sets),
                    "ConditionExpression": condition,
                    "ExpressionAttributeNames": names,
                    "ExpressionAttributeValues": item(row_values),
                }
            },
            {
                "Update": {
                    "TableName": self._table,
                    "Key": item({"pk": batch_pk(batch_id), "sk": chunk_sk(chunk)}),
                    "UpdateExpression": f"ADD {counter} :one",
                    "ConditionExpression": "attribute_exists(#rows)",
                    "ExpressionAttributeNames": {"#rows": "rows"},
                    "ExpressionAttributeValues": item({":one": 1}),
                }
            },
        ]
        try:
            self._transact(transaction)
        except ClientError as exc:
            if _transaction_condition_failed(exc):
                return False
            raise
        return True

    def claim_chunk(self, batch_id: str, chunk: int, *, holder: str, until_epoch: float) -> bool:
        """One worker at a time per chunk: a copy of the message delivered at the same moment
        would otherwise ask the provider again for every row the first is still starting."""
        try:
            self._db.update_item(
                TableName=self._table,
                Key=item({"pk": batch_pk(batch_id), "sk": chunk_sk(chunk)}),
                UpdateExpression="SET worker = :holder, worker_until = :until",
                ConditionExpression="attribute_exists(#rows) AND "
                "(attribute_not_exists(worker_until) OR worker_until < :now OR worker = :holder)",
                ExpressionAttributeNames={"#rows": "rows"},
                ExpressionAttributeValues=item(
                    {
                        ":holder": holder,
                        ":until": math.ceil(until_epoch),
                        ":now": int(self._clock().timestamp()),
                    }
                ),
            )
        except ClientError as exc:
            if _conditional_failure(exc):
                return False
            raise
        return True

    def release_chunk(self, batch_id: str, chunk: int, *, holder: str) -> None:
        try:
            self._db.update_item(
                TableName=self._table,
                Key=item({"pk": batch_pk(batch_id), "sk": chunk_sk(chunk)}),
                UpdateExpression="REMOVE worker, worker_until",
                ConditionExpression="worker = :holder",
                ExpressionAttributeValues=item({":holder": holder}),
            )
        except ClientError as exc:
            if not _conditional_failure(exc):
                raise

    # -- settling and finishing ----------------------------------------------------------------
    def settle_chunk(self, batch_id: str, counter: ChunkCounter) -> bool:
        """Fold a chunk whose rows have all finished into the batch's counts, once.

        The condition repeats the counts that were read, so they are the counts folded in.
        """
        if counter.settled or counter.finished < counter.rows:
            return False
        chunk = counter.index
        try:
            self._transact(
                [
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": item({"pk": batch_pk(batch_id), "sk": chunk_sk(chunk)}),
                            "UpdateExpression": "SET settled = :true",
                            "ConditionExpression": (
                                "attribute_not_exists(settled) AND completed = :c AND failed = :f"
                            ),
                            "ExpressionAttributeValues": item(
                                {":true": True, ":c": counter.completed, ":f": counter.failed}
                            ),
                        }
                    },
                    {
                        "Update": {
                            "TableName": self._table,
                            "Key": item({"pk": batch_pk(batch_id), "sk": "META"}),
                            "UpdateExpression": (
                                "ADD chunks_settled :one, completed_count :c, failed_count :f"
                            ),
                            "ExpressionAttributeValues": item(
                                {":one": 1, ":c": counter.completed, ":f": counter.failed}
                            ),
                        }
                    },
                ]
            )
        except ClientError as exc:
            if _transaction_condition_failed(exc):
                return False
            raise
        return True

    def finish_if_done(self, batch_id: str) -> DoneMessage | None:
        """running -> completed|partial when every chunk is settled; exactly one caller wins.

        Also returns the on-done of a batch that finished a while ago but whose notification was
        never picked up, so a caller that died before sending it is covered by a later event.
        """
        batch = self.get_batch(batch_id)
        if batch is None:
            return None
        if batch.status.is_terminal:
            return self._on_done_of(batch) if self._on_done_stranded(batch) else None
        if batch.status not in OPEN_BATCH_STATUSES or batch.chunk_count is None:
            return None
        if batch.chunks_settled < batch.chunk_count:
            return None
        status = BatchStatus.PARTIAL if batch.failed_count else BatchStatus.COMPLETED
        now = iso(self._clock())
        finished = self._transition(
            batch_id,
            "SET #status = :status, finished_at = :now, updated_at = :now, notification = :notification "
            "ADD finish_seq :one",
            "#status IN (:ingesting, :running) AND chunks_settled = :chunks AND chunk_count = :chunks",
            {
                ":status": status.value,
                ":now": now,
                ":notification": {"status": "pending", "attempts": 0},
                ":one": 1,
                ":ingesting": BatchStatus.INGESTING.value,
                ":running": BatchStatus.RUNNING.value,
                ":chunks": batch.chunk_count,
            },
        )
        return self._on_done_of(finished) if finished else None

    # -- on-done delivery ----------------------------------------------------------------------
    def claim_notification(
        self, message: DoneMessage, *, lease_seconds: int, now_epoch: float
    ) -> BatchState | None:
        """Only one delivery of a finish runs at a time; an expired lease can be taken over."""
        try:
            got = self._db.update_item(
                TableName=self._table,
                Key=item({"pk": batch_pk(message.batch_id), "sk": "META"}),
                UpdateExpression="SET notification.#status = :sending, notification.lease_until = :until",
                ConditionExpression="finish_seq = :seq AND notification.attempts = :attempt AND "
                "(notification.#status = :pending OR "
                "(notification.#status IN (:sending, :retrying) AND notification.lease_until <= :now))",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=item(
                    {
                        ":sending": "sending",
                        ":pending": "pending",
                        ":retrying": "retrying",
                        ":until": math.ceil(now_epoch) + lease_seconds,
                        ":now": math.ceil(now_epoch),
                        ":seq": message.finish_seq,
                        ":attempt": message.attempt,
                    }
                ),
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _conditional_failure(exc):
                return None
            raise
        return BatchState.model_validate(plain(got["Attributes"]))

    def record_notification_step(self, batch_id: str, finish_seq: int, step: str) -> None:
        """Marks a once-per-finish step (results written, SNS published) as done."""
        self._transition(
            batch_id,
            f"SET notification.{step} = :true",
            "finish_seq = :seq",
            {":true": True, ":seq": finish_seq},
        )

    def record_results(self, batch_id: str, finish_seq: int, csv_key: str, errors_key: str) -> None:
        self._transition(
            batch_id,
            "SET results = :results, notification.results_written = :true",
            "finish_seq = :seq",
            {":results": {"csv_key": csv_key, "errors_key": errors_key}, ":true": True, ":seq": finish_seq},
        )

    def settle_notification(
        self,
        batch_id: str,
        finish_seq: int,
        *,
        status: str,
        attempts: int,
        retry_at_epoch: float | None = None,
    ) -> None:
        """Delivered, failed for good, or waiting for its next attempt (lease ends at that time)."""
        now = iso(self._clock())
        values: dict[str, Any] = {":status": status, ":attempts": attempts, ":seq": finish_seq, ":now": now}
        sets = "notification.#status = :status, notification.attempts = :attempts, updated_at = :now"
        if status == "delivered":
            sets += ", notification.delivered_at = :now"
        if retry_at_epoch is not None:
            sets += ", notification.lease_until = :until"
            values[":until"] = math.ceil(retry_at_epoch)
        self._db.update_item(
            TableName=self._table,
            Key=item({"pk": batch_pk(batch_id), "sk": "META"}),
            UpdateExpression="SET " + sets,
            ConditionExpression="finish_seq = :seq",
            ExpressionAttributeNames={"#status": "status"},
            ExpressionAttributeValues=item(values),
        )

    # -- reads -------------------------------------------------------------------------------
    def chunk_counter(self, batch_id: str, chunk: int) -> ChunkCounter | None:
        got = self._db.get_item(
            TableName=self._table,
            Key=item({"pk": batch_pk(batch_id), "sk": chunk_sk(chunk)}),
            ConsistentRead=True,
        )
        stored = got.get("Item")
        return _counter(plain(stored)) if stored else None

    def chunk_counters(self, batch_id: str) -> list[ChunkCounter]:
        return [_counter(c) for c in self._query(batch_pk(batch_id), "CHUNK#")]

    def rows_of_chunk(self, batch_id: str, chunk: int) -> Iterator[RowState]:
        for stored in self._query(rows_pk(batch_id, chunk), "ROW#"):
            yield RowState.model_validate(stored)

    def row_errors(self, batch_id: str) -> Iterator[RowError]:
        for stored in self._query(errors_pk(batch_id), "LINE#"):
            yield RowError.model_validate(stored)

    def list_batches(self, limit: int, cursor: str | None) -> tuple[list[BatchState], str | None]:
        kwargs: dict[str, Any] = {}
        if cursor:
            kwargs["ExclusiveStartKey"] = decode_cursor(cursor)
        got = self._db.query(
            TableName=self._table,
            IndexName="gsi1",
            KeyConditionExpression="gsi1pk = :pk",
            ExpressionAttributeValues=item({":pk": LIST_PARTITION}),
            ScanIndexForward=False,
            Limit=limit,
            **kwargs,
        )
        batches = [BatchState.model_validate(plain(i)) for i in got.get("Items", [])]
        return batches, encode_cursor(got.get("LastEvaluatedKey"))

    # -- plumbing ----------------------------------------------------------------------------
    def _on_done_stranded(self, batch: BatchState) -> bool:
        if batch.notification.status != "pending" or batch.finished_at is None:
            return False
        finished = datetime.fromisoformat(batch.finished_at.replace("Z", "+00:00"))
        return self._clock() - finished > timedelta(seconds=REOFFER_AFTER_S)

    @staticmethod
    def _on_done_of(batch: BatchState) -> DoneMessage:
        return DoneMessage(batch_id=batch.batch_id, finish_seq=batch.finish_seq)

    def _transition(
        self, batch_id: str, update: str, condition: str, values: dict[str, Any]
    ) -> BatchState | None:
        """The batch as the write left it, or None when its condition did not hold."""
        # DynamoDB refuses an empty or unused ExpressionAttributeNames map.
        names: dict[str, Any] = (
            {"ExpressionAttributeNames": {"#status": "status"}} if "#status" in update + condition else {}
        )
        try:
            got = self._db.update_item(
                TableName=self._table,
                Key=item({"pk": batch_pk(batch_id), "sk": "META"}),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeValues=item(values),
                ReturnValues="ALL_NEW",
                **names,
            )
        except ClientError as exc:
            if _conditional_failure(exc):
                return None
            raise
        return BatchState.model_validate(plain(got["Attributes"]))

    def _transact(self, items: Sequence[TransactWriteItemTypeDef]) -> None:
        """DynamoDB cancels a transaction that races another on one item (TransactionConflict)
        and botocore does not retry that; the counters and the batch item are such items."""
        for attempt in range(TRANSACT_ATTEMPTS):
            try:
                self._db.transact_write_items(TransactItems=list(items))
                return
            except ClientError as exc:
                if not _transaction_conflicted(exc) or attempt + 1 == TRANSACT_ATTEMPTS:
                    raise
                time.sleep(random.uniform(0, 0.05 * 2**attempt))

    def _put_plan(self, batch_id: str, chunks: Sequence[ChunkPlan]) -> None:
        # The plan is kept apart from the batch item so the batch item stays small and cheap to
        # update; pages of 2,000 chunks keep each item far below DynamoDB's 400 KB.
        page = 2000
        self._put_many(
            [
                {
                    "pk": batch_pk(batch_id),
                    "sk": f"PLAN#{n:06d}",
                    "chunks": json.dumps([c.model_dump() for c in chunks[i : i + page]]),
                }
                for n, i in enumerate(range(0, len(chunks), page))
            ]
        )

    def _put_many(self, items: Sequence[dict[str, Any]]) -> None:
        for start in range(0, len(items), 25):
            pending: Any = {
                self._table: [{"PutRequest": {"Item": item(i)}} for i in items[start : start + 25]]
            }
            while pending:
                got = self._db.batch_write_item(RequestItems=pending)
                pending = got.get("UnprocessedItems") or None

    def _query(self, pk: str, sk_prefix: str) -> Iterator[dict[str, Any]]:
        kwargs: dict[str, Any] = {}
        while True:
            got = self._db.query(
                TableName=self._table,
                KeyConditionExpression="pk = :pk AND begins_with(sk, :prefix)",
                ExpressionAttributeValues=item({":pk": pk, ":prefix": sk_prefix}),
                ConsistentRead=True,
                **kwargs,
            )
            for stored in got.get("Items", []):
                yield plain(stored)
            if "LastEvaluatedKey" not in got:
                return
            kwargs["ExclusiveStartKey"] = got["LastEvaluatedKey"]


def _counter(stored: dict[str, Any]) -> ChunkCounter:
    return ChunkCounter(
        index=stored["index"],
        rows=stored["rows"],
        completed=stored.get("completed", 0),
        failed=stored.get("failed", 0),
        settled=stored.get("settled", False),
    )


def row_id_of(row: RowState) -> str:
    return row_id_for(row.chunk, row.record)
