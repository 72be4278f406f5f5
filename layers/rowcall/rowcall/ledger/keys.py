"""Where each of the ledger's items lives (docs/architecture.md has the table)."""

from __future__ import annotations

LIST_PARTITION = "BATCHES"
# The sparse index of work that is waiting (open chunks, batches still ingesting or notifying):
# what the safety net reads, never a scan that grows with history.
OPEN_PARTITION = "OPEN"
OPEN_INDEX = "open"
LIST_INDEX = "gsi1"


def batch_pk(batch_id: str) -> str:
    return f"BATCH#{batch_id}"


def batch_key(batch_id: str) -> dict[str, str]:
    return {"pk": batch_pk(batch_id), "sk": "META"}


def chunk_sk(chunk: int) -> str:
    return f"CHUNK#{chunk:06d}"


def chunk_key(batch_id: str, chunk: int) -> dict[str, str]:
    return {"pk": batch_pk(batch_id), "sk": chunk_sk(chunk)}


def rows_pk(batch_id: str, chunk: int) -> str:
    return f"BATCH#{batch_id}#CHUNK#{chunk:06d}"


def row_sk(record: int) -> str:
    return f"ROW#{record:09d}"


def row_key(batch_id: str, chunk: int, record: int) -> dict[str, str]:
    return {"pk": rows_pk(batch_id, chunk), "sk": row_sk(record)}


def errors_pk(batch_id: str) -> str:
    return f"BATCH#{batch_id}#ERRORS"


def open_chunk_sk(batch_id: str, chunk: int) -> str:
    return f"CHUNK#{batch_id}#{chunk:06d}"


def open_batch_sk(batch_id: str) -> str:
    return f"BATCH#{batch_id}"
