"""Saved outputs (contract section 7): names, the emulator's media, the saver and the finish."""

from __future__ import annotations

import hashlib
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from rowcall.callbacks import CallbackIntake
from rowcall.identity import content_key_in
from rowcall.models import BatchStatus, DoneMessage, FinishedRun, RowStatus, RunWebhook
from rowcall.outbound import DestinationPolicy, webhook_client
from rowcall.outcomes import OutcomeRecorder
from rowcall.provider import ProviderConnection
from rowcall.reuse import RowReuse
from rowcall.saved_outputs import (
    OutputSaver,
    ReusedOutputs,
    SaveMessage,
    SaveQueue,
    base_row_name,
    copy_saved_outputs,
    extension_for,
    path_safe,
)
from rowcall_local.emulated_media import Media
from rowcall_local.provider_emulator import ProviderEmulator
from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

from .conftest import LOOPBACK_ALLOWED, Aws, chunk_messages, ingest
from .loopback_runs import (
    API_KEY,
    CALLBACK_SECRET,
    FAST_RETRY,
    PROVIDER_SECRET,
    start_provider,
    starter,
)

NO_WAIT = 0.0


# -- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("thumb_DE.png", "thumb_DE.png"),
        ("a/b c?d", "a_b_c_d"),
        ("////", "____"),
        ("..", "__"),
        (".", "_"),
        ("ünïcode", "_n_code"),
    ],
)
def test_a_key_becomes_a_path_safe_name(key: str, expected: str) -> None:
    assert path_safe(key) == expected


def test_a_long_key_is_cut_to_100_characters_and_no_key_names_the_line() -> None:
    assert path_safe("x" * 10_000) == "x" * 100
    assert base_row_name(None, 7, keyed=False) == "line-7"
    assert base_row_name("", 7, keyed=True) == "line-7"  # an empty key names nothing


@pytest.mark.parametrize(
    ("content_type", "ext"),
    [
        ("image/png", ".png"),
        ("image/jpeg", ".jpg"),
        ("image/webp", ".webp"),
        ("video/mp4", ".mp4"),
        ("audio/mpeg", ".mp3"),
        ("text/plain; charset=utf-8", ".txt"),
        ("application/json", ".json"),
        ("application/pdf", ".pdf"),
        ("application/octet-stream", ""),
        (None, ""),
    ],
)
def test_the_extension_follows_the_content_type(content_type: str | None, ext: str) -> None:
    assert extension_for(content_type) == ext


# -- the emulator's media ------------------------------------------------------------------------


