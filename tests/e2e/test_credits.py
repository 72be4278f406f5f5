"""Credits end to end (contract §3, §4, §5): the pre-flight reads the technique once and refuses a
file that does not fit it before any run; a budget below the estimate pauses the batch before its
first run and a resume with a higher budget finishes it, charged exactly what the provider
charged; `max-failed-percent` pauses a failing batch early. Uploads go through POST /uploads and
a plain presigned PUT carrying only `Content-Type` and `Content-Length`."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import LocalStack, running_stack

pytestmark = pytest.mark.e2e

PORTRAIT_COST = 0.25
CATALOG = [
    {
        "technique_id": "portrait",
        "name": "Portrait",
        "inputs": [
            {"id": "prompt", "name": "Prompt", "type": "text"},
            {"id": "photo", "name": "Photo", "type": "imageUrl"},
            {"id": "style", "name": "Style", "type": "text", "optional": True},
        ],
        "outputs": [{"id": "output_0", "name": "Image", "type": "imageUrl"}],
        "run_cost": PORTRAIT_COST,
    },
    {
        "technique_id": "sketch",
        "name": "Sketch",
        "inputs": [{"id": "prompt", "name": "Prompt", "type": "text"}],
        "outputs": [{"id": "output_0", "name": "Image", "type": "imageUrl"}],
        "run_cost": 0.01,
    },
]
FAIL_RATE = 0.6


@pytest.fixture(scope="module")
def costly(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    state: Path = tmp_path_factory.mktemp("rowcall-credits")
    catalog = state / "techniques.json"
    catalog.write_text(json.dumps(CATALOG))
    flags = (
        "--provider-techniques",
        str(catalog),
        "--provider-run-cost",
        "0.03",
        "--provider-delay-ms",
        "100:300",
        "--provider-fail-rate",
        str(FAIL_RATE),
        # Starts follow finishes, so a threshold has finished rows to judge before every row started.
        "--max-in-flight",
        "3",
    )
    with running_stack(state, *flags) as started:
        yield started


def technique_stats(stack: LocalStack, technique_id: str) -> dict[str, Any]:
    answer = httpx.get(
        f"{stack.info['provider_url']}/_stats", params={"technique_id": technique_id}, timeout=10
    )
    stats: dict[str, Any] = answer.json()
    return stats


def plain_upload(stack: LocalStack, name: str, body: str, **metadata: Any) -> str:
    """POST /uploads, then the PUT a browser's XHR makes: Content-Type and Content-Length only."""
    data = body.encode()
    with stack.api as api:
        granted = api.post("/uploads", json={"filename": name, "size_bytes": len(data), **metadata})
    assert granted.status_code == 200, granted.text
    grant = granted.json()
    put = httpx.put(
        grant["upload_url"],
        content=data,
        headers={"Content-Type": "text/csv", "Content-Length": str(len(data))},
    )
    assert put.status_code == 200, put.text
    assert set(put.request.headers) - {"host", "accept", "accept-encoding", "connection", "user-agent"} == {
        "content-type",
        "content-length",
    }
    return str(grant["key"])


def csv_text(rows: list[list[str]]) -> str:
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def test_a_file_missing_a_required_input_fails_before_any_run(costly: LocalStack) -> None:
    before = costly.provider_stats()
    key = plain_upload(
        costly,
        "no-photo.csv",
        csv_text([["sku", "prompt", "mood"], ["A", "a cat", "calm"], ["B", "a dog", "wild"]]),
        technique_id="portrait",
        key_column="sku",
    )
    batch = costly.wait_terminal(costly.batch_for(key)["batch_id"], timeout_s=60)
    assert (batch["status"], batch["reason"]) == ("failed", "inputs_mismatch")
    detail = batch["reason_detail"]
    assert "missing required input 'photo'" in detail and "unknown input 'mood'" in detail, detail
    assert "'style'" not in detail.split("(technique")[0]  # optional: not a problem
    assert batch["total_count"] is None and batch["run_cost_usd"] is None
    assert technique_stats(costly, "portrait")["creates"] == 0
    after = costly.provider_stats()
    assert after["creates"] == before["creates"]
    assert after["technique_gets"] >= before["technique_gets"] + 1


