"""Saved outputs (contract section 7): each output of a completed run copied into the bucket.

A completed row of a batch with `save-outputs` on is written with `save_pending`; the recorder
then sends one `SaveMessage` per such row to the save queue and the saver (its own function, so
a large download never holds up the recording of other runs) copies every output of the row to
`outputs/{batch_id}/{row_name}/{output_id}{ext}`, streamed (one multipart part in memory, never a
file), then records the list on the row in one conditional write that also removes
`save_pending` and adds to the batch's counts. A chunk holding a row with `save_pending` does not
settle, so the batch finishes (results CSV, on-done) only once every output is saved or given up.

Exactly once: the object key follows from the row and the output alone, so a copy repeated after
a crash overwrites the same object with the same bytes; a redelivered message first looks for the
object a dead saver already wrote (its sha256 is in the object's metadata) and records that
instead of downloading again; the row's condition (`save_pending`, same attempt and run) lets one
recording win. A save message lost between the row write and its send is sent again by the
safety net, which finds rows that have been `save_pending` for `reconcile-after-s`.

Row names: the key-column value made path-safe, or `line-{line}` without a key column. Which row
keeps a name that several rows share is decided by a claim item per name (the first row to be
saved keeps it, the others append `-{line}`); a row finds its own claim again after a crash, so
its name never changes once given. No other row is read.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import re
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import httpx
from aws_lambda_powertools import Logger
from botocore.exceptions import ClientError
from pydantic import BaseModel, Field

from rowcall.csvsplit import data_records, split_lines
from rowcall.finishing import BatchFinisher, RowResult
from rowcall.identity import parse_row_id
from rowcall.ledger import Ledger
from rowcall.metadata import row_key
from rowcall.models import BatchState, ChunkPlan, RowState, RowStatus
from rowcall.outbound import ForbiddenDestination
from rowcall.source import read_source
from rowcall.streaming_upload import StreamingUpload

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient

logger = Logger(child=True)

MAX_NAME = 100
OUTPUTS_PREFIX = "outputs"
DEFAULT_MAX_OUTPUT_BYTES = 5 * 1024**3
DOWNLOAD_CHUNK = 1024 * 1024
# Tries per output within one invocation (full-jitter backoff between them); a provider still
# failing after them has the output given up with its reason, so the batch can finish.
TRIES = 4
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
# Rows of one received batch copied at once (SQS hands the saver at most ten).
ROWS_AT_ONCE = 10

EXTENSIONS = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/jpg": ".jpg",
    "image/webp": ".webp",
    "video/mp4": ".mp4",
    "audio/mpeg": ".mp3",
    "audio/mp3": ".mp3",
    "text/plain": ".txt",
    "application/json": ".json",
    "application/pdf": ".pdf",
}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def extension_for(content_type: str | None) -> str:
    """`{ext}` of contract section 7: from the content type, else none."""
    if not content_type:
        return ""
    return EXTENSIONS.get(content_type.split(";", 1)[0].strip().lower(), "")


def path_safe(key: str) -> str:
    """Characters outside A-Za-z0-9._- become `_`, at most 100 characters; a name of dots alone
    (`.`, `..`) would climb directories where the outputs are downloaded, so its dots go too."""
    name = _UNSAFE.sub("_", key)[:MAX_NAME]
    if not name.strip("."):
        name = "_" * len(name)
    return name


def base_row_name(key: str | None, line: int, *, keyed: bool) -> str:
    """The name a row asks for: its key made path-safe; `line-{line}` without a key column (or
    with an empty key, which names nothing)."""
    if not keyed or not key:
        return f"line-{line}"
    return path_safe(key)


def object_key(batch_id: str, row_name: str, output_id: str, content_type: str | None) -> str:
    return f"{output_stem(batch_id, row_name, output_id)}{extension_for(content_type)}"


def output_stem(batch_id: str, row_name: str, output_id: str) -> str:
    """An output's key without its extension (which the content type decides)."""
    return f"{OUTPUTS_PREFIX}/{batch_id}/{row_name}/{path_safe(output_id) or 'output'}"


