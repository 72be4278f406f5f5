"""Budgets as admission: the cost of a run is reserved before its create is sent.

Two counters of reserved micro-USD, each raised only by a conditional `ADD` that keeps it at or
under its limit: one per batch (`max_cost_usd`) and one per UTC day for the whole stack
(`DailyBudgetUsd`). A reservation is given back only when the provider said for certain that no
run was made for it (a refusal) or that the run was made and paid for by an earlier reservation
(409); a create whose answer was lost, a crashed worker, a duplicate delivery keep theirs. So
the runs created never cost more than what was reserved, and a fault can only leave part of a
budget unused, never overspend it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from rowcall.ledger.keys import batch_pk
from rowcall.ledger.table import Table

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import TransactWriteItemTypeDef

BUDGET_SK = "BUDGET"
RESERVE_TRIES = 5


def utc_day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d")


def _batch_budget_key(batch_id: str) -> dict[str, str]:
    return {"pk": batch_pk(batch_id), "sk": BUDGET_SK}


def _daily_key(day: str) -> dict[str, str]:
    return {"pk": f"DAILY#{day}", "sk": BUDGET_SK}


@dataclass(frozen=True)
class Limits:
    """What a batch's next runs may cost: micro-USD per run and the two ceilings (None: none)."""

    run_cost: int
    batch_max: int | None
    daily_max: int | None

    @property
    def budgeted(self) -> bool:
        return self.run_cost > 0 and (self.batch_max is not None or self.daily_max is not None)


@dataclass(frozen=True)
class Reservation:
    runs: int
    day: str
    # Which ceiling stopped it short of what was asked: "over_budget", "daily_budget" or None.
    short_by: str | None = None


class BudgetLedger:
    def __init__(self, table: Table) -> None:
        self._table = table

    def reserved(self, batch_id: str) -> int:
        return int((self._table.get(_batch_budget_key(batch_id)) or {}).get("reserved", 0))

    def reserved_on(self, day: str) -> int:
        return int((self._table.get(_daily_key(day)) or {}).get("reserved", 0))

    def reserve(self, batch_id: str, wanted: int, limits: Limits, now: float) -> Reservation:
        """As many of `wanted` runs as both ceilings still allow (0: none now)."""
        day = utc_day(now)
        if not limits.budgeted or wanted <= 0:
            return Reservation(runs=max(wanted, 0), day=day)
        cost = limits.run_cost
        for _ in range(RESERVE_TRIES):
            runs, short_by = wanted, None
            if limits.batch_max is not None:
                affordable = (limits.batch_max - self.reserved(batch_id)) // cost
                if affordable < runs:
                    runs, short_by = max(affordable, 0), "over_budget"
            if limits.daily_max is not None and runs > 0:
                affordable = (limits.daily_max - self.reserved_on(day)) // cost
                if affordable < runs:
                    runs, short_by = max(affordable, 0), "daily_budget"
            if runs == 0:
                return Reservation(runs=0, day=day, short_by=short_by)
            raises = []
            if limits.batch_max is not None:
                raises.append((_batch_budget_key(batch_id), limits.batch_max))
            if limits.daily_max is not None:
                raises.append((_daily_key(day), limits.daily_max))
            if self._raise(raises, runs * cost):
                return Reservation(runs=runs, day=day, short_by=short_by)
        return Reservation(runs=0, day=day)

    def _raise(self, raises: list[tuple[dict[str, str], int]], amount: int) -> bool:
        """Each counter up by `amount` if it stays within its ceiling; both or neither (a
        transaction when there are two, so a refusal of one leaves the other as it was)."""
        # reserved + amount <= ceiling, written as a condition DynamoDB accepts.
        condition = "attribute_not_exists(#reserved) OR #reserved <= :limit"
        if len(raises) == 1:
            key, ceiling = raises[0]
            values = {":amount": amount, ":limit": ceiling - amount}
            raised = self._table.update(key, "ADD #reserved :amount", condition=condition, values=values)
            return raised is not None
        writes: list[TransactWriteItemTypeDef] = [
            self._table.update_item(
                key,
                "ADD #reserved :amount",
                condition=condition,
                values={":amount": amount, ":limit": ceiling - amount},
            )
            for key, ceiling in raises
        ]
        return self._table.transact(writes)

    def give_back(self, batch_id: str, runs: int, limits: Limits, day: str) -> None:
        """Runs reserved for which the provider made no new run (refused, or 409)."""
        if runs <= 0 or not limits.budgeted:
            return
        amount: dict[str, Any] = {":amount": -runs * limits.run_cost}
        if limits.batch_max is not None:
            self._table.update(_batch_budget_key(batch_id), "ADD #reserved :amount", values=amount)
        if limits.daily_max is not None:
            self._table.update(_daily_key(day), "ADD #reserved :amount", values=amount)
