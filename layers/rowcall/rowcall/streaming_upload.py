"""One S3 object written as it is produced: a part's worth of bytes in memory, never a file.

An object of unknown size (a batch's results) cannot be spooled to the notifier's /tmp (512 MB)
nor held in its memory, so it goes up in parts as they fill. S3's rules ("Amazon S3 multipart
upload limits"): parts of 5 MiB to 5 GiB, any size for the last, at most 10,000 parts; a smaller
earlier part fails CompleteMultipartUpload with `EntityTooSmall`.

Retries: the function's client is botocore's default (legacy mode, 5 attempts), which retries a
503 `SlowDown` with backoff and sends a part's bytes again whole; a part number written twice
keeps the last copy, so a retried part is harmless. A repeated delivery of the same finish writes
the object again with the same content (a new version of the key).
"""

from __future__ import annotations

import io
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from aws_lambda_powertools import Logger
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef

logger = Logger(child=True)

MIN_PART_BYTES = 5 * 1024 * 1024
# botocore's own multipart chunk size: 10,000 parts of it is 78 GiB, far past any results file.
PART_BYTES = 8 * 1024 * 1024
MAX_PARTS = 10_000
# What s3transfer asks for on a multipart upload (botocore checksums every part by default);
# CompleteMultipartUpload then lists each part's checksum.
CHECKSUM_ALGORITHM: Final = "CRC32"


class StreamingUpload:
    """A text sink (what csv.writer writes to) that streams UTF-8 to one S3 object.

    Use it as a context manager: a clean exit completes the object, an exception aborts the
    multipart upload so none is left behind (the bucket's AbortIncompleteMultipartUpload rule
    reaps one whose abort failed too). An object smaller than one part is a single PutObject.
    """

    def __init__(
        self,
        s3: S3Client,
        bucket: str,
        key: str,
        *,
        content_type: str,
        part_bytes: int = PART_BYTES,
        create_only: bool = False,
    ) -> None:
        """`create_only`: the object is written only if its key has no object yet (S3's
        conditional write, `If-None-Match: *` on PutObject / CompleteMultipartUpload); a second
        writer gets `PreconditionFailed` (412) and nothing is stored twice."""
        if part_bytes < MIN_PART_BYTES:
            raise ValueError(f"S3 refuses parts under {MIN_PART_BYTES} bytes unless last")
        self._s3 = s3
        self._bucket = bucket
        self._key = key
        self._content_type = content_type
        self._part_bytes = part_bytes
        self._create_only = create_only
        self._buffer = io.BytesIO()
        self._upload_id: str | None = None
        self._parts: list[CompletedPartTypeDef] = []
        self.part_sizes: list[int] = []
        self.size = 0

    def write(self, text: str) -> int:
        self.write_bytes(text.encode("utf-8"))
        return len(text)

    def write_bytes(self, data: bytes) -> None:
        """Bytes as they are (a saved output): the same parts as text."""
        self._buffer.write(data)
        self.size += len(data)
        if self._buffer.tell() >= self._part_bytes:
            self._upload_part()

    def __enter__(self) -> StreamingUpload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc is None:
            try:
                self._finish()
            except BaseException:
                self._abort()
                raise
        else:
            self._abort()

    def _upload_part(self) -> None:
        if self._upload_id is None:
            self._upload_id = self._s3.create_multipart_upload(
                Bucket=self._bucket,
                Key=self._key,
                ContentType=self._content_type,
                ChecksumAlgorithm=CHECKSUM_ALGORITHM,
            )["UploadId"]
        number = len(self._parts) + 1
        if number > MAX_PARTS:
            raise ValueError(f"{self._key}: over S3's {MAX_PARTS} parts")
        # The buffer itself is the body, not a copy of it: one part's bytes in memory at a time.
        # botocore reads it from the start again when it retries.
        body, self._buffer = self._buffer, io.BytesIO()
        size = body.tell()
        body.seek(0)
        got = self._s3.upload_part(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            PartNumber=number,
            Body=body,
            ChecksumAlgorithm=CHECKSUM_ALGORITHM,
        )
        part: CompletedPartTypeDef = {"PartNumber": number, "ETag": got["ETag"]}
        if "ChecksumCRC32" in got:
            part["ChecksumCRC32"] = got["ChecksumCRC32"]
        self._parts.append(part)
        self.part_sizes.append(size)

    def _finish(self) -> None:
        # Create-only (If-None-Match: *) where asked; the same call either way.
        condition: dict[str, Any] = {"IfNoneMatch": "*"} if self._create_only else {}
        if self._upload_id is None:
            body, self._buffer = self._buffer, io.BytesIO()
            self.part_sizes.append(body.tell())
            body.seek(0)
            self._s3.put_object(
                Bucket=self._bucket, Key=self._key, Body=body, ContentType=self._content_type, **condition
            )
            return
        if self._buffer.tell():
            self._upload_part()
        self._s3.complete_multipart_upload(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._upload_id,
            MultipartUpload={"Parts": self._parts},
            **condition,
        )
        self._upload_id = None

    def _abort(self) -> None:
        self._buffer = io.BytesIO()
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        try:
            self._s3.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=upload_id)
        except (BotoCoreError, ClientError):
            # The caller's error is the one to report; the lifecycle rule removes this upload.
            logger.exception("abort of a multipart upload failed", extra={"key": self._key})
