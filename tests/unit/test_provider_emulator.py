"""The provider emulator over real loopback HTTP: runs, signed webhooks, retries, the run list,
faults, credits, stats. tests/unit/test_flora_sdk.py holds the same surface to FLORA's own SDK."""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from rowcall.flora_signature import verify_signature
from rowcall_local.provider_emulator import CALLBACK_BACKOFF_S, ProviderEmulator, ProviderFaults

from .callback_receiver import CallbackReceiver, Delivery

API_KEY = "test-provider-key"
SECRET = "whsec_" + base64.b64encode(b"emulator-test-signing-secret-32b").decode()
FAST_MS = (0, 20)
DEADLINE_S = 5.0
STATS = (
    "creates",
    "unique_idempotency_keys",
    "duplicate_creates",
    "gets",
    "lists",
    "polls",
    "max_in_flight",
    "callbacks_sent",
    "callbacks_failed",
    "deliveries_given_up",
    "last_callback_sent_at_ms",
    "technique_gets",
    "media_gets",
)

StartEmulator = Callable[..., ProviderEmulator]


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
    yield server
    server.stop()


@pytest.fixture
def start_emulator() -> Iterator[StartEmulator]:
    started: list[ProviderEmulator] = []

    def start(allow_loopback_callbacks: bool = True, **faults: Any) -> ProviderEmulator:
        faults.setdefault("delay_ms", FAST_MS)
        emulator = ProviderEmulator(
            API_KEY,
            ProviderFaults(**faults),
            webhook_secret=SECRET,
            allow_loopback_callbacks=allow_loopback_callbacks,
        )
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


AUTH = {"Authorization": f"Bearer {API_KEY}"}


def run_body(callback_url: str | None, key: str | None = "key-1") -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"id": "prompt", "type": "text", "value": "a cat"}], "mode": "async"}
    if callback_url is not None:
        body["callback_url"] = callback_url
    if key is not None:
        body["idempotency_key"] = key
    return body


