"""The `rowcall` console script, run as a user runs it, against one local stack.

Every command's `--json` is compared with the API's own answer; every error is one line on stderr,
a non-zero exit and no traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import LocalStack, running_stack

pytestmark = pytest.mark.e2e

ROWCALL = Path(sys.executable).with_name("rowcall")
# One row (r2) has a cell too many: skipped as a row error, the batch goes on.
SMALL_CSV = 'id,prompt\nr1,a fox\nr2,a cat,extra\nr3,"a dog, asleep"\nr4,an owl\n'


@dataclass
class Ran:
    code: int
    out: str
    err: str

    def one_error_line(self) -> str:
        assert self.code != 0, self.out
        assert "Traceback" not in self.err, self.err
        lines = self.err.strip().splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("rowcall: ")
        return lines[0]


def run(stack: LocalStack, *args: str, timeout_s: float = 90) -> Ran:
    env = {"ROWCALL_STATE_DIR": str(stack.state_dir), "PATH": "/usr/bin:/bin", "NO_COLOR": "1"}
    # Bytes, decoded as is: results.csv has CRLF line ends that text mode would translate.
    done = subprocess.run([str(ROWCALL), *args], capture_output=True, timeout=timeout_s, env=env, check=False)
    return Ran(done.returncode, done.stdout.decode(), done.stderr.decode())


def api_get(stack: LocalStack, path: str, **params: Any) -> Any:
    with stack.api as api:
        response = api.get(path, params=params or None)
    return response.json()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """Each function on its own role: the presigned PUT is authorized as the webhook function's role."""
    state = tmp_path_factory.mktemp("rowcall-cli")
    with running_stack(state, "--provider-delay-ms", "5:60", "--enforce-iam", "on") as started:
        yield started


@pytest.fixture(scope="module")
def small(stack: LocalStack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Ran]]:
    """`rowcall submit --wait` of a small CSV; the batch id and what the command printed."""
    csv = tmp_path_factory.mktemp("cli") / "small.csv"
    csv.write_text(SMALL_CSV)
    ran = run(stack, "submit", str(csv), "--key-column", "id", "--name", "cli small", "--wait")
    batch_id = ran.out.strip().splitlines()[0]
    stack.wait_notified(batch_id)
    yield batch_id, ran


def test_submit_wait_shows_progress_and_exits_0_on_completed(
    stack: LocalStack, small: tuple[str, Ran]
) -> None:
    batch_id, ran = small
    assert ran.code == 0, ran.err
    assert ran.out.strip() == batch_id
    assert f"{batch_id}: completed: 3 done, 0 failed of 3" in ran.err
    assert " done, " in ran.err.splitlines()[0] and "rows/s" in ran.err
    batch = api_get(stack, f"/batches/{batch_id}")
    assert (batch["status"], batch["name"], batch["rows_skipped"]) == ("completed", "cli small", 1)
    assert batch["source"]["key"].startswith("uploads/") and batch["source"]["key"].endswith("/small.csv")


def test_the_upload_was_put_as_the_webhook_functions_role(stack: LocalStack, small: tuple[str, Ran]) -> None:
    decisions = httpx.get(stack.info["aws_endpoint_url"] + "/_rowcall/iam", timeout=10).json()
    assert decisions["denied"] == []
    assert "s3:PutObject" in decisions["allowed"]["fn-WebhookFunction"]


def test_submit_wait_exits_non_zero_when_the_batch_fails(stack: LocalStack, tmp_path: Path) -> None:
    csv = tmp_path / "doomed.csv"
    csv.write_text("prompt\na fox\n")
    ran = run(stack, "submit", str(csv), "--technique", "missing-technique", "--wait")
    assert ran.code == 3, ran.err
    assert "failed (technique_not_found)" in ran.err


def test_list_and_status_json_are_the_apis_json(stack: LocalStack, small: tuple[str, Ran]) -> None:
    batch_id, _ = small
    listed = run(stack, "list", "--json", "--limit", "5")
    assert listed.code == 0, listed.err
    assert json.loads(listed.out) == api_get(stack, "/batches", limit=5)
    status = run(stack, "status", batch_id, "--json")
    assert json.loads(status.out) == api_get(stack, f"/batches/{batch_id}")
    table = run(stack, "list")
    assert batch_id in table.out and "completed" in table.out and "3/0/3" in table.out
    shown = run(stack, "status", batch_id)
    assert batch_id in shown.out and "cli small" in shown.out


