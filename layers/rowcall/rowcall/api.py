"""Management API reads, with the contract's error shape for everything that can go wrong."""

from __future__ import annotations

from typing import Any

from rowcall.ledger import Ledger
from rowcall.models import BatchState, BatchStatus, utcnow
from rowcall.views import batch_view

MAX_PAGE = 100
DEFAULT_PAGE = 20


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


def page_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_PAGE
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiError(400, "invalid_parameter", "limit must be a whole number from 1 to 100", {"limit": raw})
    return int(raw)


def not_found(batch_id: str) -> ApiError:
    return ApiError(404, "batch_not_found", f"no batch {batch_id!r}")


class BatchQueries:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def view(self, batch: BatchState) -> dict[str, Any]:
        settled = batch.status in (BatchStatus.COMPLETED, BatchStatus.PARTIAL)
        counters = [] if settled else self._ledger.chunks.counters(batch.batch_id)
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
            raise ApiError(
                400, "invalid_cursor", "cursor is not one this API returned", {"cursor": "invalid"}
            ) from None
        return {"items": [self.view(b) for b in batches], "next_cursor": next_cursor}
