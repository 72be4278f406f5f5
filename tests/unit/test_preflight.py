"""The pre-flight (contract §4) against the FLORA emulator's catalog, the budget check before the
first run, the failure threshold, and charged cost counted exactly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rowcall.batch_actions import BatchActions
from rowcall.failure_threshold import MIN_FINISHED
from rowcall.finishing import RowResult
from rowcall.ingest import IngestLimits, Ingestor, ObjectCreated
from rowcall.input_checks import InputsMismatch, TechniqueCache, TechniqueDefinition, plan_inputs, row_checker
from rowcall.metadata import spec_from_metadata
from rowcall.models import BatchStatus, RowOutcome, RowRules, RowStatus
from rowcall.provider import ProviderConnection, ProviderUnavailable, RetryPolicy
from rowcall_local.provider_emulator import ProviderEmulator, ProviderFaults
from rowcall_local.technique_catalog import Technique, TechniqueField

from .conftest import LOOPBACK_ALLOWED, Aws, chunk_messages

API_KEY = "key-preflight"
SECRET = "whsec_cHJlZmxpZ2h0LXRlc3Qtc2VjcmV0"
PORTRAIT = Technique(
    technique_id="portrait",
    name="Portrait",
    inputs=[
        TechniqueField(id="prompt", name="Prompt", type="text"),
        TechniqueField(id="photo", name="Photo", type="imageUrl"),
        TechniqueField(id="style", name="Style", type="text", optional=True),
    ],
    outputs=[TechniqueField(id="output_0", name="Image", type="imageUrl")],
    run_cost=0.25,
)
DEFINITION = TechniqueDefinition.model_validate(PORTRAIT.wire())


@pytest.fixture
def emulator() -> Iterator[ProviderEmulator]:
    faults = ProviderFaults(techniques=(PORTRAIT,), run_cost_usd=0.05)
    with ProviderEmulator(API_KEY, faults, webhook_secret=SECRET, allow_loopback_callbacks=True) as running:
        yield running


def spec(**meta: str):  # type: ignore[no-untyped-def]
    return spec_from_metadata(meta, key="uploads/x.csv", default_technique_id="portrait")


# -- the batch-level check ------------------------------------------------------------------------


def test_every_problem_is_named_once_and_optional_inputs_may_be_left_out() -> None:
    with pytest.raises(InputsMismatch) as refused:
        plan_inputs(
            DEFINITION,
            ["sku", "prompt", "mood"],
            spec(
                **{
                    "key-column": "sku",
                    "static-inputs": '[{"id":"ref","type":"imageUrl","value":"https://x/y"}]',
                }
            ),
        )
    detail = str(refused.value)
    assert "missing required input 'photo' (imageUrl)" in detail
    assert "unknown input 'mood' (column)" in detail and "unknown input 'ref' (static input)" in detail
    assert "'style'" not in detail.split("(technique")[0]

    with pytest.raises(
        InputsMismatch, match="input 'photo' is text in input-types; the technique takes imageUrl"
    ):
        plan_inputs(DEFINITION, ["prompt", "photo"], spec(**{"input-types": "photo=text"}))

    plan = plan_inputs(DEFINITION, ["sku", "prompt", "photo"], spec(**{"key-column": "sku"}))
    assert plan.input_types == {"prompt": "text", "photo": "imageUrl"}  # the technique's types
    assert plan.rules == RowRules(required=("prompt", "photo"), urls=("photo",))


def test_a_technique_declaring_no_inputs_takes_any_columns_with_the_given_types() -> None:
    open_technique = TechniqueDefinition(technique_id="open", inputs=[], run_cost=0.04)
    plan = plan_inputs(open_technique, ["a", "b"], spec(**{"input-types": "b=videoUrl"}))
    assert plan.input_types == {"a": "text", "b": "videoUrl"}
    assert plan.rules == RowRules(required=(), urls=("b",))


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        (["K1", "a cat", "https://img.example/1.png"], None),
        (["K2", "  ", "https://img.example/2.png"], "missing_input"),
        (["K3", "a cat", "http://img.example/3.png"], "invalid_input_url"),
        (["K4", "a cat", "img.example/4.png"], "invalid_input_url"),
        (["K5", "a cat", "https://"], "invalid_input_url"),
        (["K6", "a cat", "https://img.example/a b.png"], "invalid_input_url"),
        (["K7", "a cat", ""], "missing_input"),
    ],
)
def test_each_row_is_checked_against_the_rules(fields: list[str], code: str | None) -> None:
    from rowcall.csvsplit import CsvRecord

    check = row_checker(["sku", "prompt", "photo"], RowRules(required=("prompt", "photo"), urls=("photo",)))
    assert check is not None
    checked = check(CsvRecord(1, 2, 0, 10, fields, None))
    assert (checked.error.code if checked.error else None) == code
    assert (checked.fields is None) == (code is not None)


# -- ingest against the emulator ----------------------------------------------------------------


def ingestor(
    aws: Aws, emulator: ProviderEmulator, *, key: str = API_KEY, cache: TechniqueCache | None = None
):  # type: ignore[no-untyped-def]
    return Ingestor(
        s3=aws.s3,
        ledger=aws.ledger,
        chunk_queue=aws.chunk_queue,
        finisher=aws.finisher,
        limits=IngestLimits(max_rows=1000, max_bytes=10**6, chunk_rows=4, default_technique_id="portrait"),
        destinations=LOOPBACK_ALLOWED,
        provider=ProviderConnection(
            base_url=emulator.url, api_key=key, retry=RetryPolicy(attempts=2, base_delay_s=0.01)
        ),
        techniques=cache or TechniqueCache(),
    )


def upload(aws: Aws, name: str, body: str, **meta: str) -> ObjectCreated:
    put = aws.s3.put_object(Bucket=aws.bucket, Key=f"uploads/{name}", Body=body.encode(), Metadata=meta)
    return ObjectCreated(bucket=aws.bucket, key=f"uploads/{name}", version_id=put["VersionId"])


GOOD = "sku,prompt,photo\n" + "".join(f"K{n},cat {n},https://img.example/{n}.png\n" for n in range(6))


def test_the_technique_is_read_once_per_container_and_prices_the_batch(
    aws: Aws, emulator: ProviderEmulator
) -> None:
    cache = TechniqueCache()
    first = ingestor(aws, emulator, cache=cache).ingest(upload(aws, "a.csv", GOOD, **{"key-column": "sku"}))
    second = ingestor(aws, emulator, cache=cache).ingest(upload(aws, "b.csv", GOOD, **{"key-column": "sku"}))
    assert first is not None and second is not None
    assert emulator.stats()["technique_gets"] == 1
    for batch in (first, second):
        assert batch.status is BatchStatus.RUNNING
        assert (batch.run_cost_micro_usd, batch.estimated_cost_micro_usd) == (250_000, 6 * 250_000)
        assert batch.spec.input_types == {"prompt": "text", "photo": "imageUrl"}
    assert len(chunk_messages(aws)) == 4


@pytest.mark.parametrize(
    ("technique", "key", "reason"),
    [
        ("missing-portrait", API_KEY, "technique_not_found"),
        ("portrait", "wrong-key", "provider_unauthorized"),
    ],
)
def test_a_technique_the_provider_refuses_fails_the_batch_before_any_run(
    aws: Aws, emulator: ProviderEmulator, technique: str, key: str, reason: str
) -> None:
    batch = ingestor(aws, emulator, key=key).ingest(upload(aws, "x.csv", GOOD, **{"technique-id": technique}))
    assert batch is not None and (batch.status, batch.reason) == (BatchStatus.FAILED, reason)
    assert technique in (batch.reason_message or "")
    assert chunk_messages(aws) == [] and emulator.stats()["creates"] == 0


def test_a_provider_that_does_not_answer_fails_the_invocation_and_the_batch_waits(aws: Aws) -> None:
    dead = ProviderConnection(
        base_url="http://127.0.0.1:9", api_key=API_KEY, retry=RetryPolicy(attempts=2, base_delay_s=0.01)
    )
    ingest = Ingestor(
        s3=aws.s3,
        ledger=aws.ledger,
        chunk_queue=aws.chunk_queue,
        finisher=aws.finisher,
        limits=IngestLimits(max_rows=1000, max_bytes=10**6, chunk_rows=4, default_technique_id="portrait"),
        provider=dead,
    )
    created = upload(aws, "x.csv", GOOD)
    with pytest.raises(ProviderUnavailable):
        ingest.ingest(created)
    batches, _ = aws.ledger.batches.list(10, None)
    assert [b.status for b in batches] == [BatchStatus.VALIDATING]


def test_a_file_that_does_not_fit_fails_inputs_mismatch_and_bad_rows_are_skipped(
    aws: Aws, emulator: ProviderEmulator
) -> None:
    mismatch = ingestor(aws, emulator).ingest(
        upload(aws, "m.csv", "sku,prompt\nK1,cat\n", **{"key-column": "sku"})
    )
    assert mismatch is not None and (mismatch.status, mismatch.reason) == (
        BatchStatus.FAILED,
        "inputs_mismatch",
    )
    assert "missing required input 'photo'" in (mismatch.reason_message or "")

    body = GOOD + "BAD,cat,ftp://img.example/x.png\nEMPTY,,https://img.example/y.png\n"
    batch = ingestor(aws, emulator).ingest(upload(aws, "r.csv", body, **{"key-column": "sku"}))
    assert batch is not None and (batch.total_count, batch.rows_skipped) == (6, 2)
    codes = sorted(e.code for e in aws.ledger.row_errors.of_batch(batch.batch_id))
    assert codes == ["invalid_input_url", "missing_input"]


def test_over_budget_pauses_before_the_first_chunk_and_resume_raises_the_budget(
    aws: Aws, emulator: ProviderEmulator
) -> None:
    meta = {"key-column": "sku", "max-cost-usd": "1.0"}
    created = upload(aws, "b.csv", GOOD, **meta)
    batch = ingestor(aws, emulator).ingest(created)
    assert batch is not None and (batch.status, batch.reason) == (BatchStatus.PAUSED, "over_budget")
    assert "$1.5" in (batch.reason_message or "") and batch.max_cost_micro_usd == 1_000_000
    assert chunk_messages(aws) == []
    # A second delivery of the same event changes nothing.
    again = ingestor(aws, emulator).ingest(created)
    assert again is not None and again.status is BatchStatus.PAUSED and chunk_messages(aws) == []

    actions = BatchActions(aws.ledger, aws.chunk_queue, aws.finisher)
    resumed = actions.resume(batch.batch_id, max_cost_usd=1.5)
    assert resumed.status is BatchStatus.RUNNING and resumed.max_cost_usd == 1.5 and resumed.reason is None
    assert len(chunk_messages(aws)) == 2

    # A budget smaller than one run pauses too.
    tiny = ingestor(aws, emulator).ingest(
        upload(aws, "t.csv", GOOD, **{"key-column": "sku", "max-cost-usd": "0.1"})
    )
    assert tiny is not None and (tiny.status, tiny.reason) == (BatchStatus.PAUSED, "over_budget")


def test_a_budget_that_covers_the_estimate_runs_at_once(aws: Aws, emulator: ProviderEmulator) -> None:
    batch = ingestor(aws, emulator).ingest(
        upload(aws, "ok.csv", GOOD, **{"key-column": "sku", "max-cost-usd": "1.5"})
    )
    assert batch is not None and batch.status is BatchStatus.RUNNING


# -- outcomes: charges and the failure threshold --------------------------------------------------


def open_batch(aws: Aws, emulator: ProviderEmulator, rows: int, **meta: str) -> str:
    body = "sku,prompt\n" + "".join(f"K{n},p{n}\n" for n in range(rows))
    batch = ingestor(aws, emulator).ingest(upload(aws, "o.csv", body, **{"technique-id": "open", **meta}))
    assert batch is not None and batch.status is BatchStatus.RUNNING
    chunk_messages(aws)
    return batch.batch_id


def outcome(record: int, failed: bool, charged: int = 50_000) -> RowResult:
    status = RowStatus.FAILED if failed else RowStatus.COMPLETED
    return RowResult(
        record=record,
        attempt=1,
        outcome=RowOutcome(
            status=status, run_id=f"r{record}", charged_cost_micro_usd=0 if failed else charged
        ),
    )


def test_charges_are_counted_per_chunk_and_settled_exactly_once(aws: Aws, emulator: ProviderEmulator) -> None:
    batch_id = open_batch(aws, emulator, 8)
    finisher = aws.finisher
    finisher.record_outcomes(batch_id, 0, [outcome(1, False), outcome(2, True)])
    finisher.record_outcomes(batch_id, 0, [outcome(1, False)])  # a duplicate: no row moves
    view = __import__("rowcall.api", fromlist=["BatchQueries"]).BatchQueries(aws.ledger).get(batch_id)
    assert view["charged_cost_usd"] == 0.05
    finisher.record_outcomes(batch_id, 0, [outcome(3, False, 33), outcome(4, False, 1)])
    finisher.record_outcomes(batch_id, 1, [outcome(r, False) for r in range(5, 9)])
    done = aws.ledger.batches.get(batch_id)
    assert done is not None and done.status is BatchStatus.PARTIAL
    assert done.charged_cost_micro_usd == 50_000 + 33 + 1 + 4 * 50_000


def test_the_failure_threshold_pauses_only_past_min_rows_and_percent(
    aws: Aws, emulator: ProviderEmulator
) -> None:
    batch_id = open_batch(aws, emulator, 40, **{"max-failed-percent": "50"})
    finisher = aws.finisher
    # Chunks of four: every row of chunk 0..3 fails -> 16 finished, all failed: under MIN_FINISHED.
    for chunk in range(4):
        finisher.record_outcomes(batch_id, chunk, [outcome(chunk * 4 + r, True) for r in range(1, 5)])
    assert aws.ledger.batches.get(batch_id).status is BatchStatus.RUNNING  # type: ignore[union-attr]
    assert MIN_FINISHED == 20
    finisher.record_outcomes(
        batch_id, 4, [outcome(17, False), outcome(18, False), outcome(19, False), outcome(20, True)]
    )
    paused = aws.ledger.batches.get(batch_id)
    assert paused is not None and (paused.status, paused.reason) == (BatchStatus.PAUSED, "failure_threshold")
    assert "17 of 20 rows" in (paused.reason_message or "")
    # Resumed: the count starts again from here, so it does not pause at the next failure.
    resumed = BatchActions(aws.ledger, aws.chunk_queue, aws.finisher).resume(batch_id)
    assert resumed.status is BatchStatus.RUNNING and resumed.threshold_failed_base == 17
    finisher.record_outcomes(batch_id, 5, [outcome(21, True), outcome(22, True)])
    assert aws.ledger.batches.get(batch_id).status is BatchStatus.RUNNING  # type: ignore[union-attr]


def test_a_batch_under_its_threshold_or_without_one_keeps_running(
    aws: Aws, emulator: ProviderEmulator
) -> None:
    batch_id = open_batch(aws, emulator, 40, **{"max-failed-percent": "60"})
    for chunk in range(6):
        base = chunk * 4
        aws.finisher.record_outcomes(
            batch_id,
            chunk,
            [
                outcome(base + 1, True),
                outcome(base + 2, True),
                outcome(base + 3, False),
                outcome(base + 4, False),
            ],
        )
    assert aws.ledger.batches.get(batch_id).status is BatchStatus.RUNNING  # type: ignore[union-attr]
