"""Slot grants: the slots a worker took, remembered until it says what became of them.

A worker takes slots before its creates and, after them, settles the grant: the slots of the
runs it started stay held (their outcomes give them back), the rest go back. A worker killed in
between never settles; without a record of the grant its slots would stay taken by nobody.

Each grant is an entry of the `ACQUIRED` slot item itself (`grants.{id}`: slots taken, when,
which delivery of which chunk), written by the same conditional update that takes the slots, and
removed by the update that settles it: taking and remembering, settling and forgetting are each
one single-item write, so neither can happen without the other, and no transaction is needed.
Settling gives the unused slots back by lowering `acquired` (held = acquired - released: what
matters is the difference; the cap's condition is on `acquired` as it is when written).

The safety net reads the one item (no scan) and, for a grant older than `GRANT_LEASE_S`, gives
back the slots that certainly started no run: all of them when the delivery wrote no intent page
after taking them (killed before its creates), else those of rows it did not intend or whose
start says no new run was made. Rows intended with nothing said of them since may have runs
whose outcomes will give their slots back: they stay held. The sweep marks the grant `swept`
with what it gave back, conditionally on it being neither settled nor swept, so it is given back
once. A worker that was only late finds the mark when it settles and corrects the difference
(it alone knows what it started), then removes the grant; a swept grant whose worker never comes
back is removed after `SWEPT_KEPT_S`, longer than any invocation lives.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

from rowcall.ledger.rows import RowLedger
from rowcall.ledger.slots import ACQUIRE_TRIES, SlotLedger, acquired_key
from rowcall.ledger.table import Table

# A grant is settled within a group of creates (seconds); one still open after this is looked
# into. Too short costs only a correction write by a worker that was merely slow.
GRANT_LEASE_S = 30.0
# Longer than a worker invocation can live (Lambda's 900 s): no worker settles a grant after it.
SWEPT_KEPT_S = 1800.0


@dataclass(frozen=True)
class Grant:
    grant_id: str
    slots: int
    taken_at: float
    batch_id: str
    chunk: int
    holder: str


@dataclass(frozen=True)
class SweptGrants:
    given_back: int = 0
    kept_for_runs: int = 0
    grants: int = 0


def _entry(grant: Grant) -> dict[str, Any]:
    return {
        "n": grant.slots,
        "at": grant.taken_at,
        "batch": grant.batch_id,
        "chunk": grant.chunk,
        "holder": grant.holder,
    }


def _grant(grant_id: str, entry: dict[str, Any]) -> Grant:
    return Grant(
        grant_id=grant_id,
        slots=int(entry["n"]),
        taken_at=float(entry["at"]),
        batch_id=str(entry["batch"]),
        chunk=int(entry["chunk"]),
        holder=str(entry["holder"]),
    )


class SlotGrants:
    def __init__(self, table: Table, slots: SlotLedger, rows: RowLedger) -> None:
        self._table = table
        self._slots = slots
        self._rows = rows

    def take(
        self, wanted: int, cap: int, *, batch_id: str, chunk: int, holder: str, now: float
    ) -> Grant | None:
        """Up to `wanted` slots as one grant, as many as the cap leaves free now (None: wait)."""
        for _ in range(ACQUIRE_TRIES):
            item, released = self._slots.read()
            if "grants" not in item:
                # A map must exist before an update can set one of its entries (DynamoDB refuses
                # a document path under a missing attribute); written once per table.
                self._table.update(
                    acquired_key(), "SET #grants = if_not_exists(#grants, :none)", values={":none": {}}
                )
            count = min(wanted, cap - (int(item.get("n", 0)) - released))
            if count <= 0:
                return None
            grant = Grant(
                f"g{uuid.uuid4().hex}", count, math.floor(now * 1000) / 1000, batch_id, chunk, holder
            )
            # acquired + count <= cap + released, written as DynamoDB conditions allow.
            taken = self._table.update(
                acquired_key(),
                f"ADD #n :count SET #grants.#{grant.grant_id} = :grant",
                condition="attribute_not_exists(#n) OR #n <= :limit",
                values={":count": count, ":limit": cap + released - count, ":grant": _entry(grant)},
            )
            if taken is not None:
                return grant
        return None

    def settle(self, grant: Grant, started: int) -> int:
        """The grant's runs started keep their slots; the rest go back, once. How many went back
        (what the caller may wake waiters for)."""
        unused = max(grant.slots - started, 0)
        path = f"#grants.#{grant.grant_id}"
        settled = self._table.update(
            acquired_key(),
            f"ADD #n :back REMOVE {path}",
            condition=f"attribute_exists({path}) AND attribute_not_exists({path}.#swept)",
            values={":back": -unused},
        )
        if settled is not None:
            return unused
        while True:
            entry = self._entry(grant.grant_id)
            if entry is None:
                # Settled by this very call: an earlier try applied and its answer was lost.
                return unused
            # The sweep gave back what it could not see used; this worker knows what it used.
            correction = unused - int(entry["swept"])
            corrected = self._table.update(
                acquired_key(),
                f"ADD #n :back REMOVE {path}",
                condition=f"attribute_exists({path}.#swept)",
                values={":back": -correction},
            )
            if corrected is not None:
                return max(correction, 0)

    def open(self) -> dict[str, dict[str, Any]]:
        item, _ = self._slots.read(released=False)
        grants = item.get("grants") or {}
        return {str(k): v for k, v in grants.items()}

    def sweep(self, now: float, lease_s: float = GRANT_LEASE_S) -> SweptGrants:
        """Give back the slots of grants their workers never settled (see the module's doc)."""
        given_back = kept = swept = 0
        for grant_id, entry in self.open().items():
            if "swept" in entry:
                if now - float(entry["at"]) > SWEPT_KEPT_S:
                    self._forget(grant_id)
                continue
            if now - float(entry["at"]) < lease_s:
                continue
            grant = _grant(grant_id, entry)
            intended, no_new_run = self._rows.creates_of(
                grant.batch_id, grant.chunk, grant.holder, grant.taken_at
            )
            maybe_runs = min(len(intended - no_new_run), grant.slots)
            back = grant.slots - maybe_runs
            path = f"#grants.#{grant_id}"
            marked = self._table.update(
                acquired_key(),
                f"ADD #n :back SET {path}.#swept = :swept",
                condition=f"attribute_exists({path}) AND attribute_not_exists({path}.#swept)",
                values={":back": -back, ":swept": back},
            )
            if marked is not None:
                given_back += back
                kept += maybe_runs
                swept += 1
        return SweptGrants(given_back=given_back, kept_for_runs=kept, grants=swept)

    def _entry(self, grant_id: str) -> dict[str, Any] | None:
        entry = self.open().get(grant_id)
        return dict(entry) if entry is not None else None

    def _forget(self, grant_id: str) -> None:
        path = f"#grants.#{grant_id}"
        self._table.update(acquired_key(), f"REMOVE {path}", condition=f"attribute_exists({path}.#swept)")
