"""The bytes an emulated provider serves at an output's URL: real files of a chosen size.

Each output's bytes follow from its identity alone (run id, output id), so every GET of one URL
answers the same bytes and a test can compute what the saver must have stored. They are
generated as they are sent (a 1 GiB output costs the emulator one 64 KiB block of memory), and
each type is a file a viewer accepts: an `imageUrl` is a valid 1x1 PNG whose size is made up by a
private ancillary chunk (decoders skip it), the other types carry their format's signature.
"""

from __future__ import annotations

import hashlib
import random
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

BLOCK_BYTES = 64 * 1024
# A PNG chunk's length is a 4-byte field; padding larger than this is split over several chunks.
MAX_PNG_CHUNK = 1 << 30
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Ancillary (r), private (c), reserved bit clear (P), safe to copy (d): every decoder skips it.
_PADDING_CHUNK = b"rcPd"

CONTENT_TYPES = {
    "imageUrl": "image/png",
    "videoUrl": "video/mp4",
    "audioUrl": "audio/mpeg",
    "documentUrl": "application/pdf",
    "text": "text/plain",
}
EXTENSIONS = {
    "imageUrl": ".png",
    "videoUrl": ".mp4",
    "audioUrl": ".mp3",
    "documentUrl": ".pdf",
    "text": ".txt",
}


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@dataclass(frozen=True)
class Media:
    """One output's file: what its URL answers."""

    seed: str
    output_type: str
    size: int

    @property
    def content_type(self) -> str:
        return CONTENT_TYPES.get(self.output_type, "application/octet-stream")

    def _block(self) -> bytes:
        rng = random.Random(hashlib.sha256(self.seed.encode()).digest())
        if self.output_type == "text":
            letters = b"abcdefghijklmnopqrstuvwxyz      \n"
            return bytes(rng.choice(letters) for _ in range(BLOCK_BYTES))
        return rng.randbytes(BLOCK_BYTES)

    def _filler(self, n: int, block: bytes) -> Iterator[bytes]:
        while n > 0:
            piece = block[: min(n, len(block))]
            n -= len(piece)
            yield piece

    def _frame(self) -> tuple[bytes, bytes]:
        """What comes before and after the filler (PNG is framed chunk by chunk instead)."""
        if self.output_type == "videoUrl":
            ftyp = struct.pack(">I", 24) + b"ftypisom" + struct.pack(">I", 512) + b"isommp41"
            return ftyp, b""
        if self.output_type == "audioUrl":
            return b"ID3\x04\x00\x00\x00\x00\x00\x00", b""
        if self.output_type == "documentUrl":
            return b"%PDF-1.4\n%", b"\n%%EOF\n"
        if self.output_type == "text":
            return b"rowcall emulated output\n", b"\n"
        return b"", b""

    def _png_head(self) -> bytes:
        rgb = hashlib.sha256(self.seed.encode()).digest()[:3]
        ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
        idat = _png_chunk(b"IDAT", zlib.compress(b"\x00" + rgb))
        return _PNG_SIGNATURE + ihdr + idat

    @property
    def length(self) -> int:
        """The served size: `size`, or the smallest valid file of the type when that is larger."""
        if self.output_type == "imageUrl":
            fixed = len(self._png_head()) + 12  # IEND
            return fixed if self.size < fixed + 12 else self.size
        head, tail = self._frame()
        if self.output_type == "videoUrl":
            return max(self.size, len(head) + 8)
        return max(self.size, len(head) + len(tail))

    def chunks(self) -> Iterator[bytes]:
        """The file's bytes, a block at a time."""
        block = self._block()
        if self.output_type == "imageUrl":
            yield from self._png(block)
            return
        head, tail = self._frame()
        yield head
        filler = self.length - len(head) - len(tail)
        if self.output_type == "videoUrl":
            filler -= 8  # a `free` box holds the filler, so the file parses box by box
            yield struct.pack(">I", filler + 8 if filler + 8 < 1 << 32 else 1) + b"free"
        yield from self._filler(filler, block)
        yield tail

    def _png(self, block: bytes) -> Iterator[bytes]:
        head = self._png_head()
        yield head
        padding = self.length - len(head) - 12
        while padding >= 12:
            # A split leaves at least one whole chunk (12 bytes) for the rest.
            data_len = padding - 12 if padding - 12 <= MAX_PNG_CHUNK else MAX_PNG_CHUNK - 12
            crc = zlib.crc32(_PADDING_CHUNK)
            yield struct.pack(">I", data_len) + _PADDING_CHUNK
            for piece in self._filler(data_len, block):
                crc = zlib.crc32(piece, crc)
                yield piece
            yield struct.pack(">I", crc)
            padding -= data_len + 12
        yield _png_chunk(b"IEND", b"")

    def digest(self) -> str:
        """The sha256 of the bytes served (what a faithful copy must have)."""
        h = hashlib.sha256()
        for piece in self.chunks():
            h.update(piece)
        return h.hexdigest()


@dataclass(frozen=True)
class MediaRef:
    """What an emulator's `/_media/{run_id}/{output_type}/{output_id}{ext}` URL names."""

    run_id: str
    output_type: str
    output_id: str

    @property
    def path(self) -> str:
        extension = EXTENSIONS.get(self.output_type, "")
        return f"/_media/{self.run_id}/{self.output_type}/{self.output_id}{extension}"

    @classmethod
    def parse(cls, path: str) -> MediaRef | None:
        segments = [unquote(part) for part in urlsplit(path).path.split("/") if part]
        if len(segments) != 4 or segments[0] != "_media":
            return None
        _, run_id, output_type, name = segments
        return cls(run_id, output_type, name.removesuffix(EXTENSIONS.get(output_type, "")))

    def media(self, size: int) -> Media:
        """The bytes served: the same for one run's output whichever emulator serves it."""
        return Media(f"{self.run_id}/{self.output_id}", self.output_type, size)
