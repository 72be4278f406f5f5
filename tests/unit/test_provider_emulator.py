"""The provider emulator over real loopback HTTP: runs, callbacks, faults, credits, stats."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from rowcall_local.provider_emulator import ProviderEmulator, ProviderFaults

API_KEY = "test-provider-key"
FAST_MS = (0, 20)
DEADLINE_S = 5.0

StartEmulator = Callable[..., ProviderEmulator]


class CallbackReceiver:
    """Records every POST body; answers with a configurable status."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        self.content_types: list[str] = []
        self._cond = threading.Condition()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/callbacks/b1/r1?token=t"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(DEADLINE_S)

    def record(self, body: dict[str, Any], content_type: str) -> None:
        with self._cond:
            self.bodies.append(body)
            self.content_types.append(content_type)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float = DEADLINE_S) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.bodies) >= count, timeout)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver.record(body, self.headers.get("Content-Type", ""))

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


def eventually(predicate: Callable[[], bool], timeout: float = DEADLINE_S) -> bool:
    """Polls a condition until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        threading.Event().wait(0.01)
    return True


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    server = CallbackReceiver()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def start_emulator() -> Iterator[StartEmulator]:
    started: list[ProviderEmulator] = []

    def start(**faults: Any) -> ProviderEmulator:
        faults.setdefault("delay_ms", FAST_MS)
        emulator = ProviderEmulator(API_KEY, ProviderFaults(**faults))
        emulator.start()
        started.append(emulator)
        return emulator

    yield start
    for emulator in started:
        emulator.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=DEADLINE_S) as client:
        yield client


def run_body(callback_url: str, key: str = "key-1") -> dict[str, Any]:
    return {
        "inputs": [{"id": "prompt", "type": "text", "value": "a cat"}],
        "mode": "async",
        "callback_url": callback_url,
        "idempotency_key": key,
    }


def create(
    http: httpx.Client,
    emulator: ProviderEmulator,
    body: dict[str, Any],
    technique: str = "tech-1",
    token: str = API_KEY,
) -> httpx.Response:
    url = f"{emulator.url}/techniques/{technique}/runs"
    return http.post(url, json=body, headers={"Authorization": f"Bearer {token}"})


def get_run(http: httpx.Client, emulator: ProviderEmulator, run_id: str) -> httpx.Response:
    url = f"{emulator.url}/techniques/tech-1/runs/{run_id}"
    return http.get(url, headers={"Authorization": f"Bearer {API_KEY}"})


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


def test_create_returns_queued_run_then_completed_callback(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator()
    response = create(http, emulator, run_body(receiver.url))

    assert response.status_code == 201
    run = response.json()
    assert re.fullmatch(r"run_[0-9a-f]{20}", run["run_id"])
    assert run["status"] == "queued"
    assert run["progress"] == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z", run["created_at"])
    assert run["started_at"] is None and run["completed_at"] is None
    assert run["outputs"] == [] and run["charged_cost"] == 0
    assert run["error_code"] is None and run["error_message"] is None

    assert receiver.wait_for(1)
    callback = receiver.bodies[0]
    assert receiver.content_types[0].startswith("application/json")
    assert callback["run_id"] == run["run_id"]
    assert callback["status"] == "completed"
    assert callback["progress"] == 100
    assert callback["started_at"] and callback["completed_at"]
    assert callback["outputs"] == [
        {
            "output_id": "output_0",
            "type": "imageUrl",
            "url": f"https://cdn.provider.invalid/runs/{run['run_id']}/output_0.png",
        }
    ]
    assert get_run(http, emulator, run["run_id"]).json() == callback
    assert eventually(lambda: emulator.stats()["callbacks_sent"] == 1)
    stats = http.get(f"{emulator.url}/_stats").json()
    assert stats == {
        "creates": 1,
        "unique_idempotency_keys": 1,
        "duplicate_creates": 0,
        "gets": 1,
        "max_in_flight": 1,
        "callbacks_sent": 1,
        "callbacks_failed": 0,
    }


@pytest.mark.parametrize("token", ["wrong-key", None])
def test_bad_token_is_401_and_creates_nothing(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client, token: str | None
) -> None:
    emulator = start_emulator()
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    url = f"{emulator.url}/techniques/tech-1/runs"
    response = http.post(url, json=run_body(receiver.url), headers=headers)

    assert response.status_code == 401
    assert error_code(response) == "unauthorized"
    assert emulator.stats()["creates"] == 0
    assert emulator.stats()["unique_idempotency_keys"] == 0
    assert http.get(f"{url}/run_x", headers=headers).status_code == 401


def test_missing_technique_is_404(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator()
    response = create(http, emulator, run_body(receiver.url), technique="missing-x")

    assert response.status_code == 404
    assert error_code(response) == "not_found"
    assert emulator.stats()["creates"] == 1
    assert emulator.stats()["unique_idempotency_keys"] == 0


@pytest.mark.parametrize(
    "change",
    [
        {"mode": "sync"},
        {"callback_url": "ftp://example.com/cb"},
        {"callback_url": "not a url"},
        {"idempotency_key": ""},
        {"idempotency_key": "k" * 256},
        {"inputs": [{"id": "", "type": "text", "value": "x"}]},
        {"inputs": [{"id": "a", "type": "text", "value": 3}]},
        {"inputs": "nope"},
    ],
)
def test_invalid_body_is_422(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client, change: dict[str, Any]
) -> None:
    emulator = start_emulator()
    response = create(http, emulator, {**run_body(receiver.url), **change})

    assert response.status_code == 422
    assert error_code(response) == "validation_error"
    assert response.json()["error"]["message"]
    assert emulator.stats()["unique_idempotency_keys"] == 0


def test_non_json_body_is_422(start_emulator: StartEmulator, http: httpx.Client) -> None:
    emulator = start_emulator()
    url = f"{emulator.url}/techniques/tech-1/runs"
    response = http.post(url, content=b"{nope", headers={"Authorization": f"Bearer {API_KEY}"})

    assert response.status_code == 422
    assert error_code(response) == "validation_error"


def test_repeated_idempotency_key_is_409(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator()
    first = create(http, emulator, run_body(receiver.url, key="same"))
    second = create(http, emulator, run_body(receiver.url, key="same"))

    assert first.status_code == 201
    assert second.status_code == 409
    assert error_code(second) == "idempotency_duplicate"
    assert first.json()["run_id"] in second.json()["error"]["message"]
    stats = emulator.stats()
    assert stats["creates"] == 2
    assert stats["duplicate_creates"] == 1
    assert stats["unique_idempotency_keys"] == 1


def test_fail_rate_one_gives_failed_callbacks(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator(fail_rate=1.0)
    for index in range(3):
        assert create(http, emulator, run_body(receiver.url, key=f"k{index}")).status_code == 201

    assert receiver.wait_for(3)
    for callback in receiver.bodies:
        assert callback["status"] == "failed"
        assert callback["error_code"] == "generation_failed"
        assert callback["error_message"]
        assert callback["outputs"] == []
        assert callback["completed_at"]


def test_rate_429_answers_rate_limited_with_retry_after(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator(rate_429=1.0)
    response = create(http, emulator, run_body(receiver.url))

    assert response.status_code == 429
    assert error_code(response) == "rate_limited"
    assert response.headers["Retry-After"] in ("0", "1")
    assert emulator.stats()["creates"] == 1
    assert emulator.stats()["unique_idempotency_keys"] == 0


def test_rate_5xx_answers_unavailable(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator(rate_5xx=1.0)
    response = create(http, emulator, run_body(receiver.url))

    assert response.status_code == 503
    assert error_code(response) == "unavailable"
    assert emulator.stats()["creates"] == 1


def test_duplicate_callback_rate_sends_each_callback_twice(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator(duplicate_callback_rate=1.0)
    run_id = create(http, emulator, run_body(receiver.url)).json()["run_id"]

    assert receiver.wait_for(2)
    assert receiver.bodies[0] == receiver.bodies[1]
    assert receiver.bodies[0]["run_id"] == run_id
    assert eventually(lambda: emulator.stats()["callbacks_sent"] == 2)


def test_drop_callback_rate_sends_nothing_but_get_shows_the_run(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator(drop_callback_rate=1.0)
    run_id = create(http, emulator, run_body(receiver.url)).json()["run_id"]

    assert eventually(lambda: get_run(http, emulator, run_id).json()["status"] == "completed")
    # The drop is decided with the status change, so a callback would already be on its way.
    assert not receiver.wait_for(1, timeout=0.3)
    stats = emulator.stats()
    assert stats["callbacks_sent"] == 0
    assert stats["callbacks_failed"] == 0


def test_credits_run_out_with_402_until_topped_up(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator(credits=2)
    assert create(http, emulator, run_body(receiver.url, key="a")).status_code == 201
    assert create(http, emulator, run_body(receiver.url, key="b")).status_code == 201
    refused = create(http, emulator, run_body(receiver.url, key="c"))
    assert refused.status_code == 402
    assert error_code(refused) == "insufficient_credits"

    topped = http.post(f"{emulator.url}/_credits", json={"add": 1})
    assert topped.status_code == 200
    assert topped.json() == {"credits": 1}
    assert create(http, emulator, run_body(receiver.url, key="c")).status_code == 201
    assert create(http, emulator, run_body(receiver.url, key="d")).status_code == 402
    assert http.post(f"{emulator.url}/_credits", json={"add": -1}).status_code == 422
    assert emulator.stats()["unique_idempotency_keys"] == 3


def test_failing_callbacks_are_retried_then_given_up(
    start_emulator: StartEmulator, http: httpx.Client
) -> None:
    failing = CallbackReceiver(status=500)
    failing.start()
    try:
        emulator = start_emulator()
        assert create(http, emulator, run_body(failing.url)).status_code == 201

        assert eventually(lambda: emulator.stats()["callbacks_failed"] == 4)
        assert failing.wait_for(4)
        assert len({body["run_id"] for body in failing.bodies}) == 1
        assert emulator.stats()["callbacks_sent"] == 0
    finally:
        failing.stop()


def test_max_in_flight_counts_runs_not_yet_finished(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator(delay_ms=(300, 300))
    for index in range(4):
        assert create(http, emulator, run_body(receiver.url, key=f"k{index}")).status_code == 201

    assert receiver.wait_for(4)
    assert emulator.stats()["max_in_flight"] == 4
    fifth = create(http, emulator, run_body(receiver.url, key="k5"))
    assert fifth.status_code == 201
    assert receiver.wait_for(5)
    assert emulator.stats()["max_in_flight"] == 4


def test_routing_errors(start_emulator: StartEmulator, http: httpx.Client) -> None:
    emulator = start_emulator()
    auth = {"Authorization": f"Bearer {API_KEY}"}

    unknown_run = http.get(f"{emulator.url}/techniques/tech-1/runs/run_nope", headers=auth)
    assert unknown_run.status_code == 404
    assert error_code(unknown_run) == "not_found"
    assert http.get(f"{emulator.url}/nowhere").status_code == 404
    assert http.put(f"{emulator.url}/techniques/tech-1/runs", headers=auth, content=b"{}").status_code == 405
    assert http.get(f"{emulator.url}/techniques/tech-1/runs", headers=auth).status_code == 405
    assert http.post(f"{emulator.url}/_stats").status_code == 405
    assert emulator.stats()["gets"] == 1


def test_stop_is_prompt_with_runs_pending(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator(delay_ms=(0, 3000))
    for index in range(10):
        assert create(http, emulator, run_body(receiver.url, key=f"k{index}")).status_code == 201
    base_url = emulator.url

    started = time.monotonic()
    emulator.stop()
    assert time.monotonic() - started < 2.5
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base_url}/_stats", timeout=1.0)
    emulator.stop()


def test_context_manager_starts_and_stops(receiver: CallbackReceiver, http: httpx.Client) -> None:
    with ProviderEmulator(API_KEY, ProviderFaults(delay_ms=FAST_MS, seed=7)) as emulator:
        assert emulator.url.startswith("http://127.0.0.1:")
        assert create(http, emulator, run_body(receiver.url)).status_code == 201
        assert receiver.wait_for(1)


def test_invalid_faults_are_rejected() -> None:
    with pytest.raises(ValueError):
        ProviderFaults(fail_rate=1.5)
    with pytest.raises(ValueError):
        ProviderFaults(delay_ms=(10, 5))
