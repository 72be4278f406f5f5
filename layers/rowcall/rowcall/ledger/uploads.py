"""Upload intents: the §3 metadata a `POST /uploads` request named, kept under the object key it
granted, for the ingest of that object to read.

The presigned PUT then signs only what contract §4 says a browser sends (`Content-Type` and
`Content-Length`): metadata signed into the URL would have to be sent back as `x-amz-meta-*`
headers byte for byte, which a plain XHR or `curl -T` does not do (S3: SignatureDoesNotMatch).
The item expires by itself (DynamoDB TTL on `expires_at`); the batch keeps its own copy of the
spec from its first ingest on.
"""

from __future__ import annotations

from rowcall.ledger.table import Table

# Long past the URL's 5 minutes: S3 retries an event, and Lambda an ingest, for hours.
INTENT_TTL_S = 2 * 24 * 3600


def _key(object_key: str) -> dict[str, str]:
    return {"pk": f"UPLOAD#{object_key}", "sk": "INTENT"}


class UploadIntentLedger:
    def __init__(self, table: Table) -> None:
        self._table = table

    def remember(self, object_key: str, metadata: dict[str, str], *, now_epoch: float) -> None:
        """One write (an upsert: a grant's key is new each time)."""
        self._table.update(
            _key(object_key),
            "SET #metadata = :metadata, #expires_at = :expires",
            values={":metadata": metadata, ":expires": int(now_epoch) + INTENT_TTL_S},
        )

    def recall(self, object_key: str, *, now_epoch: float) -> dict[str, str] | None:
        """The metadata granted with this key; None when there was none (an upload straight to S3)
        or it expired (TTL deletes lag: the time is checked here too)."""
        stored = self._table.get(_key(object_key))
        if not stored or int(stored.get("expires_at", 0)) < now_epoch:
            return None
        return {str(k): str(v) for k, v in dict(stored.get("metadata") or {}).items()}
