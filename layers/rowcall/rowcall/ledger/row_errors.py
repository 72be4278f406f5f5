"""Rows skipped at ingest (wrong width, unterminated quote, ...), keyed by physical line."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from rowcall.ledger.keys import errors_pk
from rowcall.ledger.table import Table
from rowcall.models import RowError


class RowErrorLedger:
    def __init__(self, table: Table) -> None:
        self._table = table

    def record(self, batch_id: str, errors: Sequence[RowError]) -> None:
        """Keyed by line, so writing one again on a redone pass is harmless."""
        self._table.put_many(
            [{"pk": errors_pk(batch_id), "sk": f"LINE#{e.line:012d}", **e.model_dump()} for e in errors]
        )

    def of_batch(self, batch_id: str) -> Iterator[RowError]:
        for stored in self._table.prefixed(errors_pk(batch_id), "LINE#"):
            yield RowError.model_validate(stored)
