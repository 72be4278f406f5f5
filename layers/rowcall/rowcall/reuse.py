"""Reuse (contract §3 `reuse`): a row asked exactly what a completed row was asked is completed
from it, at once, with no run, no slot, no budget and nothing charged.

What a row asks is its content key: a hash of the provider, the technique and its canonical inputs
(static inputs included, sorted by input id, each with its type and exact value). Column order and
the key column do not change it; a changed type or value, another technique or provider, does.
Completed rows leave their key behind (`remember`, by the recorder); a worker looks the keys of a
chunk's rows up in bulk before it starts any (`take`). Failed rows leave nothing, and a row's later
attempt (an explicit reprocess) always runs anew.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, TypeVar

from rowcall.finishing import RowResult
from rowcall.identity import row_id_for
from rowcall.ledger import ReuseLedger, ReuseSource
from rowcall.models import RowOutcome, RowStatus, RunInput

KEY_VERSION = 1
DAY_S = 86_400


def content_key(provider: str, technique_id: str, inputs: Iterable[RunInput]) -> str:
    """43 URL-safe characters (SHA-256): the same for the same request whatever the column order."""
    canonical = {
        "v": KEY_VERSION,
        "provider": provider,
        "technique": technique_id,
        "inputs": sorted([i.id, i.type, i.value] for i in inputs),
    }
    text = json.dumps(canonical, ensure_ascii=False, separators=(",", ":"))
    return base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()


class ReusableRow(Protocol):
    """A row a worker is about to start (`rowcall.runs.RowJob`)."""

    @property
    def record(self) -> int: ...
    @property
    def attempt(self) -> int: ...
    @property
    def line(self) -> int: ...
    @property
    def key(self) -> str: ...
    @property
    def content_key(self) -> str | None: ...


_Row = TypeVar("_Row", bound=ReusableRow)


def reused_outcome(source: ReuseSource) -> RowOutcome | None:
    """The outcome a row takes from an earlier completed row, or None when it must run after all.

    In a batch saving its outputs the worker then copies the source's saved objects
    (`rowcall.saved_outputs.ReusedOutputs`), and runs the row when they are gone: that needs the
    bucket, so ingest's estimate (which calls this alone) counts such a row as reused."""
    return RowOutcome(
        status=RowStatus.COMPLETED,
        outputs=source.outputs,
        reused_from=source.reused_from,
        charged_cost_micro_usd=0,
    )


class RowReuse:
    """`keep_days` (the template's ReuseDays) matters to the recorder alone: how long what it
    remembers can be reused."""

    def __init__(self, ledger: ReuseLedger, *, clock: Callable[[], float], keep_days: float = 0.0) -> None:
        self._ledger = ledger
        self._keep_s = keep_days * DAY_S
        self._clock = clock

    def take(self, rows: Sequence[_Row]) -> tuple[list[_Row], list[RowResult]]:
        """The rows still to run, and the outcomes of the rows completed from earlier ones.

        Only a row's first attempt is looked up: a later attempt is an explicit reprocess."""
        candidates = [r.content_key for r in rows if r.attempt == 1 and r.content_key]
        sources = self._ledger.find(candidates, now=self._clock()) if candidates else {}
        to_run: list[_Row] = []
        reused: list[RowResult] = []
        for row in rows:
            source = sources.get(row.content_key or "") if row.attempt == 1 else None
            outcome = reused_outcome(source) if source is not None else None
            if outcome is None:
                to_run.append(row)
            else:
                reused.append(RowResult(row.record, row.attempt, outcome, line=row.line, key=row.key))
        return to_run, reused

    def sources(self, batch_id: str, chunk: int, moved: Sequence[RowResult]) -> list[ReuseSource]:
        """What the completed rows among `moved` (the recorder's row writes that won) leave behind:
        rows that ran and said their content key (a reused row's source is remembered already)."""
        now = self._clock()
        return [
            ReuseSource(
                content_key=r.content_key,
                batch_id=batch_id,
                row_id=row_id_for(chunk, r.record),
                run_id=r.outcome.run_id,
                outputs=r.outcome.outputs,
                completed_at=round(now, 3),
                expires_at=int(now + self._keep_s),
            )
            for r in moved
            if r.content_key and r.outcome.status is RowStatus.COMPLETED and r.outcome.run_id
        ]

    def remember(self, sources: Sequence[ReuseSource]) -> int:
        """One request per 25 sources (a received batch of outcomes is at most 10). How many items."""
        return self._ledger.remember(sources) if sources else 0
