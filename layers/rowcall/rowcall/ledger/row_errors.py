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
            [{"pk": errors_pk(batch_id), "sk": _line_sk(e.line), **e.model_dump()} for e in errors]
        )

    def of_batch(self, batch_id: str) -> Iterator[RowError]:
        for stored in self._table.prefixed(errors_pk(batch_id), "LINE#"):
            yield RowError.model_validate(stored)

    def page(self, batch_id: str, *, after_line: int, limit: int) -> tuple[list[RowError], bool]:
        """Up to `limit` errors after a line, in line order, and whether more follow: one query
        (one more item than asked, so the last page says it is the last)."""
        items, last = self._table.query(
            "pk = :pk AND sk BETWEEN :after AND :last",
            {":pk": errors_pk(batch_id), ":after": _line_sk(after_line + 1), ":last": _line_sk(MAX_LINE)},
            limit=limit + 1,
        )
        # More than asked came back, or DynamoDB stopped at its 1 MB page before the limit.
        more = len(items) > limit or last is not None
        return [RowError.model_validate(i) for i in items[:limit]], more


# Twelve digits in the sort key: no file of at most 1 GiB has more lines than that.
MAX_LINE = 10**12 - 1


def _line_sk(line: int) -> str:
    return f"LINE#{line:012d}"
