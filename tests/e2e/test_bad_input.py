"""Bad uploads next to a good one, all at once, through the real local stack (`rowcall up`): each bad
one ends as the corpus says, nothing of a refused file reaches the provider, and the good batch
completes with every row and a results.csv of its own."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import boto3
import pytest

from tests.corpus.cases import BY_NAME, GOOD_META, MAX_BYTES, MAX_ROWS, Case

from .conftest import LocalStack, running_stack

pytestmark = pytest.mark.e2e
# results.csv holds the 1 MiB cells of the wide cases; the csv module's default limit is 128 KiB.
csv.field_size_limit(16 * 1024 * 1024)

SUBSET = [
    BY_NAME[name]
    for name in (
        "meta_input_types_syntax",
        "meta_static_inputs_not_list",
        "meta_key_column_no_column",
        "meta_input_columns_no_column",
        "meta_on_done_url_not_http",
        "meta_on_done_url_plain_http",
        "meta_on_done_url_metadata",
        "latin1",
        "nul_byte",
        "lone_cr",
        "quoted_newlines",
        "too_many_columns",
        "too_few_columns",
        "unterminated_quote",
        "empty_rows",
        "too_many_rows",
        "too_large",
        "outside_uploads",
        "header_only",
        "wide_key_1mb",
    )
]
GOOD_KEY = "uploads/e2e-good-beside-bad.csv"
GOOD_ROWS = [["sku", "prompt", "image"]] + [
    [f"G{n:02d}", f"a good prompt, number {n}", f"https://img.example/g{n}.png"] for n in range(1, 61)
]


def good_csv() -> bytes:
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerows(GOOD_ROWS)
    return out.getvalue().encode()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The corpus's caps, so too_many_rows and too_large are refused by the stack's own settings."""
    flags = ["--provider-delay-ms", "5:60", "--max-rows", str(MAX_ROWS), "--max-bytes", str(MAX_BYTES)]
    with running_stack(tmp_path_factory.mktemp("rowcall-bad-input"), *flags) as started:
        yield started


def object_text(stack: LocalStack, key: str) -> str:
    body: bytes = stack.s3.get_object(Bucket=stack.info["bucket"], Key=key)["Body"].read()
    return body.decode("utf-8")


def row_errors_of(stack: LocalStack, batch: dict[str, Any]) -> list[tuple[int, str]]:
    rows = list(csv.DictReader(io.StringIO(object_text(stack, batch["results"]["errors_key"]), newline="")))
    return [(int(r["line"]), r["code"]) for r in rows]


def reason_message(stack: LocalStack, batch_id: str) -> str:
    """The API shows `reason` only; the message naming the line or key is kept on the ledger item."""
    dynamodb = boto3.client(
        "dynamodb",
        endpoint_url=stack.info["aws_endpoint_url"],
        region_name=stack.info["region"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    got = dynamodb.get_item(
        TableName=stack.info["table"], Key={"pk": {"S": f"BATCH#{batch_id}"}, "sk": {"S": "META"}}
    )
    message: str = got["Item"]["reason_message"]["S"]
    return message


def test_bad_uploads_beside_a_good_one_each_get_their_outcome_and_the_good_one_completes(
    stack: LocalStack,
) -> None:
    before = stack.provider_stats()
    uploads: list[tuple[str, bytes, dict[str, str]]] = [(GOOD_KEY, good_csv(), GOOD_META)]
    uploads += [(case.s3_key, case.body(), case.metadata) for case in SUBSET]
    with ThreadPoolExecutor(8) as pool:  # all at once, as several users would
        list(
            pool.map(
                lambda u: stack.s3.put_object(
                    Bucket=stack.info["bucket"], Key=u[0], Body=u[1], Metadata={"reuse": "off", **u[2]}
                ),
                uploads,
            )
        )

    good = stack.wait_notified(stack.batch_for(GOOD_KEY)["batch_id"], timeout_s=180)
    finished: dict[str, dict[str, Any]] = {}
    for case in SUBSET:
        if case.expect.status != "ignored":
            finished[case.name] = stack.wait_notified(stack.batch_for(case.s3_key)["batch_id"], timeout_s=120)

    for case in SUBSET:
        if case.name in finished:
            check_outcome(stack, case, finished[case.name])

    # The good batch: every row ran once, and its results are its own rows in its own order.
    assert (good["status"], good["total_count"], good["completed_count"], good["rows_skipped"]) == (
        "completed",
        60,
        60,
        0,
    )
    results = list(csv.reader(io.StringIO(object_text(stack, good["results"]["csv_key"]), newline="")))
    assert [r[:3] for r in results] == GOOD_ROWS
    assert all(r[3] == "completed" and r[4] for r in results[1:])
    assert len({r[4] for r in results[1:]}) == 60
    assert row_errors_of(stack, good) == []

    # Refused files asked nothing of the provider: the creates are exactly the rows that could run.
    runnable = 60 + sum(len(c.expect.rows) for c in SUBSET if c.expect.status == "completed")
    after = stack.provider_stats()
    assert after["creates"] - before["creates"] == runnable
    assert after["unique_idempotency_keys"] - before["unique_idempotency_keys"] == runnable

    # The key outside uploads/ made no batch; every results/ folder belongs to a batch made here.
    with stack.api as api:
        listed = api.get("/batches", params={"limit": 100}).json()["items"]
    keys = {b["source"]["key"] for b in listed}
    assert "elsewhere/outside_uploads.csv" not in keys
    assert keys == {GOOD_KEY} | {c.s3_key for c in SUBSET if c.expect.status != "ignored"}
    results_objects = stack.s3.list_objects_v2(Bucket=stack.info["bucket"], Prefix="results/")["Contents"]
    assert {o["Key"].split("/")[1] for o in results_objects} == {b["batch_id"] for b in listed}


def check_outcome(stack: LocalStack, case: Case, batch: dict[str, Any]) -> None:
    expect = case.expect
    assert (batch["status"], batch["reason"]) == (expect.status, expect.reason), case.name
    assert row_errors_of(stack, batch) == list(expect.row_errors), case.name
    if expect.status == "failed":
        assert expect.message_has in reason_message(stack, batch["batch_id"]), case.name
        assert (batch["total_count"], batch["completed_count"], batch["failed_count"]) == (None, 0, 0)
        return
    rows = list(csv.DictReader(io.StringIO(object_text(stack, batch["results"]["csv_key"]), newline="")))
    assert [r["sku"] for r in rows] == list(expect.rows), case.name
    assert all(r["status"] == "completed" for r in rows), case.name
    assert (batch["total_count"], batch["completed_count"], batch["rows_skipped"]) == (
        len(expect.rows),
        len(expect.rows),
        len(expect.row_errors),
    ), case.name
