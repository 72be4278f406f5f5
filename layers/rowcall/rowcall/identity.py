"""Identifiers derived from what they name, so a retry or a duplicate event derives the same one."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Callable, Sequence


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
    """Signs and checks the per-row token carried in callback URLs.

    The token binds (batch, row, attempt), so a callback of an earlier attempt of a reprocessed
    row cannot pass for the current one. It is signed with the first secret and checked against
    each, so a rotated secret (new one first, old one kept a while) loses no callback in flight.
    """

    def __init__(self, secrets: str | Sequence[str] | Callable[[], Sequence[str]]) -> None:
        # A source is read at each use (it caches for a few minutes), so a signer built once per
        # container still picks up a rotated secret; fixed secrets are checked here, at once.
        self._source = secrets if callable(secrets) else None
        self._fixed = [] if callable(secrets) else self._encoded(secrets)

    @staticmethod
    def _encoded(secrets: str | Sequence[str]) -> list[bytes]:
        keys = [k.encode() for k in ([secrets] if isinstance(secrets, str) else secrets) if k]
        if not keys:
            raise ValueError("a callback signer needs at least one secret")
        return keys

    @property
    def _keys(self) -> list[bytes]:
        return self._fixed if self._source is None else self._encoded(self._source())

    @staticmethod
    def _mac(key: bytes, batch_id: str, row_id: str, attempt: int) -> str:
        mac = hmac.new(key, f"{batch_id}:{row_id}:{attempt}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def token(self, batch_id: str, row_id: str, attempt: int) -> str:
        return f"{attempt}.{self._mac(self._keys[0], batch_id, row_id, attempt)}"

    def verify(self, batch_id: str, row_id: str, token: str) -> int | None:
        """The attempt the token was made for, or None when it is not ours."""
        attempt, sep, offered = token.partition(".")
        if not sep or not attempt.isdigit() or len(attempt) > 6 or int(attempt) < 1:
            return None
        matched = False
        for key in self._keys:  # every secret of a rotation, read once for this check
            matched |= hmac.compare_digest(self._mac(key, batch_id, row_id, int(attempt)), offered)
        return int(attempt) if matched else None


def secret_list(value: str) -> list[str]:
    """A secret parameter's value: one secret, or several separated by white space while rotating
    (the one to sign with first)."""
    return value.split()
