"""The management API's read routes and every error status, through the real local stack.

One stack for the module: chunks of three rows, runs that take 1.5-2.5 s, and credits for six
runs, so a batch of ten pauses with rows running and rows never started, which a resume after
a top-up then finishes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from .conftest import LocalStack, running_stack

pytestmark = pytest.mark.e2e

CREDITS = 6
KEYS = [f"K{n}" for n in range(10)]
# Ten rows, two lines skipped as invalid, one cell over two lines: lines are not row numbers.
CSV = (
    "sku,prompt\n"
    + "".join(f"K{n},prompt {n}\n" for n in range(4))
    + "broken,row,with,extra,fields\n"
    + 'K4,"a prompt\nover two lines"\n'
    + "".join(f"K{n},prompt {n}\n" for n in range(5, 8))
    + "no-comma\n"
    + "K8,prompt 8\nK9,prompt 9\n"
)
LINES = [2, 3, 4, 5, 7, 9, 10, 11, 13, 14]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    flags = ["--chunk-rows", "3", "--provider-delay-ms", "1500:2500", "--provider-credits", str(CREDITS)]
    with running_stack(tmp_path_factory.mktemp("rowcall-api"), *flags) as started:
        yield started


@pytest.fixture(scope="module")
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with stack.api as client:
        yield client


def pages(api: httpx.Client, path: str, **params: Any) -> list[dict[str, Any]]:
    """Every item of a paged listing, following next_cursor."""
    items: list[dict[str, Any]] = []
    cursor = None
    for _ in range(50):
        got = api.get(path, params={**params, **({"cursor": cursor} if cursor else {})})
        assert got.status_code == 200, got.text
        page = got.json()
        assert len(page["items"]) <= params.get("limit", 20)
        items += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items
    raise AssertionError(f"{path} did not end")


def error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and {"code", "message"} <= set(body["error"])
    code: str = body["error"]["code"]
    return code


def test_rows_through_pause_resume_and_completion(stack: LocalStack, api: httpx.Client) -> None:
    key = "uploads/api-rows.csv"
    stack.s3.put_object(
        Bucket=stack.info["bucket"],
        Key=key,
        Body=CSV.encode(),
        Metadata={"reuse": "off", "key-column": "sku"},
    )
    batch_id = stack.batch_for(key)["batch_id"]
    paused = stack.wait_batch(batch_id, lambda b: b["status"] == "paused", 60)
    assert paused["estimated_completion"] is None

    # Paused with the first runs still going (each takes at least 1.5 s): the rows the provider
    # refused were never started.
    rows = pages(api, f"/batches/{batch_id}/rows", limit=4)
    assert [r["key"] for r in rows] == KEYS and [r["line"] for r in rows] == LINES
    assert len({r["row_id"] for r in rows}) == 10
    by_status = {
        s: [r for r in rows if r["status"] == s] for s in ("pending", "running", "completed", "failed")
    }
    assert len(by_status["pending"]) == 10 - CREDITS
    assert len(by_status["running"]) + len(by_status["completed"]) == CREDITS and by_status["running"]
    assert all(r["run_id"] and r["attempt"] == 1 and r["updated_at"] for r in by_status["running"])
    assert all(r["run_id"] is None and r["outputs"] == [] for r in by_status["pending"])
    pending = pages(api, f"/batches/{batch_id}/rows", status="pending", limit=3)
    assert [r["row_id"] for r in pending] == [r["row_id"] for r in by_status["pending"]]

    # The runs started finish and are recorded while the batch stays paused.
    stack.wait_batch(batch_id, lambda b: b["completed_count"] == CREDITS, 60)
    completed = pages(api, f"/batches/{batch_id}/rows", status="completed", limit=2)
    assert len(completed) == CREDITS
    assert all(r["run_id"] and r["outputs"] and r["error_code"] is None for r in completed)

    httpx.post(stack.info["provider_url"] + "/_credits", json={"add": 100}, timeout=10)
    assert api.post(f"/batches/{batch_id}/resume").status_code == 202
    assert error(api.post(f"/batches/{batch_id}/resume"), 409) == "batch_not_paused"
    done = stack.wait_terminal(batch_id, timeout_s=90)
    assert (done["status"], done["completed_count"], done["pending_count"]) == ("completed", 10, 0)
    rows = pages(api, f"/batches/{batch_id}/rows", limit=3)
    assert [r["key"] for r in rows] == KEYS and {r["status"] for r in rows} == {"completed"}
    assert pages(api, f"/batches/{batch_id}/rows", status="failed") == []
    assert pages(api, f"/batches/{batch_id}/rows", status="running", limit=1) == []

    errors = pages(api, f"/batches/{batch_id}/row-errors", limit=1)
    assert [(e["line"], e["code"]) for e in errors] == [(6, "column_count"), (12, "column_count")]
    assert all(e["message"] for e in errors)


def test_every_error_status_in_the_contract_shape(stack: LocalStack, api: httpx.Client) -> None:
    key = "uploads/api-errors.csv"
    stack.s3.put_object(Bucket=stack.info["bucket"], Key=key, Body=b"sku,prompt\nA,a\nB,b\nC,c\nD,d\n")
    batch_id = stack.batch_for(key)["batch_id"]
    rows = f"/batches/{batch_id}/rows"

    # 400: parameters, cursors (garbage, or another listing's), bodies too large are 413.
    for params, field in (
        ({"limit": "0"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"status": "done"}, "status"),
    ):
        response = api.get(rows, params=params)
        assert error(response, 400) == "invalid_parameter" and field in response.json()["error"]["fields"]
    assert error(api.get(rows, params={"cursor": "not-a-cursor"}), 400) == "invalid_cursor"
    other = api.get("/batches", params={"limit": 1}).json()["next_cursor"]
    assert other is not None
    assert error(api.get(rows, params={"cursor": other}), 400) == "invalid_cursor"
    assert (
        error(api.get(f"/batches/{batch_id}/row-errors", params={"cursor": other}), 400) == "invalid_cursor"
    )
    assert error(api.get("/batches", params={"cursor": "nope"}), 400) == "invalid_cursor"
    first = api.get(rows, params={"limit": 1}).json()["next_cursor"]
    assert (
        error(api.get(f"/batches/{batch_id}/row-errors", params={"cursor": first}), 400) == "invalid_cursor"
    )

    # 401: no token, another token, on every management route.
    for path in ("/batches", f"/batches/{batch_id}", rows, f"/batches/{batch_id}/row-errors"):
        assert error(httpx.get(stack.info["api_url"] + path, timeout=10), 401) == "unauthorized"
        wrong = {"Authorization": "Bearer not-the-token"}
        assert (
            error(httpx.get(stack.info["api_url"] + path, headers=wrong, timeout=10), 401) == "unauthorized"
        )

    # 404: unknown batch on each batch route, unknown route.
    for path in ("/batches/b_nope", "/batches/b_nope/rows", "/batches/b_nope/row-errors"):
        assert error(api.get(path), 404) == "batch_not_found"
    assert error(api.post("/batches/b_nope/resume"), 404) == "batch_not_found"
    assert error(api.get("/nothing/here"), 404) == "not_found"
    assert error(api.delete("/batches"), 404) == "not_found"

    # 409: resuming a batch that is not paused.
    assert error(api.post(f"/batches/{batch_id}/resume"), 409) == "batch_not_paused"

    # 413: a management body over 1 MiB, refused before it is read.
    big = api.post(f"/batches/{batch_id}/resume", content=b"x" * (1024 * 1024 + 1))
    assert error(big, 413) == "payload_too_large"
