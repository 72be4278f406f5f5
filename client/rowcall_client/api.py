"""The management API (contract §4) over an authenticated httpx client, with one error type for it all."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

Json = dict[str, Any]


class ApiError(Exception):
    """Anything the API or the way to it refused: an HTTP error in the contract's shape, API Gateway's
    own refusal, or no answer at all (`status` 0). `str()` is one line fit for a terminal."""

    def __init__(self, status: int, code: str, message: str, fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields or {}

    def __str__(self) -> str:
        where = f"{self.status} {self.code}" if self.status else self.code
        # A field's problem is often the message itself (`input_types: unknown type ...`): not twice.
        fields = self.fields.items()
        detail = "".join(f"; {k}: {problem}" for k, problem in fields if str(problem) not in self.message)
        return " ".join(f"{where}: {self.message}{detail}".split())


def _error_of(response: httpx.Response) -> ApiError:
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return ApiError(
            response.status_code,
            str(error.get("code") or "error"),
            str(error.get("message") or response.reason_phrase),
            error.get("fields") if isinstance(error.get("fields"), dict) else None,
        )
    # API Gateway answers in its own shape, e.g. 403 {"message": "Forbidden"} to an unsigned request.
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return ApiError(response.status_code, "gateway", body["message"])
    text = response.text.strip()[:200] or response.reason_phrase
    return ApiError(response.status_code, "http_error", text)


class RowcallApi:
    """One method per route; each returns the API's JSON as is and raises ApiError for anything else."""

    def __init__(self, http: httpx.Client) -> None:
        self._http = http

    @property
    def base_url(self) -> str:
        return str(self._http.base_url)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RowcallApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, params: Json | None = None, body: Json | None = None) -> Json:
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            response = self._http.request(method, path, params=query or None, json=body)
        except httpx.TimeoutException:
            raise ApiError(0, "timeout", f"{method} {self._where(path)} did not answer in time") from None
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise ApiError(0, "unreachable", f"cannot reach {self._where(path)}: {reason}") from None
        if response.status_code >= 400:
            raise _error_of(response)
        try:
            answer: Any = response.json()
        except ValueError:
            raise ApiError(response.status_code, "invalid_response", "the API answered non-JSON") from None
        if not isinstance(answer, dict):
            raise ApiError(
                response.status_code, "invalid_response", "the API answered JSON that is no object"
            )
        return answer

    def _where(self, path: str) -> str:
        return str(self._http.base_url.join(path))

    def list_batches(self, limit: int = 20, cursor: str | None = None) -> Json:
        return self._call("GET", "/batches", {"limit": limit, "cursor": cursor})

    def get_batch(self, batch_id: str) -> Json:
        return self._call("GET", f"/batches/{_segment(batch_id)}")

    def rows(
        self, batch_id: str, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> Json:
        params = {"status": status, "limit": limit, "cursor": cursor}
        return self._call("GET", f"/batches/{_segment(batch_id)}/rows", params)

    def row_errors(self, batch_id: str, limit: int | None = None, cursor: str | None = None) -> Json:
        return self._call(
            "GET", f"/batches/{_segment(batch_id)}/row-errors", {"limit": limit, "cursor": cursor}
        )

    def reprocess(self, batch_id: str, row_ids: list[str] | None = None) -> Json:
        body: Json = {} if row_ids is None else {"row_ids": row_ids}
        return self._call("POST", f"/batches/{_segment(batch_id)}/reprocess", body=body)

    def cancel(self, batch_id: str) -> Json:
        return self._call("POST", f"/batches/{_segment(batch_id)}/cancel", body={})

    def resume(self, batch_id: str, max_cost_usd: float | None = None) -> Json:
        body: Json = {} if max_cost_usd is None else {"max_cost_usd": max_cost_usd}
        return self._call("POST", f"/batches/{_segment(batch_id)}/resume", body=body)

    def create_upload(self, filename: str, size_bytes: int, **metadata: Any) -> Json:
        """`metadata`: the optional fields of POST /uploads (technique_id, key_column, input_columns,
        input_types, static_inputs, on_done_url, batch_name, provider, max_cost_usd, reuse, save_outputs,
        max_failed_percent); None values are left out."""
        body: Json = {"filename": filename, "size_bytes": size_bytes}
        body.update({k: v for k, v in metadata.items() if v is not None})
        return self._call("POST", "/uploads", body=body)


def _segment(batch_id: str) -> str:
    """A batch id as one path segment: an id typed with a slash must not reach another route."""
    if not batch_id:
        raise ApiError(0, "invalid_argument", "a batch id is required")
    return quote(batch_id, safe="")
