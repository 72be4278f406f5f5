"""`rowcall ui`'s server without a browser: what it proxies, and what it refuses to other sites."""

from __future__ import annotations

import io
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rowcall_client.api import ApiError
from rowcall_client.cli import main
from rowcall_client.ui.server import HOST, TOKEN_HEADER, ResultFile, ResultMissing, StatusServer

BATCH = {
    "batch_id": "b_1",
    "name": "prices.csv",
    "status": "partial",
    "total_count": 3,
    "completed_count": 2,
    "failed_count": 1,
    "pending_count": 0,
    "rows_skipped": 0,
    "results": {"csv_key": "results/b_1/results.csv", "errors_key": "results/b_1/row-errors.csv"},
}
STACK_JSON = {
    "aws_endpoint_url": "http://127.0.0.1:1",
    "region": "us-east-1",
    "bucket": "b",
    "api_url": "http://127.0.0.1:1",
    "api_token": "t",
}


class FakeApi:
    """Answers like the management API and records every call; `refuse` makes the next call raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.refuse: ApiError | None = None
        running = {**BATCH, "batch_id": "b_new", "status": "running", "results": {}}
        self.batches = {"b_1": BATCH, "b_new": running}

    def _answer(self, call: tuple[Any, ...], value: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(call)
        if self.refuse is not None:
            raise self.refuse
        return value

    def list_batches(self, limit: int = 20, cursor: str | None = None) -> dict[str, Any]:
        page = {"items": list(self.batches.values()), "next_cursor": None}
        return self._answer(("list", limit, cursor), page)

    def get_batch(self, batch_id: str) -> dict[str, Any]:
        if batch_id not in self.batches:
            raise ApiError(404, "batch_not_found", f"no batch {batch_id!r}")
        return self._answer(("get", batch_id), self.batches[batch_id])

    def rows(
        self, batch_id: str, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        return self._answer(("rows", batch_id, status, limit, cursor), {"items": [], "next_cursor": None})

    def row_errors(
        self, batch_id: str, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        return self._answer(("row_errors", batch_id, limit, cursor), {"items": [], "next_cursor": None})

    def reprocess(self, batch_id: str, row_ids: list[str] | None = None) -> dict[str, Any]:
        return self._answer(("reprocess", batch_id, row_ids), {**BATCH, "status": "running"})

    def cancel(self, batch_id: str) -> dict[str, Any]:
        return self._answer(("cancel", batch_id), {**BATCH, "status": "running"})

    def resume(self, batch_id: str, max_cost_usd: float | None = None) -> dict[str, Any]:
        call = ("resume", batch_id) if max_cost_usd is None else ("resume", batch_id, max_cost_usd)
        return self._answer(call, {**BATCH, "status": "running"})


class FakeResults:
    def __init__(self) -> None:
        self.objects = {"results/b_1/results.csv": b"sku,status\nA,completed\n" * 5000}

    def open(self, key: str) -> ResultFile:
        if key not in self.objects:
            raise ResultMissing(f"{key} does not exist")
        body = self.objects[key]
        return ResultFile(io.BytesIO(body), len(body))


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
def server(api: FakeApi) -> Iterator[StatusServer]:
    started = StatusServer(api, FakeResults(), "local <test>", port=0)
    thread = threading.Thread(target=started.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield started
    finally:
        started.shutdown()
        started.server_close()
        thread.join(5)


@pytest.fixture
def page(server: StatusServer) -> Iterator[httpx.Client]:
    """What the page's own script sends: its token, same origin."""
    headers = {TOKEN_HEADER: server.token, "Origin": server.url.rstrip("/"), "Sec-Fetch-Site": "same-origin"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=5) as client:
        yield client


def test_it_listens_on_loopback_only(server: StatusServer) -> None:
    assert server.server_address[0] == HOST == "127.0.0.1"
    assert server.url == f"http://127.0.0.1:{server.server_port}/"


