"""FLORA's webhook signature: `Flora-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`.

The hex is HMAC-SHA256 of `{t}.{raw body}` keyed by the signing secret's own UTF-8 bytes (the
whole `whsec_...` string, as `@flora-ai/flora`'s `webhooks.unwrap` computes it). Several `v1`
values arrive while FLORA rotates its secret; several secrets of ours are accepted while we do.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Sequence

SIGNATURE_HEADER = "Flora-Signature"
WEBHOOK_ID_HEADER = "Flora-Webhook-Id"
EVENT_HEADER = "Flora-Event"
TOLERANCE_S = 300


def signature_of(secret: str, timestamp: int, body: bytes) -> str:
    signed = f"{timestamp}.".encode() + body
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature_header(secrets: Sequence[str], timestamp: int, body: bytes) -> str:
    """What a sender puts in `Flora-Signature`: one `v1` per secret it signs with."""
    return ",".join([f"t={timestamp}", *(f"v1={signature_of(s, timestamp, body)}" for s in secrets)])


def _parse(header: str) -> tuple[int | None, list[str]]:
    timestamp: int | None = None
    offered: list[str] = []
    for part in header.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key == "t" and value.isdigit():
            timestamp = int(value)
        elif key == "v1" and value:
            offered.append(value)
    return timestamp, offered


def verify_signature(
    header: str | None,
    body: bytes,
    secrets: Sequence[str],
    *,
    now: float | None = None,
    tolerance_s: int = TOLERANCE_S,
) -> bool:
    """True when some `v1` matches some secret (compared in constant time) and `t` is within
    the tolerance either side of now; a replay older than that is refused."""
    if not header or not secrets:
        return False
    timestamp, offered = _parse(header)
    if timestamp is None or not offered:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = [signature_of(s, timestamp, body) for s in secrets if s]
    # Every pair is compared, so the time taken does not say which secret or value matched.
    matched = False
    for candidate in offered:
        for signature in expected:
            matched |= hmac.compare_digest(candidate.encode(), signature.encode())
    return matched
