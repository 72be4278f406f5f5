"""Management API reads, with the contract's error shape for everything that can go wrong."""

from __future__ import annotations

from typing import Any

from rowcall.api_models import RowErrorPage, RowPage
from rowcall.ledger import Ledger
from rowcall.models import BatchState, RowStatus, utcnow
from rowcall.page_cursor import InvalidCursor, decode_cursor, encode_cursor
from rowcall.row_listing import RowListing
from rowcall.views import batch_view


class ApiError(Exception):
    """Answered as `{"error": {"code", "message", "fields"?}}` with `status`."""

    def __init__(self, status: int, code: str, message: str, fields: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        return {"error": error}


def not_found(batch_id: str) -> ApiError:
    return ApiError(404, "batch_not_found", f"no batch {batch_id!r}")


class BatchQueries:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def view(self, batch: BatchState) -> dict[str, Any]:
        counters = [] if batch.counts_settled else self._ledger.chunks.counters(batch.batch_id)
        return batch_view(batch, counters, utcnow())

    def get(self, batch_id: str) -> dict[str, Any]:
        batch = self._ledger.batches.get(batch_id)
        if batch is None:
            raise not_found(batch_id)
        return self.view(batch)

    def list(self, limit: int, cursor: str | None) -> dict[str, Any]:
        try:
            batches, next_cursor = self._ledger.batches.list(limit, cursor)
        except ValueError:
            raise invalid_cursor() from None
        return {"items": [self.view(b) for b in batches], "next_cursor": next_cursor}


def invalid_cursor() -> ApiError:
    return ApiError(400, "invalid_cursor", "cursor is not one this API returned", {"cursor": "invalid"})


class RowQueries:
    """A batch's rows (file order, derived status) and its row errors (line order)."""

    def __init__(self, ledger: Ledger, listing: RowListing) -> None:
        self._ledger = ledger
        self._listing = listing

    def _batch(self, batch_id: str) -> BatchState:
        batch = self._ledger.batches.get(batch_id)
        if batch is None:
            raise not_found(batch_id)
        return batch

    def rows(self, batch_id: str, *, status: RowStatus | None, limit: int, cursor: str | None) -> RowPage:
        batch = self._batch(batch_id)
        try:
            items, next_cursor = self._listing.page(batch, status=status, limit=limit, cursor=cursor)
        except InvalidCursor:
            raise invalid_cursor() from None
        return RowPage(items=items, next_cursor=next_cursor)

    def row_errors(self, batch_id: str, *, limit: int, cursor: str | None) -> RowErrorPage:
        self._batch(batch_id)
        try:
            after_line = decode_cursor("row-errors", cursor, 1)[0] if cursor else 0
        except InvalidCursor:
            raise invalid_cursor() from None
        errors, more = self._ledger.row_errors.page(batch_id, after_line=after_line, limit=limit)
        next_cursor = encode_cursor("row-errors", errors[-1].line) if more and errors else None
        return RowErrorPage(items=errors, next_cursor=next_cursor)
