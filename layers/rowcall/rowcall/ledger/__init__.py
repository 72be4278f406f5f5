"""The ledger: one DynamoDB table, one module per aggregate over one table helper.

What can happen twice is answered here. Each transition states the state it starts from in its
condition, so a duplicate S3 event, a redelivered chunk or a duplicate webhook finds its work
done and changes nothing; racing writers are ordered by DynamoDB, and exactly one of them wins.
Use cases take the aggregates they need; `Ledger` only builds them over one table.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from rowcall.ledger.batches import BatchLedger
from rowcall.ledger.budget import BudgetLedger
from rowcall.ledger.chunks import ChunkLedger
from rowcall.ledger.grants import Grant, SlotGrants
from rowcall.ledger.notifications import NotificationLedger
from rowcall.ledger.reuse import ReuseLedger, ReuseSource
from rowcall.ledger.row_errors import RowErrorLedger
from rowcall.ledger.rows import NO_RUN, RowLedger, StartedRun
from rowcall.ledger.slots import SlotLedger, release_shard
from rowcall.ledger.table import RetryPolicy, Table
from rowcall.ledger.uploads import UploadIntentLedger
from rowcall.ledger.waiting import WaitingList
from rowcall.models import utcnow

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient


class Ledger:
    def __init__(
        self,
        dynamodb: DynamoDBClient,
        table: str,
        clock: Callable[[], datetime] = utcnow,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.table = Table(dynamodb, table, retry)
        self.chunks = ChunkLedger(self.table, clock)
        self.batches = BatchLedger(self.table, self.chunks, clock)
        self.rows = RowLedger(self.table, clock)
        self.row_errors = RowErrorLedger(self.table)
        self.notifications = NotificationLedger(self.table, clock)
        self.slots = SlotLedger(self.table)
        self.waiting = WaitingList(self.table)
        self.grants = SlotGrants(self.table, self.slots, self.rows)
        self.budget = BudgetLedger(self.table)
        self.upload_intents = UploadIntentLedger(self.table)
        self.reuse = ReuseLedger(self.table)


__all__ = [
    "NO_RUN",
    "BatchLedger",
    "BudgetLedger",
    "ChunkLedger",
    "Grant",
    "Ledger",
    "NotificationLedger",
    "RetryPolicy",
    "ReuseLedger",
    "ReuseSource",
    "RowErrorLedger",
    "RowLedger",
    "SlotGrants",
    "SlotLedger",
    "StartedRun",
    "Table",
    "UploadIntentLedger",
    "WaitingList",
    "release_shard",
]
