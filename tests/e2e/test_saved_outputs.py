"""Saved outputs through the real local stack (contract section 7): every output of every
completed row in the bucket, with the provider's exact bytes, before the on-done arrives."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks import Webhook

from rowcall_local.emulated_media import Media
from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

from .conftest import LocalStack, running_stack

pytestmark = pytest.mark.e2e
OUTPUT_BYTES = 4096
ROWCALL = Path(sys.executable).with_name("rowcall")
FINISHED_SHOWN = ("completed", "partial", "failed")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    # Outputs vanish 60 s after their run, as a provider's short-lived URLs do.
    with running_stack(
        tmp_path_factory.mktemp("rowcall-outputs"),
        "--provider-delay-ms",
        "5:60",
        "--provider-output-bytes",
        str(OUTPUT_BYTES),
        "--provider-output-ttl-s",
        "60",
    ) as started:
        yield started


def _all_rows(stack: LocalStack, batch_id: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    with stack.api as api:
        while True:
            params: dict[str, Any] = {"limit": 100}
            if cursor:
                params["cursor"] = cursor
            page = api.get(f"/batches/{batch_id}/rows", params=params).json()
            rows += page["items"]
            cursor = page["next_cursor"]
            if not cursor:
                return rows


def _watch_until_finished(stack: LocalStack, batch_id: str, timeout_s: float) -> dict[str, Any]:
    """Polls the batch; a finished status must never show before its results CSV is named."""
    deadline = time.monotonic() + timeout_s
    with stack.api as api:
        while time.monotonic() < deadline:
            batch: dict[str, Any] = api.get(f"/batches/{batch_id}").json()
            if batch["status"] in FINISHED_SHOWN:
                key = batch["results"]["csv_key"]
                assert key, f"{batch['status']} shown before the results CSV is named"
                stack.s3.head_object(Bucket=stack.info["bucket"], Key=key)  # downloadable at once
                return batch
            time.sleep(0.1)
    raise AssertionError(f"batch {batch_id} did not finish in {timeout_s}s")


def test_every_output_of_a_500_row_batch_is_in_the_bucket_before_the_on_done(
    stack: LocalStack, tmp_path: Path
) -> None:
    hook = Receiver()
    try:
        lines = ["sku,prompt"]
        for n in range(500):
            # Every tenth key is shared by several rows; some are all unsafe characters.
            sku = "shared/name" if n % 10 == 0 else ("???" if n % 10 == 1 else f"sku-{n}")
            lines.append(f"{sku},prompt {n}")
        key = "uploads/e2e-outputs-500.csv"
        stack.s3.put_object(
            Bucket=stack.info["bucket"],
            Key=key,
            Body=("\n".join(lines) + "\n").encode(),
            Metadata={"key-column": "sku", "on-done-url": hook.url + "/done", "save-outputs": "on"},
        )
        batch_id = stack.batch_for(key)["batch_id"]
        finished = _watch_until_finished(stack, batch_id, 300)
        assert (finished["status"], finished["completed_count"]) == ("completed", 500)
        (delivery,) = hook.wait_for(lambda got: len(got) >= 1, timeout_s=60)
        on_done = Webhook(stack.info["webhook_secret"]).verify(delivery.body, delivery.headers)
        sent_at = int(delivery.headers["webhook-timestamp"])
        assert on_done["data"]["outputs_saved_count"] == 500
        assert on_done["data"]["outputs_failed_count"] == 0

        rows = _all_rows(stack, batch_id)
        assert len(rows) == 500 and all(r["status"] == "completed" for r in rows)
        names = set()
        for row in rows:
            (saved,) = row["saved_outputs"]
            name = saved["key"].split("/")[2]
            names.add(name)
            assert saved["key"] == f"outputs/{batch_id}/{name}/output_0.png"
            expected = Media(f"{row['run_id']}/output_0", "imageUrl", OUTPUT_BYTES).digest()
            got = stack.s3.get_object(Bucket=stack.info["bucket"], Key=saved["key"])
            body = got["Body"].read()
            assert hashlib.sha256(body).hexdigest() == saved["sha256"] == expected
            assert (saved["bytes"], got["ContentType"]) == (OUTPUT_BYTES, "image/png")
            modified = parsedate_to_datetime(got["ResponseMetadata"]["HTTPHeaders"]["last-modified"])
            assert modified.timestamp() <= sent_at  # in the bucket before the on-done was sent
        assert len(names) == 500  # one path-safe, unique name each
        assert "shared_name" in names and "___" in names and "sku-7" in names
        listed = stack.s3.list_objects_v2(Bucket=stack.info["bucket"], Prefix=f"outputs/{batch_id}/")
        assert listed["KeyCount"] == 500

        # The results CSV names each row's saved keys.
        results = stack.s3.get_object(Bucket=stack.info["bucket"], Key=finished["results"]["csv_key"])
        table = list(csv.DictReader(io.StringIO(results["Body"].read().decode("utf-8"))))
        by_run = {r["run_id"]: r for r in rows}
        for line in table:
            assert json.loads(line["saved_outputs"]) == [by_run[line["run_id"]]["saved_outputs"][0]["key"]]

        # `rowcall outputs` writes the same bytes locally, laid out as in the bucket.
        out = tmp_path / "out"
        ran = subprocess.run(
            [str(ROWCALL), "outputs", batch_id, "-o", str(out)],
            capture_output=True,
            timeout=120,
            env={"ROWCALL_STATE_DIR": str(stack.state_dir), "PATH": "/usr/bin:/bin", "NO_COLOR": "1"},
            check=False,
        )
        assert ran.returncode == 0, ran.stderr.decode()
        local = sorted(p for p in out.rglob("*") if p.is_file())
        assert len(local) == 500
        for row in rows:
            (saved,) = row["saved_outputs"]
            path = out / saved["key"].removeprefix(f"outputs/{batch_id}/")
            assert hashlib.sha256(path.read_bytes()).hexdigest() == saved["sha256"]
        assert stack.provider_stats()["media_gets"] >= 500
    finally:
        hook.close()


def test_saving_off_leaves_outputs_at_the_provider(stack: LocalStack) -> None:
    key = "uploads/e2e-outputs-off.csv"
    stack.s3.put_object(
        Bucket=stack.info["bucket"], Key=key, Body=b"prompt\na\nb\n", Metadata={"save-outputs": "off"}
    )
    batch_id = stack.batch_for(key)["batch_id"]
    finished = _watch_until_finished(stack, batch_id, 120)
    assert finished["status"] == "completed" and finished["outputs_saved_count"] == 0
    rows = _all_rows(stack, batch_id)
    assert [r["saved_outputs"] for r in rows] == [[], []]
    listed = stack.s3.list_objects_v2(Bucket=stack.info["bucket"], Prefix=f"outputs/{batch_id}/")
    assert listed["KeyCount"] == 0


def test_an_output_gone_before_it_is_saved_is_given_up_and_the_batch_completes(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    # Outputs gone almost at once: no copy can be made, each is given up with its reason.
    with running_stack(
        tmp_path_factory.mktemp("rowcall-outputs-gone"),
        "--provider-delay-ms",
        "5:20",
        "--provider-output-ttl-s",
        "0.001",
    ) as gone:
        key = "uploads/e2e-outputs-gone.csv"
        gone.s3.put_object(
            Bucket=gone.info["bucket"],
            Key=key,
            Body=b"sku,prompt\nk1,a\nk2,b\n",
            Metadata={"key-column": "sku"},
        )
        batch_id = gone.batch_for(key)["batch_id"]
        finished = _watch_until_finished(gone, batch_id, 120)
        assert (finished["status"], finished["completed_count"]) == ("completed", 2)
        assert (finished["outputs_saved_count"], finished["outputs_failed_count"]) == (0, 2)
        for row in _all_rows(gone, batch_id):
            assert row["status"] == "completed"
            assert row["saved_outputs"] == [
                {"output_id": "output_0", "error": "the output is gone (HTTP 404)"}
            ]


def test_an_upload_repeated_copies_its_saved_outputs_inside_the_bucket(stack: LocalStack) -> None:
    """Reuse with saving on: the second batch's outputs are the first's saved objects copied
    under its own prefix (no provider request, not even for the media); a row whose earlier
    copy was deleted meanwhile runs again."""
    body = b"sku,prompt\n" + b"".join(f"copy-{n},a copied lantern {n}\n".encode() for n in range(4))
    bucket = stack.info["bucket"]

    def upload(name: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        key = f"uploads/e2e-outputs-copied-{name}.csv"
        stack.s3.put_object(
            Bucket=bucket, Key=key, Body=body, Metadata={"key-column": "sku", "save-outputs": "on"}
        )
        batch = _watch_until_finished(stack, stack.batch_for(key)["batch_id"], 180)
        assert (batch["status"], batch["completed_count"], batch["outputs_saved_count"]) == (
            "completed",
            4,
            4,
        )
        return batch, {row["key"]: row for row in _all_rows(stack, batch["batch_id"])}

    _, first_rows = upload("first")
    stats = stack.provider_stats()
    second, second_rows = upload("second")
    assert second["reused_count"] == 4
    after = stack.provider_stats()
    assert (after["creates"], after["media_gets"]) == (stats["creates"], stats["media_gets"])
    for sku, row in second_rows.items():
        (saved,) = row["saved_outputs"]
        (was,) = first_rows[sku]["saved_outputs"]
        assert saved["key"] == f"outputs/{second['batch_id']}/{sku}/output_0.png" != was["key"]
        got = stack.s3.get_object(Bucket=bucket, Key=saved["key"])
        assert hashlib.sha256(got["Body"].read()).hexdigest() == saved["sha256"] == was["sha256"]
        assert got["ContentType"] == "image/png"

    stack.s3.delete_object(Bucket=bucket, Key=first_rows["copy-2"]["saved_outputs"][0]["key"])
    third, third_rows = upload("third")
    assert third["reused_count"] == 3 and stack.provider_stats()["creates"] == stats["creates"] + 1
    assert third_rows["copy-2"]["reused_from"] is None and third_rows["copy-2"]["run_id"]
    (saved,) = third_rows["copy-2"]["saved_outputs"]
    expected = Media(f"{third_rows['copy-2']['run_id']}/output_0", "imageUrl", OUTPUT_BYTES).digest()
    assert saved["sha256"] == expected
