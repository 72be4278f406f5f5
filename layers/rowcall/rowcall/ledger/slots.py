"""The global cap on runs in flight: slots taken before runs start, given back as outcomes land.

`acquired` is one counter; what comes back is spread over a few `released` counters, so neither
the workers taking slots nor the recorders returning them make one item hot. Held slots are
acquired minus released. Released counters only grow, so a stale read of them can only make the
held count look higher: the cap may be under-used for a moment, never exceeded.
"""

from __future__ import annotations

import zlib

from rowcall.ledger.table import Table

SLOTS_PK = "SLOTS"
RELEASE_SHARDS = 4
ACQUIRE_TRIES = 5


def release_shard(batch_id: str, chunk: int) -> int:
    return zlib.crc32(f"{batch_id}#{chunk}".encode()) % RELEASE_SHARDS


class SlotLedger:
    def __init__(self, table: Table) -> None:
        self._table = table

    def held(self) -> tuple[int, int]:
        """(acquired, released) as last written."""
        acquired = self._table.get({"pk": SLOTS_PK, "sk": "ACQUIRED"}) or {}
        released = 0
        for shard in range(RELEASE_SHARDS):
            released += (self._table.get({"pk": SLOTS_PK, "sk": f"RELEASED#{shard}"}) or {}).get("n", 0)
        return int(acquired.get("n", 0)), int(released)

    def acquire(self, wanted: int, cap: int) -> int:
        """Up to `wanted` slots, as many as the cap leaves free now (0: wait for some)."""
        for _ in range(ACQUIRE_TRIES):
            acquired, released = self.held()
            grant = min(wanted, cap - (acquired - released))
            if grant <= 0:
                return 0
            # acquired + grant <= cap + released, written as DynamoDB conditions allow.
            taken = self._table.update(
                {"pk": SLOTS_PK, "sk": "ACQUIRED"},
                "ADD #n :grant",
                condition="attribute_not_exists(#n) OR #n <= :limit",
                values={":grant": grant, ":limit": cap + released - grant},
            )
            if taken is not None:
                return grant
        return 0

    def release(self, count: int, shard: int) -> None:
        if count > 0:
            self._table.update({"pk": SLOTS_PK, "sk": f"RELEASED#{shard}"}, "ADD #n :n", values={":n": count})