def _png_chunks(data: bytes) -> list[bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    kinds, at = [], 8
    while at < len(data):
        (length,) = struct.unpack(">I", data[at : at + 4])
        kind, body = data[at + 4 : at + 8], data[at + 8 : at + 8 + length]
        (crc,) = struct.unpack(">I", data[at + 8 + length : at + 12 + length])
        assert crc == zlib.crc32(kind + body), f"bad CRC in {kind!r}"
        kinds.append(kind)
        at += 12 + length
    assert at == len(data)
    return kinds


@pytest.mark.parametrize("size", [0, 100, 16384, 70_000])
def test_an_image_output_is_a_valid_png_of_the_size_asked(size: int) -> None:
    media = Media("run_1/output_0", "imageUrl", size)
    data = b"".join(media.chunks())
    assert len(data) == media.length == max(size, media.length)
    if size >= 100:
        assert len(data) == size
    kinds = _png_chunks(data)
    assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds


@pytest.mark.parametrize(
    ("output_type", "magic"),
    [("videoUrl", b"ftyp"), ("audioUrl", b"ID3"), ("documentUrl", b"%PDF"), ("text", b"rowcall")],
)
def test_other_outputs_carry_their_formats_signature(output_type: str, magic: bytes) -> None:
    data = b"".join(Media("r/o", output_type, 4096).chunks())
    assert len(data) == 4096 and magic in data[:12]


def test_the_emulator_serves_each_output_the_same_every_time_and_404s_after_its_ttl() -> None:
    provider = start_provider(output_bytes=2048, output_ttl_s=4.0)
    try:
        created = httpx.post(
            f"{provider.url}/techniques/t/runs",
            json={"inputs": [], "mode": "async", "idempotency_key": "k1"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ).json()
        run_id = created["run_id"]
        run = _wait_completed(provider, run_id)
        url = run["outputs"][0]["url"]
        assert url.startswith(f"{provider.url}/_media/")
        first, second = httpx.get(url), httpx.get(url)
        assert first.status_code == second.status_code == 200
        assert first.content == second.content and len(first.content) == 2048
        assert first.headers["content-type"] == "image/png"
        assert (
            hashlib.sha256(first.content).hexdigest()
            == Media(f"{run_id}/output_0", "imageUrl", 2048).digest()
        )
        assert httpx.get(url.replace(run_id, "run_nope")).status_code == 404
        _eventually(lambda: httpx.get(url).status_code == 404, 15.0)
        assert provider.stats()["media_gets"] >= 4
    finally:
        provider.stop()


def _wait_completed(provider: ProviderEmulator, run_id: str) -> dict[str, Any]:
    got: dict[str, Any] = {}

    def done() -> bool:
        got.update(
            httpx.get(
                f"{provider.url}/techniques/t/runs/{run_id}", headers={"Authorization": f"Bearer {API_KEY}"}
            ).json()
        )
        return got.get("status") == "completed"

    _eventually(done, 5.0)
    return got


def _eventually(condition: Any, timeout_s: float) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


# -- the saver over the pipeline -----------------------------------------------------------------


@pytest.fixture
def save_queue_url(aws: Aws) -> str:
    return str(aws.sqs.create_queue(QueueName="saves")["QueueUrl"])


def _saver(aws: Aws, **kw: Any) -> OutputSaver:
    return OutputSaver(
        s3=aws.s3,
        bucket=aws.bucket,
        ledger=aws.ledger,
        finisher=aws.finisher,
        http=webhook_client(kw.pop("policy", LOOPBACK_ALLOWED)),
        sleep=lambda attempt: None,
        **kw,
    )


def _run_and_record(
    aws: Aws,
    provider: ProviderEmulator,
    callbacks: Receiver,
    save_queue_url: str,
    body: bytes,
    rows: int,
    **meta: str,
) -> str:
    batch_id = ingest(aws, body, **meta)
    for message in chunk_messages(aws):
        starter(aws, provider, callbacks).start_chunk(message, lambda: 300.0)
    received = callbacks.wait_for(lambda got: len(got) == rows)
    intake = CallbackIntake(
        finished_runs=aws.finished_runs,
        callback_secrets=lambda: [CALLBACK_SECRET],
        provider_signing_secrets=lambda: [PROVIDER_SECRET],
    )
    for call in received:
        parts = urlsplit(call.path)
        _, _, b, row_id = parts.path.split("/")
        attempt = intake.attempt_of(b, row_id, parse_qs(parts.query)["token"][0])
        assert attempt is not None
        intake.accept(b, row_id, attempt, RunWebhook.model_validate_json(call.body))
    recorder = OutcomeRecorder(
        ledger=aws.ledger,
        finisher=aws.finisher,
        provider=ProviderConnection(base_url=provider.url, api_key=API_KEY, retry=FAST_RETRY),
        save_queue=SaveQueue(aws.sqs, save_queue_url),
    )
    messages = [FinishedRun.model_validate_json(b) for b in aws.drain(aws.finished_run_queue_url)]
    assert not recorder.record([(str(n), m) for n, m in enumerate(messages)]).failed
    return batch_id


def _saves(aws: Aws, url: str, redelivered: bool = False) -> list[tuple[str, SaveMessage, bool]]:
    return [(str(n), SaveMessage.model_validate_json(b), redelivered) for n, b in enumerate(aws.drain(url))]


def _objects(aws: Aws, batch_id: str) -> dict[str, bytes]:
    listed = aws.s3.list_objects_v2(Bucket=aws.bucket, Prefix=f"outputs/{batch_id}/").get("Contents", [])
    return {o["Key"]: aws.s3.get_object(Bucket=aws.bucket, Key=o["Key"])["Body"].read() for o in listed}


def _rows(aws: Aws, batch_id: str) -> list[Any]:
    return [
        row
        for chunk in aws.ledger.chunks.counters(batch_id)
        for row in aws.ledger.rows.rows_of_chunk(batch_id, chunk.index)
    ]


SHARED_KEYS = b"sku,prompt\na/b,one\na?b,two\n..,three\n" + b"x" * 300 + b",four\n"


def test_every_output_is_saved_with_the_providers_bytes_before_the_batch_finishes(
    aws: Aws, callbacks: Receiver, save_queue_url: str
) -> None:
    provider = start_provider(output_bytes=5000)
    try:
        batch_id = _run_and_record(
            aws, provider, callbacks, save_queue_url, SHARED_KEYS, 4, **{"key-column": "sku"}
        )
        # Every row is completed, but the batch waits for its outputs.
        batch = aws.ledger.batches.get(batch_id)
        assert batch is not None and batch.status is BatchStatus.RUNNING
        assert aws.drain(aws.done_queue_url) == []
        report = _saver(aws).save(_saves(aws, save_queue_url))
        assert (report.failed, report.saved, report.given_up) == (set(), 4, 0)
        batch = aws.ledger.batches.get(batch_id)
        assert batch is not None and batch.status is BatchStatus.COMPLETED
        assert {DoneMessage.model_validate_json(b).finish_seq for b in aws.drain(aws.done_queue_url)} == {1}
        stored = _objects(aws, batch_id)
        names = sorted(key.split("/")[2] for key in stored)
        # "a/b" and "a?b" both ask for a_b: the first saved keeps it, the other gets its line.
        assert names[:2] in (["__", "a_b"], ["__", "a_b"]) and "x" * 100 in names
        assert len(set(names)) == 4 and sum(n.startswith("a_b") for n in names) == 2
        assert any(n in ("a_b-2", "a_b-3") for n in names)
        rows = _rows(aws, batch_id)
        for row in rows:
            (saved,) = row.saved_outputs
            assert not row.save_pending
            expected = Media(f"{row.run_id}/output_0", "imageUrl", 5000)
            assert saved["sha256"] == expected.digest() == hashlib.sha256(stored[saved["key"]]).hexdigest()
            assert (saved["bytes"], saved["content_type"], saved["output_id"]) == (
                5000,
                "image/png",
                "output_0",
            )
            head = aws.s3.head_object(Bucket=aws.bucket, Key=saved["key"])
            assert head["ContentType"] == "image/png"
        item = aws.ledger.batches.get(batch_id)
        raw = aws.dynamodb.get_item(
            TableName=aws.table, Key={"pk": {"S": f"BATCH#{batch_id}"}, "sk": {"S": "META"}}
        )
        assert raw["Item"]["outputs_saved_count"]["N"] == "4" and item is not None
        # A save message delivered again saves, counts and downloads nothing more.
        gets = provider.stats()["media_gets"]
        again = [
            (
                str(n),
                SaveMessage(
                    batch_id=batch_id, chunk=r.chunk, record=r.record, attempt=r.attempt, run_id=r.run_id
                ),
                True,
            )
            for n, r in enumerate(rows)
        ]
        assert _saver(aws).save(again).skipped == 4
        assert provider.stats()["media_gets"] == gets
        raw = aws.dynamodb.get_item(
            TableName=aws.table, Key={"pk": {"S": f"BATCH#{batch_id}"}, "sk": {"S": "META"}}
        )
        assert raw["Item"]["outputs_saved_count"]["N"] == "4"
        assert aws.drain(aws.done_queue_url) == []
    finally:
        provider.stop()


def test_a_saver_that_died_after_its_copy_records_that_copy_on_redelivery(
    aws: Aws, callbacks: Receiver, save_queue_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    provider = start_provider(output_bytes=3000)
    try:
        batch_id = _run_and_record(aws, provider, callbacks, save_queue_url, b"p\none\n", 1)
        messages = _saves(aws, save_queue_url)
        crashing = _saver(aws)

        def die(*args: Any, **kwargs: Any) -> bool:
            raise RuntimeError("killed between the copy and its recording")

        monkeypatch.setattr(aws.ledger.rows.__class__, "record_saved", die)
        assert crashing.save(messages).failed == {"0"}
        monkeypatch.undo()
        assert len(_objects(aws, batch_id)) == 1
        gets = provider.stats()["media_gets"]
        report = _saver(aws).save([(i, m, True) for i, m, _ in messages])
        assert (report.failed, report.saved) == (set(), 1)
        assert provider.stats()["media_gets"] == gets  # hashed from the bucket, not fetched again
        (row,) = _rows(aws, batch_id)
        (saved,) = row.saved_outputs
        assert saved["key"] == f"outputs/{batch_id}/line-2/output_0.png"
        assert saved["sha256"] == Media(f"{row.run_id}/output_0", "imageUrl", 3000).digest()
        batch = aws.ledger.batches.get(batch_id)
        assert batch is not None and batch.status is BatchStatus.COMPLETED
    finally:
        provider.stop()


def test_an_output_gone_from_the_provider_is_given_up_and_the_row_stays_completed(
    aws: Aws, callbacks: Receiver, save_queue_url: str
) -> None:
    provider = start_provider(output_bytes=100, output_ttl_s=0.2)
    try:
        batch_id = _run_and_record(aws, provider, callbacks, save_queue_url, b"p\none\ntwo\n", 2)
        _eventually(
            lambda: all(httpx.get(str(r.outputs[0]["url"])).status_code == 404 for r in _rows(aws, batch_id)),
            5,
        )
        report = _saver(aws).save(_saves(aws, save_queue_url))
        assert (report.saved, report.given_up) == (0, 2)
        for row in _rows(aws, batch_id):
            assert row.status is RowStatus.COMPLETED
            assert row.saved_outputs == [{"output_id": "output_0", "error": "the output is gone (HTTP 404)"}]
        batch = aws.ledger.batches.get(batch_id)
        assert batch is not None and batch.status is BatchStatus.COMPLETED
        assert _objects(aws, batch_id) == {}
    finally:
        provider.stop()


def test_the_saver_refuses_loopback_where_loopback_is_not_allowed(
    aws: Aws, callbacks: Receiver, save_queue_url: str
) -> None:
    provider = start_provider(output_bytes=100)
    try:
        batch_id = _run_and_record(aws, provider, callbacks, save_queue_url, b"p\none\n", 1)
        report = _saver(aws, policy=DestinationPolicy()).save(_saves(aws, save_queue_url))
        assert report.given_up == 1
        (row,) = _rows(aws, batch_id)
        (entry,) = row.saved_outputs
        assert entry["output_id"] == "output_0" and "must be https" in entry["error"]
    finally:
        provider.stop()


# -- bad answers from an output URL --------------------------------------------------------------


class _Media(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://169.254.169.254/")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/cut":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", "3000")
            self.end_headers()
            self.wfile.write(b"x" * 1000)
            self.wfile.flush()
            self.close_connection = True
        elif self.path == "/big":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Content-Length", "5000")
            self.end_headers()
            self.wfile.write(b"v" * 5000)
        elif self.path == "/chunked-big":
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(5):
                self.wfile.write(b"3E8\r\n" + b"v" * 1000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/flaky":
            _Media.flaky += 1
            if _Media.flaky < 3:
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    flaky = 0

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def media_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Media)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Media.flaky = 0
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("/redirect", "redirects (HTTP 302)"),
        ("/cut", "gave up after 2 tries: RemoteProtocolError"),
        ("/big", "over MaxOutputBytes (4096)"),
        ("/chunked-big", "over MaxOutputBytes (4096 bytes)"),
        ("/gone", "gone (HTTP 404)"),
    ],
)
def test_each_bad_answer_gives_the_output_up_with_its_reason(
    aws: Aws, media_server: str, path: str, error: str
) -> None:
    saver = _saver(aws, max_output_bytes=4096, tries=2)
    entry = saver.save_output(
        "b_x", "row", {"output_id": "o", "type": "imageUrl", "url": media_server + path}, False
    )
    assert entry["output_id"] == "o" and error in entry["error"]
    assert aws.s3.list_objects_v2(Bucket=aws.bucket, Prefix="outputs/").get("KeyCount", 0) == 0
    assert not aws.s3.list_multipart_uploads(Bucket=aws.bucket).get("Uploads")


def test_a_provider_error_is_retried_then_the_copy_succeeds(aws: Aws, media_server: str) -> None:
    entry = _saver(aws).save_output("b_x", "row", {"output_id": "o", "url": media_server + "/flaky"}, False)
    assert entry["key"] == "outputs/b_x/row/o.json" and entry["bytes"] == 2
    assert entry["content_type"] == "application/json"


def test_a_large_output_goes_up_in_parts_with_its_bytes_unchanged(aws: Aws, media_server: str) -> None:
    provider = start_provider(output_bytes=12 * 1024 * 1024)
    try:
        created = httpx.post(
            f"{provider.url}/techniques/t/runs",
            json={"inputs": [], "mode": "async", "idempotency_key": "big"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ).json()
        run = _wait_completed(provider, created["run_id"])
        entry = _saver(aws).save_output("b_x", "row", run["outputs"][0], False)
        expected = Media(f"{created['run_id']}/output_0", "imageUrl", 12 * 1024 * 1024)
        assert entry["sha256"] == expected.digest() and entry["bytes"] == 12 * 1024 * 1024
        head = aws.s3.head_object(Bucket=aws.bucket, Key=entry["key"])
        assert head["ContentLength"] == 12 * 1024 * 1024 and "-" in head["ETag"]  # multipart
    finally:
        provider.stop()


def test_a_reused_row_copies_the_saved_objects_inside_the_bucket(aws: Aws) -> None:
    aws.s3.put_object(
        Bucket=aws.bucket, Key="outputs/b_old/k/output_0.png", Body=b"png", ContentType="image/png"
    )
    saved = [
        {
            "output_id": "output_0",
            "type": "imageUrl",
            "key": "outputs/b_old/k/output_0.png",
            "content_type": "image/png",
            "bytes": 3,
            "sha256": hashlib.sha256(b"png").hexdigest(),
        }
    ]
    copied = copy_saved_outputs(aws.s3, aws.bucket, saved, batch_id="b_new", row_name="k")
    assert copied == [saved[0] | {"key": "outputs/b_new/k/output_0.png"}]
    assert aws.s3.get_object(Bucket=aws.bucket, Key="outputs/b_new/k/output_0.png")["Body"].read() == b"png"
    aws.s3.delete_object(Bucket=aws.bucket, Key="outputs/b_old/k/output_0.png")
    assert copy_saved_outputs(aws.s3, aws.bucket, saved, batch_id="b_new2", row_name="k") is None
    assert (
        copy_saved_outputs(aws.s3, aws.bucket, [{"output_id": "o", "error": "x"}], batch_id="b", row_name="k")
        is None
    )


# -- a finished status waits for its results CSV -------------------------------------------------


def test_a_finished_batch_shows_running_until_its_results_are_named(
    aws: Aws, callbacks: Receiver, save_queue_url: str
) -> None:
    from rowcall.api import BatchQueries
    from rowcall.ondone import OnDoneDelivery
    from rowcall.signing import WebhookSigner

    provider = start_provider(output_bytes=100)
    try:
        batch_id = _run_and_record(aws, provider, callbacks, save_queue_url, b"p\none\n", 1)
        _saver(aws).save(_saves(aws, save_queue_url))
        stored = aws.ledger.batches.get(batch_id)
        assert stored is not None and stored.status is BatchStatus.COMPLETED
        shown = BatchQueries(aws.ledger).get(batch_id)
        assert (shown["status"], shown["results"]["csv_key"]) == ("running", None)
        (message,) = [DoneMessage.model_validate_json(b) for b in aws.drain(aws.done_queue_url)]
        OnDoneDelivery(
            s3=aws.s3,
            sns=aws.sns,
            ledger=aws.ledger,
            done_queue=aws.done_queue,
            http=webhook_client(LOOPBACK_ALLOWED),
            signer=WebhookSigner("whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            topic_arn=aws.sns.create_topic(Name="done")["TopicArn"],
        ).deliver(message)
        shown = BatchQueries(aws.ledger).get(batch_id)
        assert shown["status"] == "completed"
        body = aws.s3.get_object(Bucket=aws.bucket, Key=shown["results"]["csv_key"])["Body"].read()
        assert b"completed" in body
    finally:
        provider.stop()


def test_the_safety_net_sends_again_a_save_that_was_lost(
    aws: Aws, callbacks: Receiver, save_queue_url: str
) -> None:
    import time

    from rowcall.safety_net import SafetyNet, SafetyNetTimes

    provider = start_provider(output_bytes=200)
    try:
        batch_id = _run_and_record(aws, provider, callbacks, save_queue_url, b"p\none\ntwo\n", 2)
        assert len(aws.drain(save_queue_url)) == 2  # lost: the recorder died after its row writes
        net = SafetyNet(
            ledger=aws.ledger,
            finisher=aws.finisher,
            chunk_queue=aws.chunk_queue,
            done_queue=aws.done_queue,
            provider=ProviderConnection(base_url=provider.url, api_key=API_KEY, retry=FAST_RETRY),
            times=SafetyNetTimes(reconcile_after_s=30, callback_deadline_s=600),
            clock=lambda: time.time() + 60,
            save_queue=SaveQueue(aws.sqs, save_queue_url),
        )
        report = net.sweep()
        assert report.saves_resent == 2
        batch = aws.ledger.batches.get(batch_id)
        assert batch is not None and batch.status is BatchStatus.RUNNING  # still waiting for its outputs
        resent = _saves(aws, save_queue_url)
        assert all(m.resent for _, m, _ in resent)
        assert _saver(aws).save(resent).saved == 2
        batch = aws.ledger.batches.get(batch_id)
        assert batch is not None and batch.status is BatchStatus.COMPLETED
        assert net.sweep().saves_resent == 0
    finally:
        provider.stop()


@pytest.mark.parametrize("size", [3000, 12 * 1024 * 1024])
def test_two_savers_of_one_output_store_it_once(aws: Aws, size: int) -> None:
    """A duplicate save message (or a retried write whose answer was lost) is not marked
    redelivered: the create-only write makes the second saver find the first one's copy
    instead of storing a second version, for a single PUT and for a multipart upload alike."""
    provider = start_provider(output_bytes=size)
    try:
        created = httpx.post(
            f"{provider.url}/techniques/t/runs",
            json={"inputs": [], "mode": "async", "idempotency_key": f"twice-{size}"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ).json()
        output = _wait_completed(provider, created["run_id"])["outputs"][0]
        first = _saver(aws).save_output("b_x", "row", output, False)
        second = _saver(aws).save_output("b_x", "row", output, False)
        assert "error" not in first and first == second
        assert first["sha256"] == Media(f"{created['run_id']}/output_0", "imageUrl", size).digest()
        versions = aws.s3.list_object_versions(Bucket=aws.bucket, Prefix="outputs/b_x/").get("Versions", [])
        assert [v["Key"] for v in versions] == [first["key"]]
        assert not aws.s3.list_multipart_uploads(Bucket=aws.bucket).get("Uploads")
    finally:
        provider.stop()


# -- a reused row's outputs: copied inside the bucket ---------------------------------------------

REUSED = b"sku,prompt\nK1,one\nK2,two\nK3,three\n"


def _reuse(aws: Aws) -> RowReuse:
    return RowReuse(aws.ledger.reuse, clock=time.time, keep_days=1)


def _start_all(aws: Aws, provider: ProviderEmulator, callbacks: Receiver) -> list[Any]:
    """Every chunk of the queue started by a worker that reuses rows; their reports."""
    return [
        starter(aws, provider, callbacks, reuse=_reuse(aws)).start_chunk(m, lambda: 300.0)
        for m in chunk_messages(aws)
    ]


def _record_and_save(aws: Aws, provider: ProviderEmulator, received: list[Any], save_queue_url: str) -> None:
    """What the webhook, recorder (remembering completed rows) and saver functions do."""
    intake = CallbackIntake(
        finished_runs=aws.finished_runs,
        callback_secrets=lambda: [CALLBACK_SECRET],
        provider_signing_secrets=lambda: [PROVIDER_SECRET],
    )
    for call in received:
        parts = urlsplit(call.path)
        _, _, b, row_id = parts.path.split("/")
        token = parse_qs(parts.query)["token"][0]
        attempt = intake.attempt_of(b, row_id, token)
        assert attempt is not None
        intake.accept(b, row_id, attempt, RunWebhook.model_validate_json(call.body), content_key_in(token))
    recorder = OutcomeRecorder(
        ledger=aws.ledger,
        finisher=aws.finisher,
        provider=ProviderConnection(base_url=provider.url, api_key=API_KEY, retry=FAST_RETRY),
        reuse=_reuse(aws),
        save_queue=SaveQueue(aws.sqs, save_queue_url),
    )
    messages = [FinishedRun.model_validate_json(b) for b in aws.drain(aws.finished_run_queue_url)]
    assert not recorder.record([(str(n), m) for n, m in enumerate(messages)]).failed
    assert not _saver(aws).save(_saves(aws, save_queue_url)).failed


def _by_key(aws: Aws, batch_id: str) -> dict[str, Any]:
    """The batch's rows by key column value (each row's saved-output directory; a row that ran
    has no key of its own in the ledger)."""
    return {row.saved_outputs[0]["key"].split("/")[2]: row for row in _rows(aws, batch_id)}


def test_a_reused_row_copies_the_earlier_rows_saved_outputs_and_asks_the_provider_nothing(
    aws: Aws, callbacks: Receiver, save_queue_url: str
) -> None:
    provider = start_provider(output_bytes=2000)
    try:
        meta = {"key-column": "sku"}
        first = ingest(aws, REUSED, **meta)
        _start_all(aws, provider, callbacks)
        _record_and_save(aws, provider, callbacks.wait_for(lambda got: len(got) == 3), save_queue_url)
        earlier = _by_key(aws, first)
        assert all(len(row.saved_outputs) == 1 for row in earlier.values())
        creates, gets = provider.stats()["creates"], provider.stats()["media_gets"]
        aws.drain(aws.done_queue_url)

        second = ingest(aws, REUSED, **meta)
        (report,) = _start_all(aws, provider, callbacks)
        assert (report.reused, report.started) == (3, 0)
        assert (provider.stats()["creates"], provider.stats()["media_gets"]) == (creates, gets)
        assert aws.drain(save_queue_url) == []  # copied by the worker, not left to the saver
        batch = aws.ledger.batches.get(second)
        assert batch is not None and batch.status is BatchStatus.COMPLETED
        assert (batch.reused_count, batch.outputs_saved_count, batch.outputs_failed_count) == (3, 3, 0)
        done = [DoneMessage.model_validate_json(b).batch_id for b in aws.drain(aws.done_queue_url)]
        assert done == [second]
        stored = _objects(aws, second)
        for key, row in _by_key(aws, second).items():
            (saved,) = row.saved_outputs
            (was,) = earlier[key].saved_outputs
            assert not row.save_pending and row.reused_from is not None
            assert saved["key"] == f"outputs/{second}/{key}/output_0.png"
            assert saved == was | {"key": saved["key"]}
            assert hashlib.sha256(stored[saved["key"]]).hexdigest() == was["sha256"]
            head = aws.s3.head_object(Bucket=aws.bucket, Key=saved["key"])
            assert head["ContentType"] == "image/png"

        # One of the earlier copies deleted meanwhile: that row runs (and is saved) as any.
        aws.s3.delete_object(Bucket=aws.bucket, Key=earlier["K2"].saved_outputs[0]["key"])
        third = ingest(aws, REUSED, **meta)
        (report,) = _start_all(aws, provider, callbacks)
        assert (report.reused, report.started, provider.stats()["creates"]) == (2, 1, creates + 1)
        batch = aws.ledger.batches.get(third)
        assert batch is not None and batch.status is BatchStatus.RUNNING  # K2's run is out
        _record_and_save(aws, provider, callbacks.wait_for(lambda got: len(got) == 4)[3:], save_queue_url)
        rows = _by_key(aws, third)
        assert rows["K2"].reused_from is None and rows["K2"].run_id is not None
        assert {k for k, row in rows.items() if row.reused_from} == {"K1", "K3"}
        assert set(_objects(aws, third)) == {f"outputs/{third}/{k}/output_0.png" for k in ("K1", "K2", "K3")}
        batch = aws.ledger.batches.get(third)
        assert batch is not None and batch.status is BatchStatus.COMPLETED
        assert (batch.reused_count, batch.outputs_saved_count) == (2, 3)
    finally:
        provider.stop()


def test_a_row_reused_from_a_batch_that_did_not_save_its_outputs_runs(
    aws: Aws, callbacks: Receiver, save_queue_url: str
) -> None:
    provider = start_provider(output_bytes=500)
    try:
        ingest(aws, REUSED, **{"key-column": "sku", "save-outputs": "off"})
        _start_all(aws, provider, callbacks)
        _record_and_save(aws, provider, callbacks.wait_for(lambda got: len(got) == 3), save_queue_url)
        creates = provider.stats()["creates"]
        # Saving off again: reused as they are, with nothing to copy.
        off = ingest(aws, REUSED, **{"key-column": "sku", "save-outputs": "off"})
        (report,) = _start_all(aws, provider, callbacks)
        assert (report.reused, provider.stats()["creates"]) == (3, creates)
        assert all(not row.saved_outputs for row in _rows(aws, off))
        # Saving on: no copy to take, so every row runs and is saved.
        on = ingest(aws, REUSED, **{"key-column": "sku"})
        (report,) = _start_all(aws, provider, callbacks)
        assert (report.reused, report.started, provider.stats()["creates"]) == (0, 3, creates + 3)
        _record_and_save(aws, provider, callbacks.wait_for(lambda got: len(got) == 6)[3:], save_queue_url)
        batch = aws.ledger.batches.get(on)
        assert batch is not None and batch.status is BatchStatus.COMPLETED
        assert (batch.reused_count, batch.outputs_saved_count) == (0, 3)
    finally:
        provider.stop()


def test_a_worker_that_died_before_recording_its_copies_leaves_them_to_the_safety_net(
    aws: Aws, callbacks: Receiver, save_queue_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rowcall.safety_net import SafetyNet, SafetyNetTimes

    provider = start_provider(output_bytes=700)
    try:
        ingest(aws, REUSED, **{"key-column": "sku"})
        _start_all(aws, provider, callbacks)
        _record_and_save(aws, provider, callbacks.wait_for(lambda got: len(got) == 3), save_queue_url)
        gets = provider.stats()["media_gets"]
        second = ingest(aws, REUSED, **{"key-column": "sku"})

        def die(*args: Any, **kwargs: Any) -> int:
            raise RuntimeError("killed between the row writes and the copies' recording")

        monkeypatch.setattr(ReusedOutputs, "record", die)
        with pytest.raises(RuntimeError):
            _start_all(aws, provider, callbacks)
        monkeypatch.undo()
        assert all(row.save_pending and row.reused_from for row in _rows(aws, second))
        batch = aws.ledger.batches.get(second)
        assert batch is not None and batch.status is BatchStatus.RUNNING  # waits for the copies
        net = SafetyNet(
            ledger=aws.ledger,
            finisher=aws.finisher,
            chunk_queue=aws.chunk_queue,
            done_queue=aws.done_queue,
            provider=ProviderConnection(base_url=provider.url, api_key=API_KEY, retry=FAST_RETRY),
            times=SafetyNetTimes(reconcile_after_s=30, callback_deadline_s=600),
            clock=lambda: time.time() + 60,
            save_queue=SaveQueue(aws.sqs, save_queue_url),
        )
        assert net.sweep().saves_resent == 3
        resent = _saves(aws, save_queue_url)
        assert {m.run_id for _, m, _ in resent} == {""}
        assert _saver(aws).save(resent).saved == 3
        assert provider.stats()["media_gets"] == gets  # the copies were found in the bucket
        batch = aws.ledger.batches.get(second)
        assert batch is not None and batch.status is BatchStatus.COMPLETED
        assert batch.outputs_saved_count == 3
        assert all(row.saved_outputs[0]["key"].startswith(f"outputs/{second}/") for row in _rows(aws, second))
    finally:
        provider.stop()


def test_a_reprocessed_rows_outputs_are_counted_once(
    aws: Aws, callbacks: Receiver, save_queue_url: str
) -> None:
    """outputs_saved_count is the batch's current saved outputs: a row reprocessed and saved
    again counts its new copy, not both."""
    from rowcall.batch_actions import BatchActions
    from rowcall.identity import row_id_for

    provider = start_provider(output_bytes=300)
    try:
        batch_id = _run_and_record(aws, provider, callbacks, save_queue_url, b"p\none\ntwo\n", 2)
        assert _saver(aws).save(_saves(aws, save_queue_url)).saved == 2
        batch = aws.ledger.batches.get(batch_id)
        assert batch is not None and (batch.status, batch.outputs_saved_count) == (BatchStatus.COMPLETED, 2)
        BatchActions(aws.ledger, aws.chunk_queue, aws.finisher).reprocess(batch_id, [row_id_for(0, 1)])
        before = len(callbacks.got)
        for message in chunk_messages(aws):
            starter(aws, provider, callbacks).start_chunk(message, lambda: 300.0)
        batch = aws.ledger.batches.get(batch_id)
        assert batch is not None and batch.outputs_saved_count == 1  # the reopened row's copy left
        received = callbacks.wait_for(lambda got: len(got) == before + 1)[before:]
        intake = CallbackIntake(
            finished_runs=aws.finished_runs,
            callback_secrets=lambda: [CALLBACK_SECRET],
            provider_signing_secrets=lambda: [PROVIDER_SECRET],
        )
        for call in received:
            parts = urlsplit(call.path)
            _, _, b, row_id = parts.path.split("/")
            attempt = intake.attempt_of(b, row_id, parse_qs(parts.query)["token"][0])
            assert attempt == 2
            intake.accept(b, row_id, attempt, RunWebhook.model_validate_json(call.body))
        recorder = OutcomeRecorder(
            ledger=aws.ledger,
            finisher=aws.finisher,
            provider=ProviderConnection(base_url=provider.url, api_key=API_KEY, retry=FAST_RETRY),
            save_queue=SaveQueue(aws.sqs, save_queue_url),
        )
        messages = [FinishedRun.model_validate_json(b) for b in aws.drain(aws.finished_run_queue_url)]
        assert not recorder.record([(str(n), m) for n, m in enumerate(messages)]).failed
        assert _saver(aws).save(_saves(aws, save_queue_url)).saved == 1
        batch = aws.ledger.batches.get(batch_id)
        assert batch is not None and batch.status is BatchStatus.COMPLETED
        assert (batch.outputs_saved_count, batch.outputs_failed_count) == (2, 0)
        assert sum(len(row.saved_outputs) for row in _rows(aws, batch_id)) == 2
    finally:
        provider.stop()


def test_a_copy_refused_403_runs_the_row_only_when_its_source_is_not_listed() -> None:
    """S3 answers a missing source 403 to a caller that may not list the bucket unconditionally
    (the worker lists outputs/ alone): the source's listing tells a deletion from a refusal."""
    from botocore.exceptions import ClientError

    class Refusing:
        def __init__(self, listed: list[str]) -> None:
            self.listed = listed

        def copy_object(self, **kwargs: Any) -> None:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "CopyObject")

        def list_objects_v2(self, **kwargs: Any) -> dict[str, Any]:
            return {"Contents": [{"Key": k} for k in self.listed if k.startswith(kwargs["Prefix"])]}

    saved = [{"output_id": "o", "key": "outputs/b_old/k/o.png", "content_type": "image/png"}]
    gone = Refusing([])
    assert copy_saved_outputs(gone, "bucket", saved, batch_id="b", row_name="k") is None  # type: ignore[arg-type]
    there = Refusing(["outputs/b_old/k/o.png"])
    with pytest.raises(ClientError):
        copy_saved_outputs(there, "bucket", saved, batch_id="b", row_name="k")  # type: ignore[arg-type]
