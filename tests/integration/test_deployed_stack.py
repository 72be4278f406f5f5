"""A small batch end to end on real AWS: presigned upload, the provider's run webhooks, the on-done on
the SNS topic, results in S3, the API through SigV4 and the `rowcall --stack` command line."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from rowcall_client.progress import watch
from rowcall_client.submit import find_batch, upload
from rowcall_client.target import StackTarget

from .conftest import STACK_ENV, OnDoneQueue

pytestmark = pytest.mark.integration

ROWS = [("it-1", "a red fox in fresh snow"), ("it-2", "a lighthouse at dusk"), ("it-3", "an owl at noon")]
BATCH_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def finished(
    deployed: StackTarget, on_done: OnDoneQueue, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    path = tmp_path_factory.mktemp("it") / "integration.csv"
    path.write_text("id,prompt\n" + "".join(f"{k},{p}\n" for k, p in ROWS))
    technique = os.environ.get("ROWCALL_IT_TECHNIQUE_ID")
    with deployed.api() as api:
        grant = upload(api, path, key_column="id", batch_name="integration", technique_id=technique)
        batch = find_batch(api, grant["key"], timeout_s=120)
        final = watch(api, batch["batch_id"], Console(stderr=True), poll_s=2, timeout_s=BATCH_TIMEOUT_S)
    return final


def test_the_batch_completes_every_row(finished: dict[str, Any]) -> None:
    assert finished["status"] == "completed", finished
    assert (finished["total_count"], finished["completed_count"], finished["failed_count"]) == (3, 3, 0)
    assert finished["name"] == "integration"


def test_one_on_done_arrives_on_the_topic(finished: dict[str, Any], on_done: OnDoneQueue) -> None:
    message = on_done.notification(finished["batch_id"], timeout_s=120)
    assert message["type"] == "batch.completed"
    assert message["data"]["completed_count"] == 3


def test_the_results_are_in_the_bucket(deployed: StackTarget, finished: dict[str, Any]) -> None:
    body = deployed.s3().get_object(Bucket=deployed.bucket, Key=finished["results"]["csv_key"])["Body"].read()
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert [(r["id"], r["status"]) for r in rows] == [(k, "completed") for k, _ in ROWS]
    assert all(r["run_id"] and json.loads(r["outputs"]) for r in rows)


def test_an_unsigned_request_is_refused_by_api_gateway(deployed: StackTarget) -> None:
    assert httpx.get(f"{deployed.api_url}/batches", timeout=30).status_code == 403


def test_the_command_line_reads_the_stack_through_sigv4(
    deployed: StackTarget, finished: dict[str, Any]
) -> None:
    rowcall = Path(sys.executable).with_name("rowcall")
    ran = subprocess.run(
        [
            str(rowcall),
            "--stack",
            os.environ[STACK_ENV],
            "--region",
            deployed.region,
            "status",
            finished["batch_id"],
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert ran.returncode == 0, ran.stderr
    with deployed.api() as api:
        assert json.loads(ran.stdout) == api.get_batch(finished["batch_id"])
