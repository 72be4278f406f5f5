"""One DynamoDB table, as the ledger's aggregates use it: conditional writes that say whether
their condition held, transactions and writes retried through conflicts and throttling, paged
queries. Every DynamoDB request of the ledger goes through here, so the rules AWS enforces on
requests (no empty or unused expression maps) and the retries it expects are answered once.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from botocore.exceptions import ClientError

from rowcall.dynamo import item, plain

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

_T = TypeVar("_T")
_NAME = re.compile(r"#[A-Za-z_][A-Za-z0-9_]*")
_VALUE = re.compile(r":[A-Za-z_][A-Za-z0-9_]*")
# What DynamoDB answers under load or contention; a request it refused this way did not happen
# (or, for a 500, may have: every write here is conditional or recounted, so a repeat is safe).
RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TransactionConflictException",
        "InternalServerError",
        "ServiceUnavailable",
    }
)
RETRYABLE_REASONS = frozenset({"TransactionConflict", "ThrottlingError", "ProvisionedThroughputExceeded"})


@dataclass(frozen=True)
class RetryPolicy:
    """Full-jitter exponential backoff, bounded: what still fails goes back to the event source."""

    attempts: int = 8
    base_s: float = 0.025
    max_s: float = 1.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_s, self.base_s * 2**attempt))


def conditional_failure(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException"


def _cancellation_codes(exc: ClientError) -> set[str]:
    if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
        return set()
    return {r.get("Code", "None") for r in exc.response.get("CancellationReasons", [])} - {"None"}


def transaction_condition_failed(exc: ClientError) -> bool:
    return "ConditionalCheckFailed" in _cancellation_codes(exc)


def _retryable(exc: ClientError) -> bool:
    if exc.response.get("Error", {}).get("Code") in RETRYABLE_CODES:
        return True
    reasons = _cancellation_codes(exc)
    return bool(reasons) and reasons <= RETRYABLE_REASONS


def expression_names(*expressions: str | None) -> dict[str, str]:
    """`#name` placeholders of the expressions, each standing for itself without the `#`."""
    found = set()
    for expression in expressions:
        found.update(_NAME.findall(expression or ""))
    return {n: n[1:] for n in sorted(found)}


def expression_arguments(*expressions: str | None, values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """ExpressionAttributeNames/Values for the expressions, each present only when used and
    non-empty: DynamoDB refuses an empty or unused map."""
    arguments: dict[str, Any] = {}
    names = expression_names(*expressions)
    if names:
        arguments["ExpressionAttributeNames"] = names
    used = set()
    for expression in expressions:
        used.update(_VALUE.findall(expression or ""))
    if values:
        unused = set(values) - used
        if unused:
            raise ValueError(f"values unused in the expressions: {sorted(unused)}")
        arguments["ExpressionAttributeValues"] = item(values)
    return arguments


class Table:
    def __init__(self, dynamodb: DynamoDBClient, name: str, retry: RetryPolicy | None = None) -> None:
        self.client = dynamodb
        self.name = name
        self._retry = retry or RetryPolicy()

    def retried(self, call: Callable[[], _T]) -> _T:
        for attempt in range(self._retry.attempts):
            try:
                return call()
            except ClientError as exc:
                if not _retryable(exc) or attempt + 1 == self._retry.attempts:
                    raise
            time.sleep(self._retry.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def get(self, key: Mapping[str, Any]) -> dict[str, Any] | None:
        got = self.retried(
            lambda: self.client.get_item(TableName=self.name, Key=item(key), ConsistentRead=True)
        )
        stored = got.get("Item")
        return plain(stored) if stored else None

    def put(self, values: Mapping[str, Any], *, condition: str | None = None) -> bool:
        """False when the condition did not hold."""
        extra: dict[str, Any] = {"ConditionExpression": condition} if condition else {}
        extra |= expression_arguments(condition)
        try:
            self.retried(lambda: self.client.put_item(TableName=self.name, Item=item(values), **extra))
        except ClientError as exc:
            if conditional_failure(exc):
                return False
            raise
        return True

    def update(
        self,
        key: Mapping[str, Any],
        update: str,
        *,
        condition: str | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """The item as the write left it, or None when the condition did not hold."""
        extra: dict[str, Any] = {"ConditionExpression": condition} if condition else {}
        extra |= expression_arguments(update, condition, values=values)
        try:
            got = self.retried(
                lambda: self.client.update_item(
                    TableName=self.name,
                    Key=item(key),
                    UpdateExpression=update,
                    ReturnValues="ALL_NEW",
                    **extra,
                )
            )
        except ClientError as exc:
            if conditional_failure(exc):
                return None
            raise
        return plain(got.get("Attributes", {}))

    def delete(self, key: Mapping[str, Any], *, condition: str | None = None) -> dict[str, Any] | None:
        """The item as it was before this request deleted it, or None when the condition did not
        hold (with `attribute_exists(pk)`: when another request deleted it first)."""
        extra: dict[str, Any] = {"ConditionExpression": condition} if condition else {}
        extra |= expression_arguments(condition)
        try:
            got = self.retried(
                lambda: self.client.delete_item(
                    TableName=self.name, Key=item(key), ReturnValues="ALL_OLD", **extra
                )
            )
        except ClientError as exc:
            if conditional_failure(exc):
                return None
            raise
        stored = got.get("Attributes")
        return plain(stored) if stored else None

    def update_item(
        self,
        key: Mapping[str, Any],
        update: str,
        *,
        condition: str | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> TransactWriteItemTypeDef:
        """The same update as one item of a transaction."""
        spec: dict[str, Any] = {"TableName": self.name, "Key": item(key), "UpdateExpression": update}
        if condition:
            spec["ConditionExpression"] = condition
        spec |= expression_arguments(update, condition, values=values)
        return {"Update": spec}  # type: ignore[typeddict-item]

    def transact(self, items: Sequence[TransactWriteItemTypeDef]) -> bool:
        """False when a condition did not hold; conflicts and throttling are waited out."""
        try:
            self.retried(lambda: self.client.transact_write_items(TransactItems=list(items)))
        except ClientError as exc:
            if transaction_condition_failed(exc):
                return False
            raise
        return True

    def put_many(self, items: Sequence[Mapping[str, Any]]) -> None:
        """BatchWriteItem in groups of 25 (its limit), unprocessed items sent again."""
        for start in range(0, len(items), 25):
            pending: Any = {self.name: [{"PutRequest": {"Item": item(i)}} for i in items[start : start + 25]]}
            for attempt in range(self._retry.attempts):
                got = self.retried(partial(self.client.batch_write_item, RequestItems=pending))
                pending = got.get("UnprocessedItems") or None
                if not pending:
                    break
                time.sleep(self._retry.delay(attempt))
            if pending:
                raise RuntimeError("DynamoDB left items unprocessed after every retry")

    def get_many(
        self, keys: Sequence[Mapping[str, Any]], *, projection: str | None = None, consistent: bool = False
    ) -> list[dict[str, Any]]:
        """BatchGetItem in groups of 100 keys (its limit), eventually consistent unless
        `consistent`, unprocessed keys asked again; the items found, in no particular order. Keys
        must be distinct (DynamoDB refuses a request naming one twice)."""
        found: list[dict[str, Any]] = []
        for start in range(0, len(keys), 100):
            request: dict[str, Any] = {"Keys": [item(k) for k in keys[start : start + 100]]}
            if consistent:
                request["ConsistentRead"] = True
            if projection:
                request["ProjectionExpression"] = projection
                request |= expression_arguments(projection)
            pending: Any = {self.name: request}
            for attempt in range(self._retry.attempts):
                got = self.retried(partial(self.client.batch_get_item, RequestItems=pending))
                found.extend(plain(i) for i in got.get("Responses", {}).get(self.name, []))
                pending = got.get("UnprocessedKeys") or None
                if not pending:
                    break
                time.sleep(self._retry.delay(attempt))
            if pending:
                raise RuntimeError("DynamoDB left keys unprocessed after every retry")
        return found

    def query(
        self,
        key_condition: str,
        values: Mapping[str, Any],
        *,
        index: str | None = None,
        forward: bool = True,
        limit: int | None = None,
        start: Mapping[str, Any] | None = None,
        projection: str | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        """One page: its items (only the `projection`'s attributes when given) and the key to go
        on from (None at the end)."""
        kwargs: dict[str, Any] = {"KeyConditionExpression": key_condition, "ScanIndexForward": forward}
        kwargs |= expression_arguments(key_condition, projection, values=values)
        if projection:
            kwargs["ProjectionExpression"] = projection
        if index:
            kwargs["IndexName"] = index
        else:
            kwargs["ConsistentRead"] = True
        if limit:
            kwargs["Limit"] = limit
        if start:
            kwargs["ExclusiveStartKey"] = start
        got = self.retried(lambda: self.client.query(TableName=self.name, **kwargs))
        return [plain(i) for i in got.get("Items", [])], got.get("LastEvaluatedKey")

    def query_all(
        self,
        key_condition: str,
        values: Mapping[str, Any],
        *,
        index: str | None = None,
        projection: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        start: dict[str, Any] | None = None
        while True:
            items, start = self.query(key_condition, values, index=index, start=start, projection=projection)
            yield from items
            if start is None:
                return

    def prefixed(self, pk: str, sk_prefix: str, *, projection: str | None = None) -> Iterator[dict[str, Any]]:
        """Every item of a partition whose sort key starts with the prefix, in key order."""
        return self.query_all(
            "pk = :pk AND begins_with(sk, :prefix)", {":pk": pk, ":prefix": sk_prefix}, projection=projection
        )