class SaveMessage(BaseModel):
    """One completed row whose outputs are to be saved (the save queue's message)."""

    batch_id: str
    chunk: int = Field(ge=0)
    record: int = Field(ge=1)
    attempt: int = Field(ge=1)
    run_id: str
    """Empty for a reused row (it has no run): its copies were made inside the bucket before the
    row was written, so a resent message finds them there."""
    resent: bool = False
    """Sent again by the safety net: a copy may exist already (look before downloading)."""


class SaveQueue:
    def __init__(self, sqs: SQSClient, url: str) -> None:
        self._sqs = sqs
        self._url = url

    def backlog(self) -> int:
        """Messages waiting to be received (SQS's approximate count)."""
        got = self._sqs.get_queue_attributes(
            QueueUrl=self._url, AttributeNames=["ApproximateNumberOfMessages"]
        )
        return int(got.get("Attributes", {}).get("ApproximateNumberOfMessages", "0"))

    def send(self, messages: Sequence[SaveMessage]) -> None:
        for start in range(0, len(messages), 10):  # SQS's batch limit
            entries = [
                {"Id": str(n), "MessageBody": m.model_dump_json()}
                for n, m in enumerate(messages[start : start + 10])
            ]
            got = self._sqs.send_message_batch(QueueUrl=self._url, Entries=entries)  # type: ignore[arg-type]
            if got.get("Failed"):
                raise RuntimeError(f"save messages not sent: {got['Failed']}")


class GiveUp(Exception):
    """This output cannot be copied, now or later: recorded as `{"output_id", "error"}`."""


class TryAgain(Exception):
    """A failure that may pass (429, 5xx, a connection or body cut off)."""


@dataclass
class SaveReport:
    failed: set[str] = field(default_factory=set)
    saved: int = 0
    given_up: int = 0
    skipped: int = 0


def _sleep_backoff(attempt: int) -> None:
    time.sleep(random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt)))


