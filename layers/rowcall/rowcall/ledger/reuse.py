"""Content-key items: what a completed row made, under the hash of what it was asked (`reuse`).

One item per content key (`rowcall.reuse.content_key`), overwritten by each newer completion of
the same inputs and deleted by DynamoDB's TTL (`expires_at`) `ReuseDays` after it was written.
Written in groups (BatchWriteItem, 25 a request) per received batch of outcomes, read in groups
(BatchGetItem, 100 a request) per chunk a worker starts: a reused row costs no request of its own.
TTL deletes within days, not at the second, so readers also check `expires_at` themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from rowcall.ledger.table import Table

# The table's TTL attribute (template.yaml, TimeToLiveSpecification): epoch seconds.
TTL_ATTRIBUTE = "expires_at"
SK = "REUSE"


def reuse_key(content_key: str) -> dict[str, str]:
    return {"pk": f"REUSE#{content_key}", "sk": SK}


class ReuseSource(BaseModel):
    """A completed row as a later row with the same content key is completed from it."""

    model_config = ConfigDict(frozen=True)

    content_key: str = Field(min_length=1)
    batch_id: str
    row_id: str
    run_id: str | None = None
    outputs: list[dict[str, Any]] = Field(default_factory=list)
    # The bucket keys of the outputs saved for that row (`save-outputs`), once the saver has them:
    # a reuse copies those objects inside S3 rather than asking the provider's URLs again.
    saved_outputs: list[dict[str, Any]] = Field(default_factory=list)
    completed_at: float
    expires_at: int

    @property
    def reused_from(self) -> dict[str, str]:
        """The row's `reused_from` (contract §4)."""
        return {"batch_id": self.batch_id, "row_id": self.row_id, "run_id": self.run_id or ""}


class ReuseLedger:
    def __init__(self, table: Table) -> None:
        self._table = table

    def remember(self, sources: Iterable[ReuseSource]) -> int:
        """Store each source under its content key (the later of two for one key wins: a request
        may not name an item twice). How many items were written."""
        latest: dict[str, ReuseSource] = {}
        for source in sources:
            latest[source.content_key] = source
        items = [
            {**reuse_key(s.content_key), **s.model_dump(exclude={"content_key"}, exclude_none=True)}
            for s in latest.values()
        ]
        self._table.put_many(items)
        return len(items)

    def find(self, content_keys: Sequence[str], *, now: float) -> dict[str, ReuseSource]:
        """The source of each content key that has one unexpired at `now` (epoch seconds)."""
        wanted = list(dict.fromkeys(content_keys))
        found: dict[str, ReuseSource] = {}
        for stored in self._table.get_many([reuse_key(k) for k in wanted]):
            source = ReuseSource.model_validate(stored | {"content_key": stored["pk"].removeprefix("REUSE#")})
            if source.expires_at > now:
                found[source.content_key] = source
        return found
