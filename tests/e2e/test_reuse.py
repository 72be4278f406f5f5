"""Reuse through the real local stack: an edited CSV uploaded again re-runs only what changed."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import pytest

from .conftest import LocalStack

pytestmark = pytest.mark.e2e
ROWS = 200
EDITED = {17, 101, 188}


def csv_body(edited: set[int] = frozenset()) -> bytes:  # type: ignore[assignment]
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(["sku", "prompt", "style"])
    for n in range(ROWS):
        writer.writerow([f"sku-{n:03d}", f"a lantern no. {n}" + (" (edited)" if n in edited else ""), "ink"])
    return out.getvalue().encode()


def upload(stack: LocalStack, key: str, body: bytes, **meta: str) -> dict[str, Any]:
    stack.s3.put_object(
        Bucket=stack.info["bucket"], Key=key, Body=body, Metadata={"key-column": "sku", **meta}
    )
    batch = stack.batch_for(key)
    done = stack.wait_batch(batch["batch_id"], lambda b: bool(b["results"]["csv_key"]), timeout_s=240)
    assert (done["status"], done["completed_count"], done["failed_count"]) == ("completed", ROWS, 0), done
    return done


def results(stack: LocalStack, batch: dict[str, Any]) -> dict[str, dict[str, str]]:
    body = stack.s3.get_object(Bucket=stack.info["bucket"], Key=batch["results"]["csv_key"])["Body"].read()
    return {row["sku"]: row for row in csv.DictReader(io.StringIO(body.decode("utf-8"), newline=""))}


def rows(stack: LocalStack, batch_id: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    cursor = None
    with stack.api as api:
        while True:
            page = api.get(
                f"/batches/{batch_id}/rows", params={"limit": 100, **({"cursor": cursor} if cursor else {})}
            ).json()
            found.update((row["key"], row) for row in page["items"])
            cursor = page["next_cursor"]
            if not cursor:
                return found


def test_an_edited_csv_uploaded_again_runs_only_the_rows_that_changed(stack: LocalStack) -> None:
    first = upload(stack, "uploads/reuse-first.csv", csv_body())
    first_rows = rows(stack, first["batch_id"])
    creates = stack.provider_stats()["creates"]

    second = upload(stack, "uploads/reuse-edited.csv", csv_body(EDITED))
    assert stack.provider_stats()["creates"] - creates == len(EDITED)
    assert second["reused_count"] == ROWS - len(EDITED)
    table = results(stack, second)
    assert len(table) == ROWS
    edited_keys = {f"sku-{n:03d}" for n in EDITED}
    for sku, row in table.items():
        assert row["status"] == "completed" and json.loads(row["outputs"]), row
        if sku in edited_keys:
            assert row["reused_from"] == "" and row["run_id"]
        else:
            assert row["reused_from"] == first["batch_id"]
            assert float(row["charged_cost_usd"]) == 0
    api_rows = rows(stack, second["batch_id"])
    reused = {sku: row for sku, row in api_rows.items() if row["reused_from"] is not None}
    assert set(reused) == set(table) - edited_keys
    for sku, row in reused.items():
        source = first_rows[sku]
        assert row["reused_from"] == {
            "batch_id": first["batch_id"],
            "row_id": source["row_id"],
            "run_id": source["run_id"],
        }
        assert row["outputs"] == source["outputs"] and row["charged_cost_usd"] == 0

    creates = stack.provider_stats()["creates"]
    third = upload(stack, "uploads/reuse-off.csv", csv_body(EDITED), reuse="off")
    assert stack.provider_stats()["creates"] - creates == ROWS
    assert third["reused_count"] == 0
    assert all(row["reused_from"] == "" for row in results(stack, third).values())
