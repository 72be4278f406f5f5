"""A batch of any size for the results writer, made without writing its rows to DynamoDB.

Writing 500,000 row items through moto takes longer than the measurement itself, so the row reads
are answered by `RowPages`, a stand-in for the DynamoDB client's `query`: it makes each chunk's row
items on demand, in the wire shape DynamoDB returns (typed attribute values, pages cut at DynamoDB's
1 MB, `LastEvaluatedKey`). Everything above the client is the real code: `Table.query` paging,
`plain`, `RowLedger.rows_of_chunk`, the merge and the CSV. S3 stays real (moto).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rowcall.ledger import Ledger
from rowcall.ledger.keys import errors_pk, row_sk, rows_pk
from rowcall.models import BatchSpec, BatchState, BatchStatus, SourceObject

HEADER = ["sku", "prompt", "image"]
QUERY_PAGE_BYTES = 1024 * 1024  # DynamoDB stops a Query page at 1 MB of items read
BATCH_ID = "b_synthetic"


@dataclass(frozen=True)
class Shape:
    """`rows` data rows in chunks of `chunk_rows`; every `failed_every`-th row failed, every
    `pending_every`-th never recorded, every `formula_every`-th prompt starts with `=`."""

    rows: int
    chunk_rows: int = 1000
    prompt_bytes: int = 80
    failed_every: int = 50
    pending_every: int = 997
    formula_every: int = 1000

    @property
    def chunks(self) -> int:
        return -(-self.rows // self.chunk_rows)


def source_lines(shape: Shape) -> Iterator[bytes]:
    """The uploaded CSV, a line at a time (CRLF, as spreadsheets write it)."""
    yield (",".join(HEADER) + "\r\n").encode()
    filler = "a cat on a mat, photographed in soft morning light " * (shape.prompt_bytes // 50 + 1)
    for record in range(1, shape.rows + 1):
        prompt = filler[: shape.prompt_bytes]
        if record % shape.formula_every == 0:
            prompt = "=HYPERLINK(" + prompt[11:]
        yield f'SKU-{record:07d},"{prompt}",https://img.example/{record}.png\r\n'.encode()


def _s(value: str) -> dict[str, str]:
    return {"S": value}


def row_item(batch_id: str, chunk: int, record: int, shape: Shape) -> dict[str, Any]:
    """A row item as `RowLedger.finish` stores it, in DynamoDB's wire shape (built by hand: boto3's
    TypeSerializer would cost more than everything measured)."""
    run_id = f"run_{record:012d}"
    stored: dict[str, Any] = {
        "pk": _s(rows_pk(batch_id, chunk)),
        "sk": _s(row_sk(record)),
        "attempt": {"N": "1"},
        "line": {"N": str(record + 1)},
        "key": _s(f"SKU-{record:07d}"),
        "run_id": _s(run_id),
        "updated_at": _s("2026-11-25T16:00:00.000000+00:00"),
    }
    if record % shape.failed_every == 0:
        stored |= {
            "status": _s("failed"),
            "error_code": _s("content_policy"),
            "error_message": _s("The prompt was refused by the content policy."),
        }
    else:
        output = {"id": _s("image"), "type": _s("imageUrl"), "value": _s(f"https://cdn.example/{run_id}.png")}
        stored |= {"status": _s("completed"), "outputs": {"L": [{"M": output}]}}
    return stored


def _project(stored: dict[str, Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """What a Query's ProjectionExpression (plain names or `#name` placeholders) leaves of an item."""
    if "ProjectionExpression" not in kwargs:
        return stored
    names = kwargs.get("ExpressionAttributeNames", {})
    wanted = {names.get(n.strip(), n.strip()) for n in kwargs["ProjectionExpression"].split(",")}
    return {k: v for k, v in stored.items() if k in wanted}