def test_the_page_carries_its_token_and_forbids_framing(server: StatusServer) -> None:
    answer = httpx.get(server.url, timeout=5)
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    token = re.search(r'<meta name="rowcall-token" content="([^"]+)">', answer.text)
    assert token is not None and token.group(1) == server.token
    assert "local &lt;test&gt;" in answer.text and "<test>" not in answer.text  # the stack name is escaped
    assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
    assert answer.headers["x-frame-options"] == "DENY"
    for name, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        static = httpx.get(server.url + "static/" + name, timeout=5)
        assert static.status_code == 200 and static.content
        assert static.headers["content-type"].startswith(kind)
    assert httpx.get(server.url + "static/server.py", timeout=5).status_code == 404


def test_another_server_has_its_own_token(api: FakeApi, server: StatusServer) -> None:
    other = StatusServer(api, FakeResults(), "x", port=0)
    try:
        assert other.token != server.token and len(server.token) >= 32
    finally:
        other.server_close()


def test_reads_are_proxied_with_their_parameters(page: httpx.Client, api: FakeApi) -> None:
    listed = page.get("/api/batches", params={"limit": "5", "cursor": "c1"})
    assert listed.status_code == 200 and [b["batch_id"] for b in listed.json()["items"]] == ["b_1", "b_new"]
    assert page.get("/api/batches/b_1").json() == BATCH
    assert page.get("/api/batches/b_1/rows", params={"status": "failed", "limit": "50"}).status_code == 200
    assert page.get("/api/batches/b%2F1/row-errors", params={"cursor": "c2"}).status_code == 200
    assert api.calls == [
        ("list", 5, "c1"),
        ("get", "b_1"),
        ("rows", "b_1", "failed", 50, None),
        ("row_errors", "b/1", None, "c2"),  # an escaped slash stays inside the id
    ]
    bad = page.get("/api/batches", params={"limit": "ten"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_parameter"


def test_actions_are_proxied_as_json_posts(page: httpx.Client, api: FakeApi) -> None:
    named = page.post("/api/batches/b_1/reprocess", json={"row_ids": ["r1", "r2"]})
    assert named.status_code == 202 and named.json()["status"] == "running"
    assert page.post("/api/batches/b_1/reprocess", json={}).status_code == 202
    assert page.post("/api/batches/b_1/cancel", json={}).status_code == 202
    assert page.post("/api/batches/b_1/resume", json={}).status_code == 202
    assert api.calls == [
        ("reprocess", "b_1", ["r1", "r2"]),
        ("reprocess", "b_1", None),
        ("cancel", "b_1"),
        ("resume", "b_1"),
    ]
    for path, body in (("reprocess", {"row_ids": "r1"}), ("reprocess", {"rows": []}), ("cancel", {"x": 1})):
        refused = page.post(f"/api/batches/b_1/{path}", json=body)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_body"
    assert page.get("/api/batches/b_1/cancel").status_code == 405
    assert len(api.calls) == 4


def test_the_budget_button_resumes_with_a_new_budget(page: httpx.Client, api: FakeApi) -> None:
    assert page.post("/api/batches/b_1/resume", json={"max_cost_usd": 12.5}).status_code == 202
    assert api.calls == [("resume", "b_1", 12.5)]
    for body in ({"max_cost_usd": -1}, {"max_cost_usd": "lots"}, {"budget": 3}):
        refused = page.post("/api/batches/b_1/resume", json=body)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_body"
    assert len(api.calls) == 1


def test_api_errors_reach_the_page_in_the_api_shape(page: httpx.Client, api: FakeApi) -> None:
    api.refuse = ApiError(404, "not_found", "no route POST /batches/b_1/reprocess")
    missing = page.post("/api/batches/b_1/reprocess", json={})
    assert missing.status_code == 404
    no_route = {"code": "not_found", "message": "no route POST /batches/b_1/reprocess"}
    assert missing.json() == {"error": no_route}
    api.refuse = ApiError(409, "wrong_state", "batch b_1 is running", {"status": "running"})
    conflict = page.post("/api/batches/b_1/cancel", json={})
    assert conflict.status_code == 409 and conflict.json()["error"]["fields"] == {"status": "running"}
    api.refuse = ApiError(0, "unreachable", "cannot reach http://127.0.0.1:1/batches")
    down = page.get("/api/batches")
    assert down.status_code == 502 and down.json()["error"]["code"] == "unreachable"


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({TOKEN_HEADER: ""}, "forbidden_token"),
        ({TOKEN_HEADER: "guessed"}, "forbidden_token"),
        ({"Origin": "https://evil.example"}, "forbidden_origin"),
        ({"Origin": "null"}, "forbidden_origin"),
        ({"Sec-Fetch-Site": "cross-site"}, "forbidden_origin"),
        ({"Sec-Fetch-Site": "same-site"}, "forbidden_origin"),
        ({"Host": "evil.example"}, "forbidden_host"),  # DNS rebinding: the name is the attacker's
    ],
)
def test_other_sites_can_neither_act_nor_read(
    page: httpx.Client, api: FakeApi, server: StatusServer, headers: dict[str, str], code: str
) -> None:
    if code == "forbidden_host":
        headers = {"Host": f"evil.example:{server.server_port}"}
    acted = page.post("/api/batches/b_1/cancel", json={}, headers=headers)
    read = page.get("/api/batches", headers=headers)
    for answer in (acted, read):
        assert answer.status_code == 403 and answer.json()["error"]["code"] == code
    assert api.calls == []


