"""Submitting a CSV as a user of the API does: POST /uploads, PUT to the presigned URL, find its batch."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import httpx

from rowcall_client.api import ApiError, RowcallApi

PUT_TIMEOUT_S = 300.0
FIND_PAGE = 100
_S3_ERROR = re.compile(r"<Code>([^<]*)</Code>.*?<Message>([^<]*)</Message>", re.S)


def upload(api: RowcallApi, path: Path, **metadata: Any) -> dict[str, Any]:
    """Uploads `path` with the POST /uploads metadata; returns the API's upload answer (its `key`)."""
    size = path.stat().st_size
    grant = api.create_upload(path.name, size, **metadata)
    # Exactly the headers that were signed: another Content-Type or metadata would be refused.
    headers = dict(grant.get("headers") or {"Content-Type": "text/csv"})
    headers["Content-Length"] = str(size)
    try:
        with path.open("rb") as body:
            response = httpx.put(grant["upload_url"], content=body, headers=headers, timeout=PUT_TIMEOUT_S)
    except httpx.TransportError as exc:
        raise ApiError(0, "upload_failed", f"PUT to the upload URL failed: {exc}") from None
    if response.status_code >= 300:
        found = _S3_ERROR.search(response.text)
        code, message = found.groups() if found else ("upload_failed", response.text[:200])
        raise ApiError(response.status_code, code, f"S3 refused the upload: {message}")
    return grant


def find_batch(api: RowcallApi, key: str, timeout_s: float, poll_s: float = 0.3) -> dict[str, Any]:
    """The batch made from the upload at `key`: ingest records it moments after the object lands.

    Looks through the newest FIND_PAGE batches; an upload's batch is among them unless that many
    other batches started in the same seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        for item in api.list_batches(limit=FIND_PAGE).get("items", []):
            if (item.get("source") or {}).get("key") == key:
                return dict(item)
        if time.monotonic() > deadline:
            raise ApiError(0, "batch_not_found", f"no batch appeared for {key} within {timeout_s:.0f}s")
        time.sleep(poll_s)
