"""Identifiers derived from what they name, so a retry or a duplicate event derives the same one."""

from __future__ import annotations

import base64
import hashlib
import hmac


def batch_id_for(bucket: str, key: str, version_id: str | None, sequencer: str | None) -> str:
    """One batch per stored object version; duplicate S3 deliveries share version and sequencer."""
    identity = version_id or sequencer or ""
    digest = hashlib.sha256(f"{bucket}\n{key}\n{identity}".encode()).digest()
    return "b_" + base64.b32encode(digest[:15]).decode().lower()


def row_id_for(chunk: int, record: int) -> str:
    return f"{chunk}-{record}"


def parse_row_id(row_id: str) -> tuple[int, int] | None:
    chunk, sep, record = row_id.partition("-")
    if not sep or not chunk.isdigit() or not record.isdigit():
        return None
    return int(chunk), int(record)


def idempotency_key_for(batch_id: str, row_id: str, attempt: int) -> str:
    return f"{batch_id}.{row_id}.{attempt}"


class CallbackSigner:
    """Signs and checks the per-row token carried in callback URLs."""

    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def token(self, batch_id: str, row_id: str) -> str:
        mac = hmac.new(self._key, f"{batch_id}:{row_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def verify(self, batch_id: str, row_id: str, token: str) -> bool:
        return hmac.compare_digest(self.token(batch_id, row_id), token)
