"""Reading the uploaded CSV: the exact object version a batch was made from, whole or a byte range."""

from __future__ import annotations

from collections.abc import Generator
from typing import TYPE_CHECKING, Any

from rowcall.models import SourceObject

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import HeadObjectOutputTypeDef

READ_CHUNK_BYTES = 1024 * 1024


def _addressed(source: SourceObject) -> dict[str, Any]:
    address: dict[str, Any] = {"Bucket": source.bucket, "Key": source.key}
    if source.version:
        address["VersionId"] = source.version
    return address


def head_source(s3: S3Client, source: SourceObject) -> HeadObjectOutputTypeDef:
    return s3.head_object(**_addressed(source))


def read_source(
    s3: S3Client, source: SourceObject, *, start: int = 0, end: int | None = None
) -> Generator[bytes]:
    """The object's bytes from `start` up to (not including) `end`, streamed."""
    address = _addressed(source)
    if start or end is not None:
        address["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
    body = s3.get_object(**address)["Body"]
    try:
        yield from body.iter_chunks(READ_CHUNK_BYTES)
    finally:
        body.close()
