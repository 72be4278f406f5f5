"""Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of id.timestamp.body>`."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping

SECRET_PREFIX = "whsec_"
TOLERANCE_S = 300


def _key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


class WebhookSigner:
    def __init__(self, secret: str | Callable[[], str]) -> None:
        # A source is read at each signature (it caches for a few minutes), so a notifier built
        # once per container signs with a rotated secret within that time.
        self._source = secret if callable(secret) else None
        self._fixed = b"" if callable(secret) else _key(secret)

    def _signature(self, message_id: str, timestamp: str, body: bytes) -> str:
        key = self._fixed if self._source is None else _key(self._source())
        signed = f"{message_id}.{timestamp}.".encode() + body
        return base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()

    def headers(self, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": f"v1,{self._signature(message_id, str(timestamp), body)}",
        }

    def verify(self, headers: Mapping[str, str], body: bytes, now: float | None = None) -> bool:
        """True when one of the v1 signatures matches and the timestamp is within tolerance."""
        message_id, timestamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
        if not message_id or not timestamp.isdigit():
            return False
        if abs((time.time() if now is None else now) - int(timestamp)) > TOLERANCE_S:
            return False
        expected = self._signature(message_id, timestamp, body)
        offered = [
            s.split(",", 1)[1] for s in headers.get("webhook-signature", "").split() if s.startswith("v1,")
        ]
        return any(hmac.compare_digest(expected, signature) for signature in offered)
