"""Chunks waiting for in-flight slots: a list in the ledger, woken by whoever gives slots back.

One partition, sorted by the moment each chunk began to wait, so the chunk that has waited
longest is woken first whatever its batch (fairness across batches). A chunk is listed once per
moment it began to wait: a duplicate delivery registering again writes the same item. Waking
deletes the item conditionally, so of two releasers racing for one waiter exactly one sends its
message; a releaser that dies between the delete and the send leaves a chunk that is neither
listed nor queued, which the safety net finds quiet and unleased and sends again.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from rowcall.ledger.table import Table
from rowcall.models import ChunkMessage

WAITING = "WAITING"


def waiting_sk(since_ms: int, batch_id: str, chunk: int) -> str:
    return f"{since_ms:015d}#{batch_id}#{chunk:06d}"


@dataclass(frozen=True)
class Waiter:
    batch_id: str
    chunk: int
    since_ms: int


class WaitingList:
    def __init__(self, table: Table) -> None:
        self._table = table

    def add(self, message: ChunkMessage, since_ms: int) -> None:
        """Listed until woken; the message is what the waker sends (it carries the cursor)."""
        self._table.update(
            {"pk": WAITING, "sk": waiting_sk(since_ms, message.batch_id, message.chunk.index)},
            "SET #message = :message",
            values={":message": message.model_dump_json()},
        )

    def take(self, count: int) -> list[ChunkMessage]:
        """Up to `count` waiters, longest waiting first, each taken by this caller alone."""
        taken: list[ChunkMessage] = []
        start = None
        while len(taken) < count:
            items, start = self._table.query(
                "pk = :pk", {":pk": WAITING}, limit=count - len(taken), start=start
            )
            for listed in items:
                key = {"pk": WAITING, "sk": listed["sk"]}
                gone = self._table.delete(key, condition="attribute_exists(pk)")
                if gone is not None:
                    taken.append(ChunkMessage.model_validate_json(gone["message"]))
            if start is None:
                break
        return taken

    def anyone(self) -> bool:
        """Whether any chunk is listed (one read of at most one key)."""
        items, _ = self._table.query("pk = :pk", {":pk": WAITING}, limit=1, projection="sk")
        return bool(items)

    def waiters(self) -> Iterator[Waiter]:
        for listed in self._table.query_all("pk = :pk", {":pk": WAITING}, projection="sk"):
            since, rest = str(listed["sk"]).split("#", 1)
            batch_id, chunk = rest.rsplit("#", 1)
            yield Waiter(batch_id=batch_id, chunk=int(chunk), since_ms=int(since))