class OutputSaver:
    """`http` fetches URLs a provider named: build it with `rowcall.outbound.webhook_client`
    (checked addresses only, redirects never followed)."""

    def __init__(
        self,
        *,
        s3: S3Client,
        bucket: str,
        ledger: Ledger,
        finisher: BatchFinisher,
        http: httpx.Client,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        tries: int = TRIES,
        sleep: Callable[[int], None] = _sleep_backoff,
    ) -> None:
        self._s3 = s3
        self._bucket = bucket
        self._ledger = ledger
        self._finisher = finisher
        self._http = http
        self._max_bytes = max_output_bytes
        self._tries = tries
        self._sleep = sleep
        self._plans: dict[str, dict[int, ChunkPlan]] = {}

    def save(self, messages: Sequence[tuple[str, SaveMessage, bool]]) -> SaveReport:
        """(message id, message, redelivered) each; a message that could not be finished is
        named in `failed` (SQS brings it back). The rows of one chunk are saved together (their
        names from one read of the chunk), then the chunk is looked at once."""
        report = SaveReport()
        groups: dict[tuple[str, int], list[tuple[str, SaveMessage, bool]]] = defaultdict(list)
        for entry in messages:
            groups[(entry[1].batch_id, entry[1].chunk)].append(entry)
        for (batch_id, chunk), group in groups.items():
            try:
                self._save_group(batch_id, chunk, group, report)
            except Exception:
                logger.exception(
                    "outputs not saved, retried later", extra={"batch_id": batch_id, "chunk": chunk}
                )
                report.failed.update(message_id for message_id, _, _ in group)
            try:
                self._finisher.after_saves(batch_id, chunk)
            except Exception:
                # The safety net recounts a chunk whose rows are all finished at its next sweep.
                logger.exception(
                    "chunk not settled after saves", extra={"batch_id": batch_id, "chunk": chunk}
                )
        return report

    def _save_group(
        self, batch_id: str, chunk: int, group: Sequence[tuple[str, SaveMessage, bool]], report: SaveReport
    ) -> None:
        rows = {m.record: self._ledger.rows.get(batch_id, chunk, m.record) for _, m, _ in group}
        waiting = [(i, m, again or m.resent) for i, m, again in group if _awaits_save(rows[m.record], m)]
        report.skipped += len(group) - len(waiting)  # saved already, or the row moved on (a reprocess)
        if not waiting:
            return
        batch = self._ledger.batches.get(batch_id)
        if batch is None:
            report.skipped += len(waiting)
            return
        names = self.row_names(batch, chunk, {m.record for _, m, _ in waiting})
        with ThreadPoolExecutor(min(len(waiting), ROWS_AT_ONCE), thread_name_prefix="saver") as pool:
            futures = [
                (message_id, pool.submit(self._save_row, batch, rows[m.record], m, names[m.record], again))
                for message_id, m, again in waiting
            ]
            for message_id, future in futures:
                try:
                    outcome = future.result()
                except Exception:
                    logger.exception("outputs not saved, retried later", extra={"batch_id": batch_id})
                    report.failed.add(message_id)
                    continue
                if outcome is not None:
                    report.saved += outcome[0]
                    report.given_up += outcome[1]

    def _save_row(
        self, batch: BatchState, row: RowState | None, message: SaveMessage, name: str, redelivered: bool
    ) -> tuple[int, int] | None:
        """Copies the row's outputs and records them: (saved, given up), None when another
        saver recorded the row first."""
        assert row is not None
        saved = [self.save_output(batch.batch_id, name, output, redelivered) for output in row.outputs]
        ok = sum("key" in entry for entry in saved)
        recorded = self._ledger.rows.record_saved(
            message.batch_id,
            message.chunk,
            message.record,
            saved,
            attempt=message.attempt,
            run_id=message.run_id,
            saved_count=ok,
            failed_count=len(saved) - ok,
        )
        return (ok, len(saved) - ok) if recorded else None

    # -- row names -------------------------------------------------------------------------

    def row_names(self, batch: BatchState, chunk: int, records: set[int]) -> dict[int, str]:
        """Each record's directory name, claimed where a key could be shared."""
        return claim_row_names(self._ledger, batch, chunk, self._lines_and_keys(batch, chunk, records))

    def _lines_and_keys(
        self, batch: BatchState, chunk: int, records: set[int]
    ) -> dict[int, tuple[int, str | None]]:
        """The records' lines and keys, from one ranged GET of their chunk read as far as the
        last of them."""
        plan = self._plan(batch.batch_id).get(chunk)
        if plan is None or batch.header is None:
            raise RuntimeError(f"chunk {chunk} of {batch.batch_id} is not planned")
        found: dict[int, tuple[int, str | None]] = {}
        with contextlib.closing(read_source(self._s3, batch.source, start=plan.start, end=plan.end)) as body:
            for record in data_records(
                split_lines(body),
                width=len(batch.header),
                offset=plan.start,
                line=plan.first_line,
                first_number=plan.first_record,
            ):
                if record.number in records:
                    key = row_key(batch.header, record.fields or [], batch.spec, record.number)
                    found[record.number] = (record.line, key)
                    if len(found) == len(records):
                        return found
        raise RuntimeError(
            f"records {sorted(records - found.keys())} not in chunk {chunk} of {batch.batch_id}"
        )

    def _plan(self, batch_id: str) -> dict[int, ChunkPlan]:
        if batch_id not in self._plans:
            if len(self._plans) > 256:
                self._plans.clear()
            self._plans[batch_id] = {c.index: c for c in self._ledger.batches.chunk_plan(batch_id)}
        return self._plans[batch_id]

    # -- one output ------------------------------------------------------------------------

    def save_output(
        self, batch_id: str, row_name: str, output: dict[str, Any], redelivered: bool
    ) -> dict[str, Any]:
        output_id = str(output.get("output_id") or "output")
        base = {"output_id": output_id}
        url = output.get("url")
        if output.get("type") == "text" and isinstance(output.get("value"), str) and not url:
            # A provider's text answer (Replicate's `output` that is no URL) comes with the run
            # itself: it is stored as it is, nothing to download.
            return base | {"type": "text"} | self._store_text(batch_id, row_name, output_id, output["value"])
        if not isinstance(url, str) or not url:
            return base | {"error": "the output has no url"}
        if redelivered:
            found = self._already_saved(batch_id, row_name, output_id)
            if found is not None:
                return base | {"type": output.get("type")} | found
        problem = "not tried"
        for attempt in range(self._tries):
            try:
                return base | {"type": output.get("type")} | self._copy(batch_id, row_name, output_id, url)
            except GiveUp as exc:
                return base | {"error": str(exc)}
            except TryAgain as exc:
                problem = str(exc)
                if attempt + 1 < self._tries:
                    self._sleep(attempt)
        return base | {"error": f"gave up after {self._tries} tries: {problem}"}

    def _copy(self, batch_id: str, row_name: str, output_id: str, url: str) -> dict[str, Any]:
        try:
            with self._http.stream("GET", url) as response:
                status = response.status_code
                if 300 <= status < 400:
                    raise GiveUp(f"the output URL redirects (HTTP {status}); redirects are not followed")
                if status in (404, 410):
                    raise GiveUp(f"the output is gone (HTTP {status})")
                if status == 429 or status >= 500:
                    raise TryAgain(f"HTTP {status}")
                if status != 200:
                    raise GiveUp(f"the output URL answered HTTP {status}")
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
                    raise GiveUp(f"the output is {declared} bytes, over MaxOutputBytes ({self._max_bytes})")
                content_type = response.headers.get("content-type") or "application/octet-stream"
                key = object_key(batch_id, row_name, output_id, content_type)
                digest = hashlib.sha256()
                size = 0
                # Create-only: two savers of one output (a duplicate message, a retry of a write
                # whose answer was lost) store it once; the second finds the first's copy.
                with StreamingUpload(
                    self._s3, self._bucket, key, content_type=content_type, create_only=True
                ) as upload:
                    for piece in response.iter_bytes(DOWNLOAD_CHUNK):
                        size += len(piece)
                        if size > self._max_bytes:
                            raise GiveUp(f"the output is over MaxOutputBytes ({self._max_bytes} bytes)")
                        digest.update(piece)
                        upload.write_bytes(piece)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "PreconditionFailed":
                found = self._already_saved(batch_id, row_name, output_id)
                if found is not None:
                    return found
                raise TryAgain("the output's key is taken by an object of another type") from exc
            if code == "ConditionalRequestConflict":  # another writer of this key at that moment
                raise TryAgain("S3 answered 409 ConditionalRequestConflict") from exc
            raise
        except ForbiddenDestination as exc:
            raise GiveUp(f"the output URL is refused: {exc}") from exc
        except httpx.HTTPError as exc:
            raise TryAgain(f"{type(exc).__name__}: {exc}") from exc
        return {"key": key, "content_type": content_type, "bytes": size, "sha256": digest.hexdigest()}

    def _store_text(self, batch_id: str, row_name: str, output_id: str, text: str) -> dict[str, Any]:
        """A text output as `{output_id}.txt`, create-only like every copy (a second saver finds
        the first's object)."""
        data = text.encode("utf-8")
        if len(data) > self._max_bytes:
            return {"error": f"the output is over MaxOutputBytes ({self._max_bytes} bytes)"}
        content_type = "text/plain"
        key = object_key(batch_id, row_name, output_id, content_type)
        try:
            with StreamingUpload(
                self._s3, self._bucket, key, content_type=content_type, create_only=True
            ) as upload:
                upload.write_bytes(data)
        except ClientError as exc:
            found = self._already_saved(batch_id, row_name, output_id)
            if exc.response.get("Error", {}).get("Code", "") == "PreconditionFailed" and found is not None:
                return found
            return {"error": f"the text output was not stored: {exc}"}
        return {
            "key": key,
            "content_type": content_type,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }

    def _already_saved(self, batch_id: str, row_name: str, output_id: str) -> dict[str, Any] | None:
        """The copy a saver that died before recording it finished, if any. An object exists
        only once its upload completed, so one found at the output's key is a whole copy; it is
        hashed from the bucket, not fetched from the provider again."""
        stem = output_stem(batch_id, row_name, output_id)
        listed = self._s3.list_objects_v2(Bucket=self._bucket, Prefix=stem, MaxKeys=20)
        for entry in listed.get("Contents", []):
            key = entry["Key"]
            if key != stem and not (key.startswith(stem + ".") and "/" not in key[len(stem) :]):
                continue
            got = self._s3.get_object(Bucket=self._bucket, Key=key)
            content_type = got.get("ContentType", "application/octet-stream")
            if key != object_key(batch_id, row_name, output_id, content_type):
                got["Body"].close()
                continue
            digest = hashlib.sha256()
            size = 0
            with contextlib.closing(got["Body"]) as body:
                for piece in body.iter_chunks(DOWNLOAD_CHUNK):
                    digest.update(piece)
                    size += len(piece)
            return {"key": key, "content_type": content_type, "bytes": size, "sha256": digest.hexdigest()}
        return None


