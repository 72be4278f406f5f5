"""Opaque page cursors: a kind and a few whole numbers, URL-safe, refused when not one of ours.

A cursor names a position in something that does not move (a line of the file, a record of a
chunk), never an item's state, so pages neither skip nor repeat while statuses change.
"""

from __future__ import annotations

import base64
import json

MAX_CURSOR_CHARS = 512


class InvalidCursor(ValueError):
    """The cursor was not made by this API for this listing."""


def encode_cursor(kind: str, *position: int) -> str:
    raw = json.dumps([kind, *position], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_cursor(kind: str, cursor: str, size: int) -> list[int]:
    """The `size` numbers of a cursor of this kind; InvalidCursor for anything else."""
    if len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidCursor("cursor is too long")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise InvalidCursor("cursor is not one this API returned") from None
    if (
        not isinstance(decoded, list)
        or len(decoded) != size + 1
        or decoded[0] != kind
        or not all(type(n) is int and n >= 0 for n in decoded[1:])
    ):
        raise InvalidCursor("cursor is not one this API returned")
    return list(decoded[1:])