@dataclass
class RowPages:
    """The DynamoDB client's `query`, for the row and row-error partitions of one synthetic batch."""

    shape: Shape
    batch_id: str = BATCH_ID
    pages: int = 0
    items: int = 0
    _chunk_of_pk: dict[str, int] = field(default_factory=dict)
    _sizes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._chunk_of_pk = {rows_pk(self.batch_id, c): c for c in range(self.shape.chunks)}

    def _records(self, chunk: int) -> range:
        first = chunk * self.shape.chunk_rows + 1
        return range(first, min(first + self.shape.chunk_rows, self.shape.rows + 1))

    def _size(self, stored: dict[str, Any]) -> int:
        """Items of one status are the same size but for a digit or two: measured once each."""
        status = stored["status"]["S"]
        if status not in self._sizes:
            self._sizes[status] = len(json.dumps(stored))
        return self._sizes[status]

    def query(self, **kwargs: Any) -> dict[str, Any]:
        pk = kwargs["ExpressionAttributeValues"][":pk"]["S"]
        self.pages += 1
        if pk == errors_pk(self.batch_id) or pk not in self._chunk_of_pk:
            return {"Items": [], "Count": 0}
        chunk = self._chunk_of_pk[pk]
        after = kwargs.get("ExclusiveStartKey", {}).get("sk", {}).get("S", "")
        page: list[dict[str, Any]] = []
        size = 0
        for record in self._records(chunk):
            if record % self.shape.pending_every == 0 or row_sk(record) <= after:
                continue
            stored = row_item(self.batch_id, chunk, record, self.shape)
            page.append(_project(stored, kwargs))
            size += self._size(stored)  # a page is cut at 1 MB of items read, before projection
            if size >= QUERY_PAGE_BYTES:
                self.items += len(page)
                return {
                    "Items": page,
                    "Count": len(page),
                    "LastEvaluatedKey": {"pk": stored["pk"], "sk": stored["sk"]},
                }
        self.items += len(page)
        return {"Items": page, "Count": len(page)}


def ledger(pages: RowPages) -> Ledger:
    return Ledger(pages, "synthetic")  # type: ignore[arg-type]


def batch_state(shape: Shape, source: SourceObject, batch_id: str = BATCH_ID) -> BatchState:
    now = "2026-11-25T16:00:00.000000+00:00"
    return BatchState(
        batch_id=batch_id,
        name="synthetic",
        source=source,
        spec=BatchSpec(technique_id="tech", name="synthetic"),
        status=BatchStatus.PARTIAL,
        header=HEADER,
        total_count=shape.rows,
        chunk_count=shape.chunks,
        created_at=now,
        updated_at=now,
    )


@dataclass
class PartLog:
    """What a `RecordingS3` sent: each part's (or the one PutObject's) size, per key."""

    sizes: dict[str, list[int]] = field(default_factory=dict)
    completed: list[str] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)


class RecordingS3:
    """An S3 client that records the size of every part and PutObject body it passes on."""

    def __init__(self, s3: Any) -> None:
        self._s3 = s3
        self.log = PartLog()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._s3, name)

    def _record(self, key: str, body: Any) -> None:
        size = body.getbuffer().nbytes if hasattr(body, "getbuffer") else len(body)
        self.log.sizes.setdefault(key, []).append(size)

    def upload_part(self, **kwargs: Any) -> Any:
        self._record(kwargs["Key"], kwargs["Body"])
        return self._s3.upload_part(**kwargs)

    def put_object(self, **kwargs: Any) -> Any:
        self._record(kwargs["Key"], kwargs["Body"])
        return self._s3.put_object(**kwargs)

    def complete_multipart_upload(self, **kwargs: Any) -> Any:
        self.log.completed.append(kwargs["Key"])
        return self._s3.complete_multipart_upload(**kwargs)

    def abort_multipart_upload(self, **kwargs: Any) -> Any:
        self.log.aborted.append(kwargs["Key"])
        return self._s3.abort_multipart_upload(**kwargs)
