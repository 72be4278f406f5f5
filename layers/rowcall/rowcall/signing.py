"""Standard Webhooks signatures: `v1,<base64 HMAC-SHA256 of id.timestamp.body>`."""

from __future__ import annotations

import base64
import hashlib
import hmac

SECRET_PREFIX = "whsec_"


class WebhookSigner:
    def __init__(self, secret: str) -> None:
        self._key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))

    def headers(self, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        signed = f"{message_id}.{timestamp}.".encode() + body
        signature = base64.b64encode(hmac.new(self._key, signed, hashlib.sha256).digest()).decode()
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": f"v1,{signature}",
        }