def claim_row_names(
    ledger: Ledger, batch: BatchState, chunk: int, lines_and_keys: dict[int, tuple[int, str | None]]
) -> dict[int, str]:
    """Each record's directory name (record: its line and key), claimed where a key could be
    shared: the first row to claim a name keeps it, the others append `-{line}`."""
    names: dict[int, str] = {}
    keyed = batch.spec.key_column is not None
    for record, (line, key) in lines_and_keys.items():
        base = base_row_name(key, line, keyed=keyed)
        if not keyed or not key:
            names[record] = base  # line numbers are unique in a batch: nothing to claim
            continue
        for candidate in (base, f"{base}-{line}", f"{base}-{line}-{chunk}-{record}"):
            if ledger.rows.claim_name(batch.batch_id, candidate, chunk=chunk, record=record):
                names[record] = candidate
                break
        else:
            raise RuntimeError(f"no free row name for record {record} of {batch.batch_id}")
    return names


def _awaits_save(row: RowState | None, message: SaveMessage) -> bool:
    return (
        row is not None
        and row.status is RowStatus.COMPLETED
        and row.save_pending
        and row.attempt == message.attempt
        and (row.run_id or "") == message.run_id
    )


def copy_saved_outputs(
    s3: S3Client, bucket: str, saved: Sequence[dict[str, Any]], *, batch_id: str, row_name: str
) -> list[dict[str, Any]] | None:
    """For a reused row: the earlier row's saved objects copied inside S3 to this row's names
    (CopyObject, no provider request), as the `saved_outputs` to record on it; None when one of
    them is gone (deleted meanwhile) or was never saved, so the row runs normally instead.
    Objects over 5 GiB would need a multipart copy; MaxOutputBytes keeps them at 5 GiB.

    Create-only, as the saver's writes: a copy repeated after a crash finds the first (the name
    is this row's alone, claimed for it) instead of storing a second version."""
    if not saved:
        return None
    copied: list[dict[str, Any]] = []
    for entry in saved:
        source = entry.get("key")
        if not source:
            return None
        target = object_key(batch_id, row_name, str(entry["output_id"]), entry.get("content_type"))
        try:
            s3.copy_object(
                Bucket=bucket, Key=target, CopySource={"Bucket": bucket, "Key": source}, IfNoneMatch="*"
            )
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in ("NoSuchKey", "404", "NotFound"):
                return None
            # S3 answers a missing source 404 only to a caller that may list the bucket (the
            # worker may list outputs/ alone, under an s3:prefix condition a read cannot meet):
            # a 403 whose source is not listed is a source deleted meanwhile, not a refusal.
            if code in ("AccessDenied", "403") and not _listed(s3, bucket, source):
                return None
            if code != "PreconditionFailed":
                raise
        copied.append({**entry, "key": target})
    return copied