def test_a_post_that_a_form_could_send_is_refused(page: httpx.Client, api: FakeApi) -> None:
    # Forms send text/plain, urlencoded or multipart without a preflight: never JSON.
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        answer = page.post("/api/batches/b_1/cancel", content=b"{}", headers={"Content-Type": content_type})
        assert answer.status_code == 415, content_type
    assert api.calls == []


def test_no_cors_preflight_is_granted(page: httpx.Client) -> None:
    answer = page.request(
        "OPTIONS",
        "/api/batches/b_1/cancel",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert answer.status_code == 403 and "access-control-allow-origin" not in answer.headers


def test_localhost_is_this_server_too(page: httpx.Client, server: StatusServer) -> None:
    local = f"localhost:{server.server_port}"
    answer = page.get("/api/batches", headers={"Host": local, "Origin": f"http://{local}"})
    assert answer.status_code == 200


def test_results_download_with_the_page_token(server: StatusServer, api: FakeApi) -> None:
    base = server.url + "download/b_1/"
    with httpx.Client(timeout=5) as browser:
        got = browser.get(base + "results.csv", params={"token": server.token})
        assert got.status_code == 200 and got.content == FakeResults().objects["results/b_1/results.csv"]
        assert got.headers["content-disposition"] == 'attachment; filename="b_1-results.csv"'
        assert browser.get(base + "results.csv", params={"token": "nope"}).status_code == 403
        assert browser.get(base + "results.csv").status_code == 403
        gone = browser.get(base + "row-errors.csv", params={"token": server.token})
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "results_missing"
        early = browser.get(server.url + "download/b_new/results.csv", params={"token": server.token})
        assert early.status_code == 404 and early.json()["error"]["code"] == "results_not_ready"
        unknown = browser.get(server.url + "download/b_x/results.csv", params={"token": server.token})
        assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "batch_not_found"
        # Only the two result files of a batch: no key or path of the browser's choosing.
        other = browser.get(server.url + "download/b_1/template.yaml", params={"token": server.token})
        assert other.status_code == 404


def test_rowcall_ui_refuses_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--state-dir", str(tmp_path), "ui", "--port", "0"]) == 1
    assert "no local stack is running" in capsys.readouterr().err
    (tmp_path / "stack.json").write_text(json.dumps(STACK_JSON))
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["--state-dir", str(tmp_path), "ui", "--port", str(port)]) == 1
    error = capsys.readouterr().err
    assert f"cannot serve on 127.0.0.1:{port}" in error and "Traceback" not in error
