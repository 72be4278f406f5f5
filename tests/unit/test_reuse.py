"""Reuse of completed rows (contract §3 `reuse`) through the layer: worker, webhooks, recorder.

The provider emulator counts creates, so "a reused row asks the provider nothing" is its count;
the ledger's rows say what each row was completed from.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from rowcall.batch_actions import BatchActions
from rowcall.callbacks import CallbackIntake
from rowcall.identity import CallbackSigner, content_key_in, row_id_for
from rowcall.ingest import IngestLimits, Ingestor, ObjectCreated
from rowcall.ledger import ReuseSource
from rowcall.models import (
    BatchState,
    BatchStatus,
    DoneMessage,
    FinishedRun,
    RowState,
    RowStatus,
    RunInput,
    RunWebhook,
    to_micro_usd,
    usd_text,
)
from rowcall.outcomes import OutcomeRecorder
from rowcall.provider import ProviderConnection
from rowcall.reuse import DAY_S, RowReuse, content_key
from rowcall.row_listing import row_charged_usd
from rowcall.runs import RunStarter
from rowcall_local.provider_emulator import ProviderEmulator, ProviderFaults
from rowcall_local.technique_catalog import DEFAULT_RUN_COST_USD
from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

from .conftest import LOOPBACK_ALLOWED, Aws, chunk_messages, ingest
from .loopback_runs import (
    API_KEY,
    CALLBACK_SECRET,
    FAST_RETRY,
    PROVIDER_SECRET,
    start_provider,
)
from .loopback_runs import starter as shared_starter

KEEP_DAYS = 30
# Two chunks (the unit ingest's chunk size is four rows), six rows.
ROWS = "sku,prompt,style\n" + "".join(f"K{n},prompt {n},plain\n" for n in range(6))


def csv_bytes(text: str) -> bytes:
    return text.encode()


def reuse(aws: Aws, clock: Any = time.time) -> RowReuse:
    return RowReuse(aws.ledger.reuse, keep_days=KEEP_DAYS, clock=clock)


def starter(aws: Aws, provider: ProviderEmulator, callbacks: Receiver, clock: Any = time.time) -> RunStarter:
    return shared_starter(aws, provider, callbacks, reuse=reuse(aws, clock))


def record(aws: Aws, provider: ProviderEmulator, received: list[Any]) -> None:
    """What the webhook function and then the recorder function do with the received webhooks."""
    intake = CallbackIntake(
        finished_runs=aws.finished_runs,
        callback_secrets=lambda: [CALLBACK_SECRET],
        provider_signing_secrets=lambda: [PROVIDER_SECRET],
    )
    for call in received:
        parts = urlsplit(call.path)
        _, _, batch_id, row_id = parts.path.split("/")
        token = parse_qs(parts.query)["token"][0]
        attempt = intake.attempt_of(batch_id, row_id, token)
        assert attempt is not None
        webhook = RunWebhook.model_validate_json(call.body)
        intake.accept(batch_id, row_id, attempt, webhook, content_key_in(token))
    recorder = OutcomeRecorder(
        ledger=aws.ledger,
        finisher=aws.finisher,
        provider=ProviderConnection(base_url=provider.url, api_key=API_KEY, retry=FAST_RETRY),
        reuse=reuse(aws),
    )
    messages = [FinishedRun.model_validate_json(b) for b in aws.drain(aws.finished_run_queue_url)]
    assert not recorder.record([(str(n), m) for n, m in enumerate(messages)]).failed


def run(aws: Aws, provider: ProviderEmulator, callbacks: Receiver, body: str, **meta: str) -> str:
    """Ingest, start every chunk, record every webhook that comes; the batch id. Outputs are not
    saved unless asked (no saver here: a row reused in a saving batch needs its source's copies,
    tests/unit/test_saved_outputs.py)."""
    meta.setdefault("save-outputs", "off")
    before = len(callbacks.got)
    creates = provider.stats()["creates"]
    batch_id = ingest(aws, csv_bytes(body), **meta)
    for message in chunk_messages(aws):
        starter(aws, provider, callbacks).start_chunk(message, lambda: 300.0)
    created = provider.stats()["creates"] - creates
    got = callbacks.wait_for(lambda got: len(got) >= before + created)
    record(aws, provider, got[before:])
    return batch_id


def rows(aws: Aws, batch_id: str) -> dict[str, RowState]:
    found = {}
    for chunk in range(2):
        for row in aws.ledger.rows.rows_of_chunk(batch_id, chunk):
            found[row_id_for(chunk, row.record)] = row
    return found


def batch_status(aws: Aws, batch_id: str) -> tuple[BatchStatus, int, int, int]:
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None
    return batch.status, batch.completed_count, batch.failed_count, batch.reused_count


def test_the_content_key_is_what_the_row_asks_not_how_the_file_lays_it_out() -> None:
    prompt, style = (
        RunInput(id="prompt", type="text", value="a fox"),
        RunInput(id="style", type="text", value="bold"),
    )
    reference = RunInput(id="reference_0", type="imageUrl", value="https://example.com/a.png")
    key = content_key("flora", "tech", [prompt, style, reference])
    assert content_key("flora", "tech", [reference, style, prompt]) == key  # column order
    assert len(key) == 43 and key.replace("-", "").replace("_", "").isalnum()
    different = [
        content_key("flora", "tech", [prompt, style]),  # a static input less
        content_key(
            "flora",
            "tech",
            [prompt, style, reference.model_copy(update={"value": "https://example.com/b.png"})],
        ),
        content_key("flora", "tech", [prompt, style.model_copy(update={"type": "imageUrl"}), reference]),
        content_key("flora", "tech", [prompt.model_copy(update={"value": "a fox "}), style, reference]),
        content_key("flora", "other-tech", [prompt, style, reference]),
        content_key("replicate", "tech", [prompt, style, reference]),
        # An input renamed keeps its value: still another request.
        content_key("flora", "tech", [prompt.model_copy(update={"id": "prompt2"}), style, reference]),
    ]
    assert len({key, *different}) == len(different) + 1


def test_the_callback_token_binds_the_content_key() -> None:
    signer = CallbackSigner("secret")
    key = content_key("flora", "tech", [RunInput(id="p", type="text", value="x")])
    token = signer.token("b_1", "0-1", 2, key)
    assert signer.verify("b_1", "0-1", token) == 2 and content_key_in(token) == key
    other = content_key("flora", "tech", [RunInput(id="p", type="text", value="y")])
    assert signer.verify("b_1", "0-1", token.replace(key, other)) is None
    assert signer.verify("b_1", "0-1", token.replace(f".{key}", "")) is None
    plain = signer.token("b_1", "0-1", 2)  # a token without one still verifies (and carries none)
    assert signer.verify("b_1", "0-1", plain) == 2 and content_key_in(plain) is None


def test_completed_rows_are_remembered_for_reuse_days_by_the_tables_ttl(
    aws: Aws, provider: ProviderEmulator, callbacks: Receiver
) -> None:
    ttl = aws.dynamodb.describe_time_to_live(TableName=aws.table)["TimeToLiveDescription"]
    assert (ttl["TimeToLiveStatus"], ttl["AttributeName"]) == ("ENABLED", "expires_at")
    batch_id = run(aws, provider, callbacks, ROWS, **{"key-column": "sku"})
    keys = [
        content_key(
            "flora",
            "tech",
            [
                RunInput(id="prompt", type="text", value=f"prompt {n}"),
                RunInput(id="style", type="text", value="plain"),
            ],
        )
        for n in range(6)
    ]
    found = aws.ledger.reuse.find(keys, now=time.time())
    assert len(found) == 6
    by_row = rows(aws, batch_id)
    for source in found.values():
        row = by_row[source.row_id]
        assert (source.batch_id, source.run_id, source.outputs) == (batch_id, row.run_id, row.outputs)
        assert source.expires_at == pytest.approx(time.time() + KEEP_DAYS * DAY_S, abs=60)
    stored = aws.dynamodb.get_item(
        TableName=aws.table, Key={"pk": {"S": f"REUSE#{keys[0]}"}, "sk": {"S": "REUSE"}}
    )
    assert "N" in stored["Item"]["expires_at"]  # a number of epoch seconds, as TTL requires


def test_an_edited_csv_runs_only_the_rows_that_changed(
    aws: Aws, provider: ProviderEmulator, callbacks: Receiver
) -> None:
    first = run(aws, provider, callbacks, ROWS, **{"key-column": "sku"})
    assert provider.stats()["creates"] == 6
    # Columns reordered, keys renamed, one prompt edited: one row asks something new.
    edited = "style,prompt,sku\n" + "".join(
        f"plain,{'prompt 3 edited' if n == 3 else f'prompt {n}'},NEW{n}\n" for n in range(6)
    )
    second = run(aws, provider, callbacks, edited, **{"key-column": "sku"})
    assert provider.stats()["creates"] == 7
    assert batch_status(aws, second) == (BatchStatus.COMPLETED, 6, 0, 5)
    earlier, now = rows(aws, first), rows(aws, second)
    batch = aws.ledger.batches.get(second)
    assert batch is not None
    for row_id, row in now.items():
        if row_id == row_id_for(0, 4):  # record 4 is the edited prompt 3
            assert (
                row.reused_from is None
                and row.run_id
                and row.run_id not in {r.run_id for r in earlier.values()}
            )
            continue
        source_id = row_id  # same position in both files
        assert row.status is RowStatus.COMPLETED
        assert row.reused_from == {
            "batch_id": first,
            "row_id": source_id,
            "run_id": earlier[source_id].run_id,
        }
        assert row.outputs == earlier[source_id].outputs and row.outputs
        assert row_charged_usd(batch, row) == 0
        assert row.key == f"NEW{row.record - 1}"


def test_reuse_off_runs_every_row(aws: Aws, provider: ProviderEmulator, callbacks: Receiver) -> None:
    run(aws, provider, callbacks, ROWS)
    second = run(aws, provider, callbacks, ROWS, reuse="off")
    assert provider.stats()["creates"] == 12
    assert batch_status(aws, second) == (BatchStatus.COMPLETED, 6, 0, 0)
    assert all(row.reused_from is None for row in rows(aws, second).values())


def test_failed_rows_are_never_reused(aws: Aws, callbacks: Receiver) -> None:
    failing = start_provider(fail_rate=1.0)
    try:
        first = run(aws, failing, callbacks, ROWS)
    finally:
        failing.stop()
    assert batch_status(aws, first)[:3] == (BatchStatus.PARTIAL, 0, 6)
    # Another seed: the same seed would name its runs as the first did, and the finished-run
    # queue (deduplicated by run id) would drop them.
    provider = ProviderEmulator(
        API_KEY,
        ProviderFaults(delay_ms=(0, 5), seed=8),
        webhook_secret=PROVIDER_SECRET,
        allow_loopback_callbacks=True,
    )
    provider.start()
    try:
        second = run(aws, provider, callbacks, ROWS)
        assert provider.stats()["creates"] == 6
        assert batch_status(aws, second) == (BatchStatus.COMPLETED, 6, 0, 0)
    finally:
        provider.stop()


def test_a_reprocessed_row_runs_anew_though_it_was_reused(
    aws: Aws, provider: ProviderEmulator, callbacks: Receiver
) -> None:
    run(aws, provider, callbacks, ROWS)
    second = run(aws, provider, callbacks, ROWS)
    assert provider.stats()["creates"] == 6
    assert batch_status(aws, second) == (BatchStatus.COMPLETED, 6, 0, 6)
    BatchActions(aws.ledger, aws.chunk_queue, aws.finisher).reprocess(second, [row_id_for(0, 2)])
    before = len(callbacks.got)
    for message in chunk_messages(aws):
        starter(aws, provider, callbacks).start_chunk(message, lambda: 300.0)
    assert provider.stats()["creates"] == 7  # the named row, and only it, asked the provider again
    record(aws, provider, callbacks.wait_for(lambda got: len(got) == before + 1)[before:])
    row = rows(aws, second)[row_id_for(0, 2)]
    assert (row.status, row.attempt, row.reused_from) == (RowStatus.COMPLETED, 2, None)
    assert batch_status(aws, second) == (BatchStatus.COMPLETED, 6, 0, 5)


def test_a_redelivered_chunk_reuses_each_row_once(
    aws: Aws, provider: ProviderEmulator, callbacks: Receiver
) -> None:
    run(aws, provider, callbacks, ROWS)
    second = ingest(aws, csv_bytes(ROWS), **{"save-outputs": "off"})
    messages = chunk_messages(aws)
    work = starter(aws, provider, callbacks)
    first_chunk, second_chunk = messages
    # SQS delivers at least once: the first chunk twice while the batch still runs.
    reports = [work.start_chunk(m, lambda: 300.0) for m in (first_chunk, first_chunk, second_chunk)]
    assert [r.reused for r in reports] == [4, 0, 2]
    assert [r.skipped_known for r in reports] == [0, 4, 0]
    assert provider.stats()["creates"] == 6
    assert batch_status(aws, second) == (BatchStatus.COMPLETED, 6, 0, 6)
    done = [DoneMessage.model_validate_json(b) for b in aws.drain(aws.done_queue_url)]
    assert [m.finish_seq for m in done if m.batch_id == second] == [1]


def test_a_source_past_reuse_days_is_not_reused(
    aws: Aws, provider: ProviderEmulator, callbacks: Receiver
) -> None:
    run(aws, provider, callbacks, ROWS)
    later = time.time() + (KEEP_DAYS + 1) * DAY_S  # TTL deletes late: the reader checks too
    second = ingest(aws, csv_bytes(ROWS), **{"save-outputs": "off"})
    for message in chunk_messages(aws):
        assert (
            starter(aws, provider, callbacks, clock=lambda: later).start_chunk(message, lambda: 300.0).reused
            == 0
        )
    assert provider.stats()["creates"] == 12
    assert aws.ledger.batches.get(second) is not None


def test_lookups_go_in_groups_of_a_hundred_distinct_keys(aws: Aws) -> None:
    now = time.time()
    sources = [
        ReuseSource(
            content_key=f"k{n:03d}",
            batch_id="b_1",
            row_id=f"0-{n}",
            run_id=f"r{n}",
            outputs=[{"output_id": "o", "url": f"https://x/{n}"}],
            completed_at=now,
            expires_at=int(now) + 60,
        )
        for n in range(130)
    ]
    assert aws.ledger.reuse.remember(sources + sources[:3]) == 130  # a key twice: written once
    calls: list[int] = []
    client = aws.ledger.table.client
    original = client.batch_get_item

    def counted(**kwargs: Any) -> Any:
        calls.append(sum(len(r["Keys"]) for r in kwargs["RequestItems"].values()))
        return original(**kwargs)

    ledger = aws.ledger
    ledger.table.client = type("C", (), {"batch_get_item": staticmethod(counted)})()
    wanted = [f"k{n:03d}" for n in range(250)] + ["k000", "k001"]
    found = ledger.reuse.find(wanted, now=now)
    assert sorted(found) == [f"k{n:03d}" for n in range(130)]
    assert calls == [100, 100, 50]
    assert found["k007"].outputs == [{"output_id": "o", "url": "https://x/7"}]


def priced_ingest(aws: Aws, provider: ProviderEmulator, body: str, **meta: str) -> BatchState:
    """Ingest with the pre-flight (the emulator prices the open technique at its run cost)."""
    put = aws.s3.put_object(Bucket=aws.bucket, Key="uploads/priced.csv", Body=csv_bytes(body), Metadata=meta)
    batch = Ingestor(
        s3=aws.s3,
        ledger=aws.ledger,
        chunk_queue=aws.chunk_queue,
        finisher=aws.finisher,
        limits=IngestLimits(max_rows=1000, max_bytes=10**6, chunk_rows=4, default_technique_id="tech"),
        destinations=LOOPBACK_ALLOWED,
        provider=ProviderConnection(base_url=provider.url, api_key=API_KEY, retry=FAST_RETRY),
    ).ingest(ObjectCreated(bucket=aws.bucket, key="uploads/priced.csv", version_id=put["VersionId"]))
    assert batch is not None
    return batch


def test_the_estimate_leaves_out_reused_rows_so_a_budget_for_the_changed_rows_runs(
    aws: Aws, provider: ProviderEmulator, callbacks: Receiver
) -> None:
    run(aws, provider, callbacks, ROWS, **{"key-column": "sku"})
    run_cost = to_micro_usd(DEFAULT_RUN_COST_USD)
    edited = "sku,prompt,style\n" + "".join(
        f"K{n},{'prompt 3 edited' if n == 3 else f'prompt {n}'},plain\n" for n in range(6)
    )
    budget = {  # one run's worth
        "key-column": "sku",
        "max-cost-usd": usd_text(DEFAULT_RUN_COST_USD),
        "save-outputs": "off",
    }
    # Without reuse every row would run: the same budget pauses the batch before any run.
    off = priced_ingest(aws, provider, edited, reuse="off", **budget)
    assert (off.status, off.reason, off.estimated_cost_micro_usd) == (
        BatchStatus.PAUSED,
        "over_budget",
        6 * run_cost,
    )
    assert chunk_messages(aws) == []
    creates = provider.stats()["creates"]
    batch = priced_ingest(aws, provider, edited + "\n", **budget)  # another version of the object
    assert batch.status is BatchStatus.RUNNING and batch.reason is None
    assert batch.estimated_cost_micro_usd == run_cost * 1
    for message in chunk_messages(aws):
        starter(aws, provider, callbacks).start_chunk(message, lambda: 300.0)
    assert provider.stats()["creates"] == creates + 1
    record(aws, provider, callbacks.wait_for(lambda got: len(got) >= 7)[6:])
    assert batch_status(aws, batch.batch_id) == (BatchStatus.COMPLETED, 6, 0, 5)


def test_ingest_counts_reusable_rows_in_lookups_of_a_hundred_while_it_streams(
    aws: Aws, provider: ProviderEmulator
) -> None:
    now = time.time()
    body = "prompt\n" + "".join(f"p{n}\n" for n in range(150))
    known = [n for n in range(150) if n % 3 == 0]  # 50 rows asked before
    aws.ledger.reuse.remember(
        ReuseSource(
            content_key=content_key("flora", "tech", [RunInput(id="prompt", type="text", value=f"p{n}")]),
            batch_id="b_1",
            row_id=f"0-{n}",
            run_id=f"r{n}",
            completed_at=now,
            expires_at=int(now) + 60,
        )
        for n in known
    )
    calls: list[int] = []
    client = aws.ledger.table.client
    original = client.batch_get_item

    def counted(**kwargs: Any) -> Any:
        calls.append(sum(len(r["Keys"]) for r in kwargs["RequestItems"].values()))
        return original(**kwargs)

    client.batch_get_item = counted  # type: ignore[method-assign]
    try:
        batch = priced_ingest(aws, provider, body)
    finally:
        client.batch_get_item = original  # type: ignore[method-assign]
    assert calls == [100, 50]
    assert batch.status is BatchStatus.RUNNING
    assert batch.estimated_cost_micro_usd == to_micro_usd(DEFAULT_RUN_COST_USD) * (150 - len(known))
