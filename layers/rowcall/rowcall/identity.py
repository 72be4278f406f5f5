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
    def _mac(key: bytes, batch_id: str, row_id: str, attempt: int, content_key: str | None = None) -> str:
        signed = f"{batch_id}:{row_id}:{attempt}" + (f":{content_key}" if content_key else "")
        mac = hmac.new(key, signed.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def token(self, batch_id: str, row_id: str, attempt: int, content_key: str | None = None) -> str:
        """`{attempt}.{mac}`, or `{attempt}.{content key}.{mac}` when the row says what it asked
        (`rowcall.reuse`): signed with the rest, so a completion is remembered under the key the
        worker computed and no other."""
        mac = self._mac(self._keys[0], batch_id, row_id, attempt, content_key)
        return f"{attempt}.{content_key}.{mac}" if content_key else f"{attempt}.{mac}"

    def verify(self, batch_id: str, row_id: str, token: str) -> int | None:
        """The attempt the token was made for, or None when it is not ours."""
        attempt, sep, rest = token.partition(".")
        if not sep or not attempt.isdigit() or len(attempt) > 6 or int(attempt) < 1:
            return None
        content_key, _, offered = rest.rpartition(".")
        if len(content_key) > MAX_CONTENT_KEY_CHARS:
            return None
        matched = False
        for key in self._keys:  # every secret of a rotation, read once for this check
            matched |= hmac.compare_digest(
                self._mac(key, batch_id, row_id, int(attempt), content_key or None), offered
            )
        return int(attempt) if matched else None


# A content key is 43 characters (`rowcall.reuse.content_key`); a longer middle part is not ours.
MAX_CONTENT_KEY_CHARS = 64


def content_key_in(token: str) -> str | None:
    """The content key a callback token carries (check the token with `CallbackSigner.verify` first)."""
    parts = token.split(".")
    return parts[1] if len(parts) == 3 and parts[1] else None


def secret_list(value: str) -> list[str]:
    """A secret parameter's value: one secret, or several separated by white space while rotating
    (the one to sign with first)."""
    return value.split()