def _listed(s3: S3Client, bucket: str, key: str) -> bool:
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
    return any(entry["Key"] == key for entry in listed.get("Contents", []))


class ReusedOutputs:
    """A reused row's outputs in a batch that saves them: the earlier row's saved objects copied
    inside the bucket to this row's names before the row is written (no provider request); a row
    whose earlier copies are gone (deleted meanwhile, given up, or never saved because that batch
    did not save outputs) runs after all, which is decided here, by the copy itself (a CopyObject
    of a missing source fails): no object is looked at twice.

    The row is then written `save_pending` like any completed row of a saving batch (its chunk
    counts it as saving) and its copies recorded at once as a saver would (`record`), so the
    chunk settles and the batch finishes only with them, and the batch's counts go the one way
    every save goes. A worker that dies between the two leaves the row to the safety net, whose
    resent save finds the copies in the bucket."""

    def __init__(self, s3: S3Client, ledger: Ledger) -> None:
        self._s3 = s3
        self._ledger = ledger

    def copy(
        self, batch: BatchState, chunk: int, reused: Sequence[RowResult]
    ) -> tuple[list[RowResult], set[int]]:
        """The reused rows to write (with their copies), and the records that must run instead.
        The bucket is the one the batch's CSV was uploaded to, where its outputs go."""
        if not batch.spec.save_outputs:
            return list(reused), set()
        keep = [r for r in reused if not r.outcome.outputs]  # nothing to save
        copying = [r for r in reused if r.outcome.outputs]
        if not copying:
            return keep, set()
        sources = {r.record: _source_row(r) for r in copying}
        found = self._ledger.rows.saved_of([s for s in sources.values() if s is not None])
        names = claim_row_names(
            self._ledger, batch, chunk, {r.record: (r.line or r.record, r.key) for r in copying}
        )

        def copies_of(result: RowResult) -> list[dict[str, Any]] | None:
            where = sources[result.record]
            earlier = found.get(where) if where is not None else None
            if earlier is None or not _saved_from(earlier, result):
                return None
            return copy_saved_outputs(
                self._s3,
                batch.source.bucket,
                earlier.saved_outputs,
                batch_id=batch.batch_id,
                row_name=names[result.record],
            )

        # A chunk's rows copied ROWS_AT_ONCE at a time: a thousand reused rows take seconds,
        # well inside the chunk's lease, not a thousand copies' time one after another.
        with ThreadPoolExecutor(min(len(copying), ROWS_AT_ONCE), thread_name_prefix="copy") as pool:
            copied = list(pool.map(copies_of, copying))
        run_instead: set[int] = set()
        for result, copies in zip(copying, copied, strict=True):
            if copies is None:
                run_instead.add(result.record)
            else:
                keep.append(replace(result, save=True, saved=copies))
        return keep, run_instead

    def record(self, batch_id: str, chunk: int, moved: Sequence[RowResult], finisher: BatchFinisher) -> int:
        """The copies of the reused rows whose write won, recorded as saved; how many outputs."""

        def recorded(result: RowResult) -> int:
            saved = result.saved or []
            won = self._ledger.rows.record_saved(
                batch_id,
                chunk,
                result.record,
                saved,
                attempt=result.attempt,
                run_id="",
                saved_count=len(saved),
                failed_count=0,
            )
            return len(saved) if won else 0

        copied = [result for result in moved if result.saved is not None]
        if not copied:
            return 0
        with ThreadPoolExecutor(min(len(copied), ROWS_AT_ONCE), thread_name_prefix="copied") as pool:
            outputs = sum(pool.map(recorded, copied))
        finisher.after_saves(batch_id, chunk)
        return outputs


def _source_row(result: RowResult) -> tuple[str, int, int] | None:
    """(batch id, chunk, record) of the row a reused row was completed from."""
    origin = result.outcome.reused_from or {}
    where = parse_row_id(origin.get("row_id", ""))
    if not origin.get("batch_id") or where is None:
        return None
    return origin["batch_id"], where[0], where[1]


def _saved_from(earlier: RowState, result: RowResult) -> bool:
    """The earlier row still holds what was reused (the same run, not reprocessed since) and has
    a saved copy of every output (none given up, none still being saved)."""
    origin = result.outcome.reused_from or {}
    return (
        earlier.status is RowStatus.COMPLETED
        and not earlier.save_pending
        and (earlier.run_id or "") == origin.get("run_id", "")
        and len(earlier.saved_outputs) == len(result.outcome.outputs)
        and all(entry.get("key") for entry in earlier.saved_outputs)
    )
