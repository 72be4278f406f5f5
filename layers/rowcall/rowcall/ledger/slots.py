"""The global cap on runs in flight: slots taken before runs start, given back as outcomes land.

`acquired` is one counter; what comes back is spread over a few `released` counters, so neither
the workers taking slots nor the recorders returning them make one item hot. Held slots are
acquired minus released. Released counters only grow, so a stale read of them can only make the
held count look higher: the cap may be under-used for a moment, never exceeded. `acquired` is
also lowered, by the write that settles a grant (`ledger/grants.py`): that only frees slots, and
the acquire's condition is on `acquired` as it is when written.
"""

from __future__ import annotations

import zlib
from typing import Any

from rowcall.ledger.table import Table

SLOTS = "SLOTS"
RELEASE_SHARDS = 4
ACQUIRE_TRIES = 5


# Each counter its own partition key: taken and given back at thousands a second, they must not
# share a partition's ~1,000 write units a second.
def _acquired_key() -> dict[str, str]:
    return {"pk": f"{SLOTS}#ACQUIRED", "sk": SLOTS}


def acquired_key() -> dict[str, str]:
    """The item that takes slots (and, `ledger/grants.py`, remembers each grant until settled)."""
    return _acquired_key()


def _released_key(shard: int) -> dict[str, str]:
    return {"pk": f"{SLOTS}#RELEASED#{shard}", "sk": SLOTS}


def release_shard(batch_id: str, chunk: int) -> int:
    return zlib.crc32(f"{batch_id}#{chunk}".encode()) % RELEASE_SHARDS


class SlotLedger:
    def __init__(self, table: Table) -> None:
        self._table = table

    def held(self) -> tuple[int, int]:
        """(acquired, released) as last written: the five counters in one strongly consistent
        BatchGetItem (one request, the read units of five GetItems)."""
        keys = [_acquired_key(), *(_released_key(shard) for shard in range(RELEASE_SHARDS))]
        counts = {c["pk"]: int(c.get("n", 0)) for c in self._table.get_many(keys, consistent=True)}
        acquired = counts.get(_acquired_key()["pk"], 0)
        return acquired, sum(counts.get(_released_key(shard)["pk"], 0) for shard in range(RELEASE_SHARDS))

    def read(self, *, released: bool = True) -> tuple[dict[str, Any], int]:
        """The `ACQUIRED` item as written and the released slots (0 unless asked for)."""
        item = self._table.get(_acquired_key()) or {}
        given_back = 0
        if released:
            for shard in range(RELEASE_SHARDS):
                given_back += int((self._table.get(_released_key(shard)) or {}).get("n", 0))
        return item, given_back

    def acquire(self, wanted: int, cap: int) -> int:
        """Up to `wanted` slots, as many as the cap leaves free now (0: wait for some)."""
        for _ in range(ACQUIRE_TRIES):
            acquired, released = self.held()
            grant = min(wanted, cap - (acquired - released))
            if grant <= 0:
                return 0
            # acquired + grant <= cap + released, written as DynamoDB conditions allow.
            taken = self._table.update(
                _acquired_key(),
                "ADD #n :grant",
                condition="attribute_not_exists(#n) OR #n <= :limit",
                values={":grant": grant, ":limit": cap + released - grant},
            )
            if taken is not None:
                return grant
        return 0

    def release(self, count: int, shard: int) -> None:
        if count > 0:
            # A transaction, not an UpdateItem: an ADD retried after a lost answer (a 500 that AWS
            # had applied) would give the slots back twice and let the cap be overrun, while
            # botocore's retries of a transaction carry its ClientRequestToken and apply it once.
            self._table.transact(
                [self._table.update_item(_released_key(shard), "ADD #n :n", values={":n": count})]
            )