def create(
    http: httpx.Client,
    emulator: ProviderEmulator,
    body: dict[str, Any],
    technique: str = "tech-1",
    token: str = API_KEY,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    url = f"{emulator.url}/techniques/{technique}/runs"
    return http.post(url, json=body, headers={"Authorization": f"Bearer {token}", **(headers or {})})


def get_run(http: httpx.Client, emulator: ProviderEmulator, run_id: str) -> httpx.Response:
    return http.get(f"{emulator.url}/techniques/tech-1/runs/{run_id}", headers=AUTH)


def list_runs(http: httpx.Client, emulator: ProviderEmulator, **query: str | int) -> httpx.Response:
    return http.get(f"{emulator.url}/technique-runs", params=query, headers=AUTH)


def error_code(response: httpx.Response) -> str:
    code: str = response.json()["error"]["code"]
    return code


def event_of(delivery: Delivery) -> dict[str, Any]:
    """The envelope, once its signature is known good under SECRET."""
    assert verify_signature(delivery.headers["flora-signature"], delivery.body, [SECRET])
    event: dict[str, Any] = json.loads(delivery.body)
    return event


def signed_at(delivery: Delivery) -> int:
    match = re.fullmatch(r"t=(\d+),v1=[0-9a-f]{64}", delivery.headers["flora-signature"])
    assert match, delivery.headers["flora-signature"]
    return int(match.group(1))


def closed_port_url() -> str:
    """A loopback URL nothing listens on: connecting to it is a transport error."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/callbacks/b/r?token=t"


def test_a_run_is_created_pending_then_a_signed_envelope_says_it_completed(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator()
    before_ms = time.time_ns() // 1_000_000
    response = create(http, emulator, run_body(receiver.url))

    assert response.status_code == 201
    run = response.json()
    run_id = run["run_id"]
    assert re.fullmatch(r"run_[0-9a-f]{20}", run_id)
    poll_url = f"{emulator.url}/techniques/tech-1/runs/{run_id}"
    # Unset optional fields are absent, not null: the SDK types them `?: T`.
    assert run == {
        "run_id": run_id,
        "status": "pending",
        "progress": 0,
        "created_at": run["created_at"],
        "outputs": [],
        "poll_url": poll_url,
    }
    assert isinstance(run["created_at"], int) and abs(run["created_at"] - before_ms) < 5_000  # ms, not s

    (delivery,) = receiver.wait_for(1)
    assert delivery.path == "/callbacks/b1/r1?token=t"
    assert delivery.headers["content-type"] == "application/json"
    event = event_of(delivery)
    assert re.fullmatch(r"whd_[0-9a-f]{24}", event["id"])
    assert delivery.headers["flora-webhook-id"] == event["id"]
    assert delivery.headers["flora-event"] == event["type"] == "run.completed"
    assert abs(signed_at(delivery) - time.time()) < 60  # seconds
    assert event == {
        "id": event["id"],
        "type": "run.completed",
        "api_version": "2026-06-11",
        "created_at": event["created_at"],
        "data": {
            "run_id": run_id,
            "run_type": "technique",
            "workspace_id": emulator.workspace_id,
            "status": "completed",
        },
    }
    assert isinstance(event["created_at"], int) and event["created_at"] >= run["created_at"]
    assert emulator.workspace_id.startswith("ws_")

    # The envelope has no outputs: they come from the run.
    done = http.get(poll_url, headers=AUTH).json()
    assert done["status"] == "completed" and done["progress"] == 100
    assert run["created_at"] <= done["started_at"] <= done["completed_at"] <= event["created_at"]
    # What the benchmarks time the last callback from.
    assert emulator.finished_runs() == [(receiver.url, done["completed_at"])]
    assert done["outputs"] == [
        {
            "output_id": "output_0",
            "type": "imageUrl",
            # Served by the emulator itself (contract section 5): tests/unit/test_saved_outputs.py.
            "url": f"{emulator.url}/_media/{run_id}/imageUrl/output_0.png",
        }
    ]
    assert done["charged_cost"] > 0
    assert "error_code" not in done and "error_message" not in done
    assert eventually(lambda: emulator.stats()["callbacks_sent"] == 1)
    stats = http.get(f"{emulator.url}/_stats").json()
    assert stats == {
        **dict.fromkeys(STATS, 0),
        "creates": 1,
        "unique_idempotency_keys": 1,
        "gets": 1,
        "max_in_flight": 1,
        "callbacks_sent": 1,
        "last_callback_sent_at_ms": stats["last_callback_sent_at_ms"],
        "charged_cost_usd": 0.04,
        "in_flight": 0,
        "in_flight_avg": stats["in_flight_avg"],
    }
    assert tuple(stats) == (*STATS, "charged_cost_usd", "in_flight", "in_flight_avg")
    # One run in flight for part of the time since the start: between none and one on average.
    assert 0 < stats["in_flight_avg"] < 1
    assert abs(stats["last_callback_sent_at_ms"] / 1000 - time.time()) < 60


def test_the_signature_covers_the_raw_body_under_the_whole_secret(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator()
    create(http, emulator, run_body(receiver.url))
    (delivery,) = receiver.wait_for(1)
    header = delivery.headers["flora-signature"]

    assert verify_signature(header, delivery.body, [SECRET])
    assert not verify_signature(header, delivery.body, [SECRET.removeprefix("whsec_")])
    assert not verify_signature(header, delivery.body + b" ", [SECRET])
    assert not verify_signature(header, delivery.body, [SECRET], now=signed_at(delivery) + 301)


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
    assert http.get(f"{url}/run_x", headers=headers).status_code == 401
    assert http.get(f"{emulator.url}/technique-runs", headers=headers).status_code == 401
    stats = emulator.stats()
    assert (stats["creates"], stats["unique_idempotency_keys"], stats["gets"], stats["lists"]) == (0, 0, 0, 0)


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
        {"idempotency_key": ""},
        {"idempotency_key": "k" * 256},
        {"inputs": [{"id": "", "type": "text", "value": "x"}]},
        {"inputs": [{"id": "a", "type": "text", "value": 3}]},
        {"inputs": "nope"},
        {"callback_url": 7},
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
    response = http.post(url, content=b"{nope", headers=AUTH)

    assert response.status_code == 422
    assert error_code(response) == "validation_error"


@pytest.mark.parametrize(
    "callback_url",
    [
        "http://example.com/cb",
        "ftp://example.com/cb",
        "not a url",
        "https://:443/cb",
        "https://example.com:99999/cb",
        "https://10.1.2.3/cb",
        "https://172.16.0.1/cb",
        "https://192.168.1.10/cb",
        "https://169.254.169.254/latest/meta-data",
        "https://127.0.0.1/cb",
        "https://localhost/cb",
        "https://[::1]/cb",
        "https://[fe80::1]/cb",
        "https://[::ffff:10.0.0.1]/cb",
        "https://0.0.0.0/cb",
    ],
)
def test_a_callback_url_flora_would_refuse_is_422(
    start_emulator: StartEmulator, http: httpx.Client, callback_url: str
) -> None:
    emulator = start_emulator(allow_loopback_callbacks=False)
    response = create(http, emulator, run_body(callback_url))

    assert response.status_code == 422
    assert error_code(response) == "invalid_callback_url"
    assert emulator.stats()["unique_idempotency_keys"] == 0
    assert list_runs(http, emulator).json()["technique_runs"] == []


def test_loopback_callbacks_only_when_allowed_and_never_other_private_hosts(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    strict = start_emulator(allow_loopback_callbacks=False)
    assert error_code(create(http, strict, run_body(receiver.url))) == "invalid_callback_url"
    assert create(http, strict, run_body("https://hooks.example.com/cb", key="k2")).status_code == 201

    local = start_emulator(allow_loopback_callbacks=True)
    assert create(http, local, run_body(receiver.url)).status_code == 201
    assert create(http, local, run_body("http://localhost:9/cb", key="k2")).status_code == 201
    assert error_code(create(http, local, run_body("http://10.0.0.1/cb", key="k3"))) == "invalid_callback_url"
    assert (
        error_code(create(http, local, run_body("https://10.0.0.1/cb", key="k4"))) == "invalid_callback_url"
    )
    assert receiver.wait_for(1)


def test_without_a_callback_url_the_run_completes_and_nothing_is_posted(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator()
    run_id = create(http, emulator, run_body(None)).json()["run_id"]
    create(http, emulator, run_body(receiver.url, key="with-callback"))

    assert eventually(lambda: get_run(http, emulator, run_id).json()["status"] == "completed")
    # The run with a callback finished at about the same time; only its delivery arrives.
    (delivery,) = receiver.wait_for(1)
    assert json.loads(delivery.body)["data"]["run_id"] != run_id
    assert eventually(lambda: emulator.stats()["callbacks_sent"] == 1)


def test_idempotency_key_may_come_in_the_header(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator()
    header = {"Idempotency-Key": "from-header"}
    first = create(http, emulator, run_body(receiver.url, key=None), headers=header)
    again = create(http, emulator, run_body(receiver.url, key=None), headers=header)
    same_in_body = create(http, emulator, run_body(receiver.url, key="from-header"))
    both_agree = create(
        http, emulator, run_body(receiver.url, key="agreed"), headers={"Idempotency-Key": "agreed"}
    )
    differ = create(http, emulator, run_body(receiver.url, key="a"), headers={"Idempotency-Key": "b"})
    too_long = create(
        http, emulator, run_body(receiver.url, key=None), headers={"Idempotency-Key": "k" * 256}
    )

    assert first.status_code == 201
    assert (again.status_code, error_code(again)) == (409, "idempotency_duplicate")
    assert (same_in_body.status_code, error_code(same_in_body)) == (409, "idempotency_duplicate")
    assert both_agree.status_code == 201
    assert (differ.status_code, error_code(differ)) == (422, "validation_error")
    assert (too_long.status_code, error_code(too_long)) == (422, "validation_error")
    stats = emulator.stats()
    assert (stats["unique_idempotency_keys"], stats["duplicate_creates"]) == (2, 2)


def test_without_any_idempotency_key_every_create_is_a_new_run(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator()
    first = create(http, emulator, run_body(receiver.url, key=None))
    second = create(http, emulator, run_body(receiver.url, key=None))

    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["run_id"] != second.json()["run_id"]
    assert emulator.stats()["unique_idempotency_keys"] == 0


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


def test_fail_rate_one_gives_run_failed_envelopes_with_the_error(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator(fail_rate=1.0)
    run_ids = {create(http, emulator, run_body(receiver.url, key=f"k{n}")).json()["run_id"] for n in range(3)}

    deliveries = receiver.wait_for(3)
    events = [event_of(d) for d in deliveries]
    assert {e["data"]["run_id"] for e in events} == run_ids
    for delivery, event in zip(deliveries, events, strict=True):
        assert event["type"] == delivery.headers["flora-event"] == "run.failed"
        assert event["data"]["status"] == "failed"
        assert event["data"]["error_code"] == "generation_failed"
        assert event["data"]["error_message"]
        run = get_run(http, emulator, event["data"]["run_id"]).json()
        assert (run["status"], run["error_code"], run["outputs"]) == ("failed", "generation_failed", [])
        assert isinstance(run["completed_at"], int)


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


def test_a_duplicated_callback_is_the_same_delivery_twice(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator(duplicate_callback_rate=1.0)
    run_id = create(http, emulator, run_body(receiver.url)).json()["run_id"]

    first, second = receiver.wait_for(2)
    assert first.body == second.body
    assert first.headers["flora-webhook-id"] == second.headers["flora-webhook-id"]
    assert event_of(first)["data"]["run_id"] == event_of(second)["data"]["run_id"] == run_id
    assert eventually(lambda: emulator.stats()["callbacks_sent"] == 2)
    assert emulator.stats()["callbacks_failed"] == 0


def test_drop_callback_rate_sends_nothing_but_get_shows_the_run(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator(drop_callback_rate=1.0)
    run_id = create(http, emulator, run_body(receiver.url)).json()["run_id"]

    assert eventually(lambda: get_run(http, emulator, run_id).json()["status"] == "completed")
    # The drop is decided with the status change, so a delivery would already be on its way.
    with pytest.raises(AssertionError):
        receiver.wait_for(1, timeout=0.3)
    stats = emulator.stats()
    assert (stats["callbacks_sent"], stats["callbacks_failed"], stats["deliveries_given_up"]) == (0, 0, 0)


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


def test_a_delivery_answered_500_is_retried_three_times_then_given_up(
    start_emulator: StartEmulator, http: httpx.Client
) -> None:
    failing = CallbackReceiver(status=500)
    try:
        emulator = start_emulator()
        assert create(http, emulator, run_body(failing.url)).status_code == 201

        assert eventually(lambda: emulator.stats()["deliveries_given_up"] == 1)
        attempts = failing.received()
        assert len(attempts) == 1 + len(CALLBACK_BACKOFF_S) == 4
        assert len({a.headers["flora-webhook-id"] for a in attempts}) == 1
        assert len({a.body for a in attempts}) == 1
        # Each attempt is signed when sent, so a late retry is not refused as a replay.
        assert all(event_of(a) for a in attempts)
        times = [signed_at(a) for a in attempts]
        assert times == sorted(times)
        stats = emulator.stats()
        assert (stats["callbacks_sent"], stats["callbacks_failed"], stats["deliveries_given_up"]) == (4, 4, 1)
    finally:
        failing.stop()


def test_a_delivery_that_fails_once_succeeds_on_the_retry(
    start_emulator: StartEmulator, http: httpx.Client
) -> None:
    flaky = CallbackReceiver(statuses=[503])
    try:
        emulator = start_emulator()
        assert create(http, emulator, run_body(flaky.url)).status_code == 201

        first, retry = flaky.wait_for(2)
        assert first.headers["flora-webhook-id"] == retry.headers["flora-webhook-id"]
        assert eventually(lambda: emulator.stats()["callbacks_sent"] == 2)
        with pytest.raises(AssertionError):
            flaky.wait_for(3, timeout=CALLBACK_BACKOFF_S[1] + 0.3)
        stats = emulator.stats()
        assert (stats["callbacks_sent"], stats["callbacks_failed"], stats["deliveries_given_up"]) == (2, 1, 0)
    finally:
        flaky.stop()


def test_an_unreachable_receiver_counts_as_failed_attempts(
    start_emulator: StartEmulator, http: httpx.Client
) -> None:
    emulator = start_emulator()
    assert create(http, emulator, run_body(closed_port_url())).status_code == 201

    assert eventually(lambda: emulator.stats()["deliveries_given_up"] == 1)
    stats = emulator.stats()
    assert (stats["callbacks_sent"], stats["callbacks_failed"]) == (4, 4)


def test_gets_of_a_run_not_yet_terminal_count_as_polls(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator(delay_ms=(400, 400))
    run_id = create(http, emulator, run_body(receiver.url)).json()["run_id"]

    early = get_run(http, emulator, run_id).json()
    assert early["status"] in ("pending", "running")
    assert "completed_at" not in early and "charged_cost" not in early
    assert emulator.stats()["polls"] == 1
    receiver.wait_for(1)
    assert get_run(http, emulator, run_id).json()["status"] == "completed"
    assert get_run(http, emulator, "run_unknown").status_code == 404
    stats = emulator.stats()
    assert (stats["gets"], stats["polls"]) == (3, 1)


def test_a_run_is_only_found_under_its_own_technique(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator()
    run_id = create(http, emulator, run_body(receiver.url)).json()["run_id"]

    assert http.get(f"{emulator.url}/techniques/tech-2/runs/{run_id}", headers=AUTH).status_code == 404
    assert get_run(http, emulator, run_id).status_code == 200


def test_the_run_list_pages_newest_first_and_is_stable_while_runs_are_created(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator(delay_ms=(0, 0))
    created = [
        create(http, emulator, run_body(receiver.url, key=f"k{n}")).json()["run_id"] for n in range(25)
    ]

    seen: list[str] = []
    cursor: str | None = None
    for page_number in range(10):
        query: dict[str, str | int] = {"limit": 10}
        if cursor is not None:
            query["cursor"] = cursor
        page = list_runs(http, emulator, **query).json()
        seen += [item["run_id"] for item in page["technique_runs"]]
        cursor = page["meta"]["next_cursor"]
        if cursor is None:
            break
        # New runs between pages are newer than every cursor: nothing is skipped or repeated.
        create(http, emulator, run_body(receiver.url, key=f"late{page_number}"))
    assert seen == created[::-1]
    assert emulator.stats()["lists"] == 3

    newest = list_runs(http, emulator, limit=1).json()
    assert newest["technique_runs"][0]["run_id"] not in created  # a late one
    assert newest["meta"]["next_cursor"] is not None


def test_a_listed_run_carries_its_technique_workspace_and_poll_url(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator()
    run_id = create(http, emulator, run_body(receiver.url)).json()["run_id"]
    receiver.wait_for(1)

    (item,) = list_runs(http, emulator).json()["technique_runs"]
    run = get_run(http, emulator, run_id).json()
    assert item == {
        **run,
        "technique_id": "tech-1",
        "technique": {"name": "tech-1", "technique_id": "tech-1"},
        "technique_run_id": run_id,
        "workspace_id": emulator.workspace_id,
        "project_id": item["project_id"],
    }
    assert item["project_id"].startswith("proj_")


def test_the_run_list_filters_by_technique_status_and_workspace(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator(fail_rate=0.5, seed=11)
    for n in range(8):
        create(http, emulator, run_body(receiver.url, key=f"a{n}"), technique="tech-a")
        create(http, emulator, run_body(receiver.url, key=f"b{n}"), technique="tech-b")
    receiver.wait_for(16)

    def ids(**query: str | int) -> list[str]:
        return [
            item["run_id"] for item in list_runs(http, emulator, limit=100, **query).json()["technique_runs"]
        ]

    everything = list_runs(http, emulator, limit=100).json()["technique_runs"]
    assert len(everything) == 16
    by_technique = [r["run_id"] for r in everything if r["technique_id"] == "tech-a"]
    failed_b = [r["run_id"] for r in everything if r["technique_id"] == "tech-b" and r["status"] == "failed"]
    assert len(by_technique) == 8 and 0 < len(failed_b) < 8
    assert ids(technique_id="tech-a") == by_technique
    assert ids(technique_id="tech-b", status="failed") == failed_b
    assert ids(status="running") == []
    assert len(ids(workspace_id=emulator.workspace_id)) == 16
    assert ids(workspace_id="ws_other") == []
    assert len(list_runs(http, emulator).json()["technique_runs"]) == 16  # default limit 20


@pytest.mark.parametrize(
    "query",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": "ten"},
        {"limit": ""},
        {"status": "queued"},
        {"cursor": "not-a-cursor"},
        {"cursor": base64.urlsafe_b64encode(b"run-seq:x").decode()},
    ],
)
def test_a_bad_list_query_is_400(
    start_emulator: StartEmulator, http: httpx.Client, query: dict[str, str | int]
) -> None:
    emulator = start_emulator()
    response = list_runs(http, emulator, **query)

    assert response.status_code == 400
    assert error_code(response) == "bad_request"
    assert response.json()["error"]["message"]


def test_max_in_flight_counts_runs_not_yet_finished(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator(delay_ms=(300, 300))
    for index in range(4):
        assert create(http, emulator, run_body(receiver.url, key=f"k{index}")).status_code == 201

    receiver.wait_for(4)
    assert emulator.stats()["max_in_flight"] == 4
    fifth = create(http, emulator, run_body(receiver.url, key="k5"))
    assert fifth.status_code == 201
    receiver.wait_for(5)
    assert emulator.stats()["max_in_flight"] == 4


def test_routing_errors(start_emulator: StartEmulator, http: httpx.Client) -> None:
    emulator = start_emulator()

    unknown_run = http.get(f"{emulator.url}/techniques/tech-1/runs/run_nope", headers=AUTH)
    assert unknown_run.status_code == 404
    assert error_code(unknown_run) == "not_found"
    assert http.get(f"{emulator.url}/nowhere").status_code == 404
    assert http.put(f"{emulator.url}/techniques/tech-1/runs", headers=AUTH, content=b"{}").status_code == 405
    assert http.get(f"{emulator.url}/techniques/tech-1/runs", headers=AUTH).status_code == 405
    assert http.post(f"{emulator.url}/technique-runs", headers=AUTH).status_code == 405
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
    faults = ProviderFaults(delay_ms=FAST_MS, seed=7)
    with ProviderEmulator(API_KEY, faults, webhook_secret=SECRET, allow_loopback_callbacks=True) as emulator:
        assert emulator.url.startswith("http://127.0.0.1:")
        assert create(http, emulator, run_body(receiver.url)).status_code == 201
        receiver.wait_for(1)


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        ProviderFaults(fail_rate=1.5)
    with pytest.raises(ValueError):
        ProviderFaults(delay_ms=(10, 5))
    with pytest.raises(ValueError):
        ProviderEmulator(API_KEY, webhook_secret="")


def test_in_flight_is_counted_now_and_averaged_since_a_reset(
    start_emulator: StartEmulator, http: httpx.Client
) -> None:
    emulator = start_emulator(delay_ms=(60_000, 60_000))
    for n in range(3):
        body = {"inputs": [{"id": "prompt", "type": "text", "value": "x"}], "mode": "async"}
        created = http.post(
            f"{emulator.url}/techniques/tech/runs", json=body, headers={**AUTH, "Idempotency-Key": f"k{n}"}
        )
        assert created.status_code == 201
    reset = http.post(f"{emulator.url}/_stats/reset")
    assert reset.status_code == 200
    assert reset.json()["creates"] == 3  # the counts are kept; only the average starts again
    time.sleep(0.2)
    stats = http.get(f"{emulator.url}/_stats").json()
    assert stats["in_flight"] == 3 and stats["in_flight_avg"] == pytest.approx(3, abs=0.01)


def test_replay_mode_answers_a_repeated_key_with_the_original_run_and_creates_nothing_more(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator(idempotency="replay")
    first = create(http, emulator, run_body(receiver.url, key="k-1"))
    again = create(http, emulator, run_body(receiver.url, key="k-1"))
    in_header = create(http, emulator, run_body(receiver.url, key=None), headers={"Idempotency-Key": "k-1"})
    assert (first.status_code, again.status_code, in_header.status_code) == (201, 201, 201)
    assert again.json() == first.json() == in_header.json()  # the original response, replayed
    (delivery,) = receiver.wait_for(1)
    assert json.loads(delivery.body)["data"]["run_id"] == first.json()["run_id"]
    assert get_run(http, emulator, first.json()["run_id"]).json()["status"] == "completed"
    stats = emulator.stats()
    assert (stats["unique_idempotency_keys"], stats["duplicate_creates"]) == (1, 2)
    assert len(list_runs(http, emulator, technique_id="tech-1").json()["technique_runs"]) == 1


def test_replay_mode_refuses_the_same_key_with_another_body_as_a_conflict(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator(idempotency="replay")
    first = create(http, emulator, run_body(receiver.url, key="k-1"))
    changed = run_body(receiver.url + "?token=another", key="k-1")
    conflict = create(http, emulator, changed)
    assert first.status_code == 201
    assert (conflict.status_code, error_code(conflict)) == (422, "idempotency_conflict")
    assert first.json()["run_id"] in conflict.json()["error"]["message"]
    assert emulator.stats()["unique_idempotency_keys"] == 1


def test_duplicate_mode_is_the_default_and_an_unknown_mode_is_refused(
    start_emulator: StartEmulator, receiver: CallbackReceiver, http: httpx.Client
) -> None:
    emulator = start_emulator()
    assert create(http, emulator, run_body(receiver.url, key="k-1")).status_code == 201
    changed = create(http, emulator, run_body(receiver.url + "?x=1", key="k-1"))
    assert (changed.status_code, error_code(changed)) == (409, "idempotency_duplicate")
    with pytest.raises(ValueError, match="idempotency"):
        ProviderFaults(idempotency="sometimes")  # type: ignore[arg-type]