def test_results_to_a_file_and_to_stdout(stack: LocalStack, small: tuple[str, Ran], tmp_path: Path) -> None:
    batch_id, _ = small
    key = api_get(stack, f"/batches/{batch_id}")["results"]["csv_key"]
    stored = stack.s3.get_object(Bucket=stack.info["bucket"], Key=key)["Body"].read().decode()
    assert stored.splitlines()[0] == (
        "id,prompt,status,run_id,outputs,error_code,error_message,charged_cost_usd,reused_from,saved_outputs"
    )
    target = tmp_path / "results.csv"
    assert run(stack, "results", batch_id, "-o", str(target)).code == 0
    assert target.read_bytes().decode() == stored
    assert run(stack, "results", batch_id).out == stored


def test_every_error_is_one_line_and_a_non_zero_exit(stack: LocalStack, tmp_path: Path) -> None:
    """What the stack refuses, or its absence (bad arguments: tests/unit/test_cli.py)."""
    assert "404 batch_not_found" in run(stack, "status", "b_nope").one_error_line()
    assert "409 batch_not_paused" in run(stack, "resume", *_any_batch(stack)).one_error_line()
    assert "no such file" in run(stack, "submit", str(tmp_path / "absent.csv")).one_error_line()
    no_stack = run(stack, "--state-dir", str(tmp_path), "list").one_error_line()
    assert "no local stack is running" in no_stack
    csv = tmp_path / "typed.csv"
    csv.write_text("photo\nhttps://example.com/a.png\n")
    before = api_get(stack, "/batches", limit=100)["items"]
    refused = run(stack, "submit", str(csv), "--input-types", "photo=picture").one_error_line()
    assert "400 invalid_metadata: input_types: unknown type(s) ['picture']" in refused
    assert api_get(stack, "/batches", limit=100)["items"] == before  # refused before any upload


def _any_batch(stack: LocalStack) -> list[str]:
    return [api_get(stack, "/batches", limit=1)["items"][0]["batch_id"]]


def test_a_stopped_api_is_one_line(stack: LocalStack, tmp_path: Path) -> None:
    stopped = dict(stack.info) | {"api_url": "http://127.0.0.1:9"}
    (tmp_path / "stack.json").write_text(json.dumps(stopped))
    line = run(stack, "--state-dir", str(tmp_path), "list").one_error_line()
    assert "unreachable: cannot reach http://127.0.0.1:9/batches" in line


def test_rows_and_errors_json_are_the_apis_json(stack: LocalStack, small: tuple[str, Ran]) -> None:
    batch_id, _ = small
    rows = run(stack, "rows", batch_id, "--json")
    assert rows.code == 0, rows.err
    assert json.loads(rows.out) == api_get(stack, f"/batches/{batch_id}/rows")
    assert [r["key"] for r in json.loads(rows.out)["items"]] == ["r1", "r3", "r4"]
    completed = run(stack, "rows", batch_id, "--status", "completed")
    assert all(key in completed.out for key in ("r1", "r3", "r4"))
    errors = run(stack, "errors", batch_id, "--json")
    assert json.loads(errors.out) == api_get(stack, f"/batches/{batch_id}/row-errors")
    assert [(e["line"], e["code"]) for e in json.loads(errors.out)["items"]] == [(3, "column_count")]
    assert "column_count" in run(stack, "errors", batch_id).out


def test_reprocess_a_row_runs_it_again_and_cancel_of_a_finished_batch_is_409(
    stack: LocalStack, small: tuple[str, Ran]
) -> None:
    batch_id, _ = small
    row = api_get(stack, f"/batches/{batch_id}/rows")["items"][0]
    again = run(stack, "reprocess", batch_id, "--rows", row["row_id"])
    assert again.code == 0, again.err
    assert batch_id in again.out
    stack.wait_batch(batch_id, lambda b: b["status"] == "completed", timeout_s=60)
    after = {r["row_id"]: r for r in api_get(stack, f"/batches/{batch_id}/rows")["items"]}
    assert (after[row["row_id"]]["status"], after[row["row_id"]]["attempt"]) == (
        "completed",
        row["attempt"] + 1,
    )
    assert "409" in run(stack, "cancel", batch_id).one_error_line()