def test_a_budget_below_the_estimate_pauses_before_the_first_run_until_raised(costly: LocalStack) -> None:
    rows = [["sku", "prompt", "photo"]]
    rows += [[f"P{n}", f"portrait {n}", f"https://img.example/{n}.png"] for n in range(8)]
    rows += [
        ["BAD-URL", "portrait x", "http://img.example/x.png"],
        ["NO-PROMPT", "", "https://img.example/y.png"],
    ]
    key = plain_upload(
        costly,
        "portraits.csv",
        csv_text(rows),
        technique_id="portrait",
        key_column="sku",
        max_cost_usd=1.0,
        batch_name="budgeted portraits",
    )
    batch_id = costly.batch_for(key)["batch_id"]
    paused = costly.wait_batch(batch_id, lambda b: b["status"] in ("paused", "failed", "completed"), 60)
    assert (paused["status"], paused["reason"]) == ("paused", "over_budget"), paused
    # The metadata came from the grant, not from signed headers: name and budget are the request's.
    assert paused["name"] == "budgeted portraits" and paused["max_cost_usd"] == 1.0
    assert paused["run_cost_usd"] == PORTRAIT_COST and paused["total_count"] == 8
    assert paused["estimated_cost_usd"] == pytest.approx(8 * PORTRAIT_COST)
    assert paused["charged_cost_usd"] == 0 and "over the budget" in paused["reason_detail"]
    with costly.api as api:
        errors = api.get(f"/batches/{batch_id}/row-errors").json()["items"]
    assert sorted(e["code"] for e in errors) == ["invalid_input_url", "missing_input"]
    time.sleep(1.0)  # long enough for a wrongly sent chunk to have started runs
    assert technique_stats(costly, "portrait")["creates"] == 0

    with costly.api as api:
        refused = api.post(f"/batches/{batch_id}/resume", json={"max_cost_usd": -1})
        assert refused.status_code == 400
        resumed = api.post(f"/batches/{batch_id}/resume", json={"max_cost_usd": 2.5})
        assert resumed.status_code == 202, resumed.text
        assert resumed.json()["max_cost_usd"] == 2.5
    done = costly.wait_terminal(batch_id, timeout_s=180)
    assert done["status"] in ("completed", "partial") and done["completed_count"] + done["failed_count"] == 8
    stats = technique_stats(costly, "portrait")
    assert stats["creates"] == 8 and stats["completed"] == done["completed_count"]
    assert done["charged_cost_usd"] == pytest.approx(stats["charged_cost_usd"], abs=1e-9)
    assert done["charged_cost_usd"] == pytest.approx(done["completed_count"] * PORTRAIT_COST, abs=1e-9)
    with costly.api as api:
        listed = api.get(f"/batches/{batch_id}/rows", params={"limit": 100}).json()["items"]
    charged = {r["key"]: r["charged_cost_usd"] for r in listed}
    assert sum(charged.values()) == pytest.approx(done["charged_cost_usd"], abs=1e-9)
    assert all(r["charged_cost_usd"] == (PORTRAIT_COST if r["status"] == "completed" else 0) for r in listed)
    assert all(r["reused_from"] is None and isinstance(r["saved_outputs"], list) for r in listed)


def test_max_failed_percent_pauses_a_failing_batch_early(costly: LocalStack) -> None:
    total = 80
    rows = [["sku", "prompt"]] + [[f"F{n}", f"flaky {n}"] for n in range(total)]
    key = plain_upload(
        costly,
        "flaky.csv",
        csv_text(rows),
        technique_id="flaky-open",
        key_column="sku",
        max_failed_percent=30,
    )
    batch_id = costly.batch_for(key)["batch_id"]
    paused = costly.wait_batch(batch_id, lambda b: b["status"] in ("paused", "completed", "partial"), 120)
    assert (paused["status"], paused["reason"]) == ("paused", "failure_threshold"), paused
    assert "max-failed-percent 30" in paused["reason_detail"]
    # Runs in flight finish and are recorded; then nothing more starts.
    settled = costly.wait_batch(
        batch_id,
        lambda b: (
            b["completed_count"] + b["failed_count"] == technique_stats(costly, "flaky-open")["creates"]
        ),
        60,
    )
    creates = technique_stats(costly, "flaky-open")["creates"]
    finished = settled["completed_count"] + settled["failed_count"]
    assert 20 <= finished == creates < total, (finished, creates)
    assert settled["failed_count"] * 100 > 30 * finished
    assert settled["charged_cost_usd"] == pytest.approx(settled["completed_count"] * 0.03, abs=1e-9)
    time.sleep(1.5)
    assert technique_stats(costly, "flaky-open")["creates"] == creates
    with costly.api as api:
        assert api.post(f"/batches/{batch_id}/cancel").status_code == 202
    assert costly.wait_terminal(batch_id, timeout_s=60)["status"] == "canceled"
