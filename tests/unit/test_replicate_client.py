"""Replicate's official Python client, pinned (`replicate` 1.0.7, in the dev lock), against the
Replicate emulator (contract §5b), and one table of signed webhook vectors judged by the client's
validator and by rowcall's (`rowcall.providers.replicate.ReplicateDeliveries`).

Only the emulator runs here (on loopback): these tests hold it to what the real client sends and
parses, so the adapter and the e2e tests that drive it are driven by something Replicate-shaped.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from importlib.metadata import version as installed_version
from typing import Any

import httpx
import pytest
import replicate
from replicate.exceptions import ReplicateError
from replicate.webhook import WebhookSigningSecret, WebhookValidationError

from rowcall.providers.replicate import ReplicateDeliveries
from rowcall_local.provider_emulator import ProviderFaults
from rowcall_local.replicate_emulator import CALLBACK_BACKOFF_S, ReplicateEmulator, version_of

from .callback_receiver import CallbackReceiver, Delivery

CLIENT_VERSION = "1.0.7"
TOKEN = "r8_conformance-test-token"
# Real secrets are "whsec_" + base64, so '+', '/' and '=' are part of the key bytes too.
SECRET = "whsec_" + base64.b64encode(bytes(range(200, 232))).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
TOLERANCE_S = 300
MODEL = "acme/painter"
PAGE_SIZE = 4
CREATES = 11
# Every field the client's Prediction declares, and what contract §5b lists.
PREDICTION_FIELDS = {
    "id",
    "model",
    "version",
    "status",
    "input",
    "output",
    "logs",
    "error",
    "metrics",
    "created_at",
    "started_at",
    "completed_at",
    "urls",
}
DEADLINE_S = 15.0
SIG = "webhook-signature"


def emulator(faults: ProviderFaults, **options: Any) -> ReplicateEmulator:
    return ReplicateEmulator(TOKEN, faults, webhook_secret=SECRET, allow_loopback_webhooks=True, **options)


def client(url: str, token: str = TOKEN) -> replicate.Client:
    return replicate.Client(api_token=token, base_url=url)


def wait_until(condition: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s}s")
        time.sleep(0.02)


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    server = CallbackReceiver()
    yield server
    server.stop()


def test_the_pinned_client_is_the_one_installed() -> None:
    assert installed_version("replicate") == CLIENT_VERSION


def test_the_client_creates_on_both_routes_gets_lists_pages_and_reads_the_secret(
    receiver: CallbackReceiver,
) -> None:
    faults = ProviderFaults(delay_ms=(0, 200), fail_rate=0.3, seed=7, output_bytes=3000)
    with emulator(faults, page_size=PAGE_SIZE) as replicate_emulator:
        api = client(replicate_emulator.url)
        created = []
        for n in range(CREATES):
            params: dict[str, Any] = {
                "input": {"prompt": f"a cat, take {n}", "n": n},
                "webhook": receiver.url,
                "webhook_events_filter": ["completed"],
            }
            if n % 2:
                prediction = api.predictions.create(version=version_of(MODEL), **params)
            else:
                prediction = api.predictions.create(model=MODEL, **params)
            assert (prediction.model, prediction.version) == (MODEL, version_of(MODEL))
            assert prediction.status == "starting" and prediction.input == params["input"]
            assert prediction.urls == {
                "get": f"{replicate_emulator.url}/v1/predictions/{prediction.id}",
                "cancel": f"{replicate_emulator.url}/v1/predictions/{prediction.id}/cancel",
            }
            created.append(prediction.id)
        assert len(set(created)) == CREATES

        deliveries = receiver.wait_for(CREATES)
        hooked = {json.loads(d.body)["id"]: json.loads(d.body) for d in deliveries}
        assert sorted(hooked) == sorted(created)
        statuses = set()
        for prediction_id in created:
            got = api.predictions.get(prediction_id)
            raw = httpx.get(got.urls["get"], headers={"Authorization": f"Bearer {TOKEN}"}).json()
            assert set(raw) >= PREDICTION_FIELDS
            # The webhook is the prediction itself, outputs included: nothing to fetch.
            assert hooked[prediction_id] == raw
            statuses.add(got.status)
            assert got.created_at and got.started_at and got.completed_at
            assert datetime.fromisoformat(got.created_at) <= datetime.fromisoformat(got.completed_at)
            if got.status == "failed":
                assert got.error and got.output is None
                continue
            assert got.status == "succeeded" and got.error is None
            [url] = got.output
            media = httpx.get(url)
            assert media.status_code == 200 and media.headers["content-type"] == "image/png"
            [expected] = replicate_emulator.expected_media(prediction_id)
            assert hashlib.sha256(media.content).hexdigest() == expected.digest()
            assert len(media.content) == 3000 and media.content.startswith(b"\x89PNG")
        assert statuses == {"succeeded", "failed"}

        pages = list(replicate.paginate(api.predictions.list))
        assert [len(page) for page in pages] == [4, 4, 3]
        assert [p.id for page in pages for p in page] == created[::-1]  # newest first
        assert pages[0].previous is None and pages[-1].next is None
        back = api.predictions.list(pages[-1].previous)
        assert [p.id for p in back] == [p.id for p in pages[1]]
        assert [p.id for p in api.predictions.list(back.previous)] == [p.id for p in pages[0]]

        assert api.webhooks.default.secret().key == SECRET
        model = api.models.get(MODEL)
        assert (model.owner, model.name) == ("acme", "painter")
        assert model.latest_version is not None and model.latest_version.id == version_of(MODEL)
        [listed_version] = model.versions.list()
        assert model.versions.get(listed_version.id).id == version_of(MODEL)
        stats = replicate_emulator.stats()
    # Every GET above came after the webhook: none of them was a poll.
    assert stats == {
        **stats,
        "creates": CREATES,
        "gets": 2 * CREATES,  # the client's and the raw one
        "lists": len(pages) + 2,
        "polls": 0,
        "duplicate_creates": 0,
        "callbacks_sent": CREATES,
        "callbacks_failed": 0,
        "deliveries_given_up": 0,
        "media_gets": sum(s == "succeeded" for s in [hooked[i]["status"] for i in created]),
        "in_flight": 0,
    }
    assert set(stats) == {
        "creates",
        "gets",
        "lists",
        "polls",
        "duplicate_creates",
        "max_in_flight",
        "callbacks_sent",
        "callbacks_failed",
        "deliveries_given_up",
        "media_gets",
        "in_flight",
        "in_flight_avg",
    }


def test_errors_are_problem_details_the_client_raises() -> None:
    with emulator(ProviderFaults(delay_ms=(0, 0), credits=1)) as replicate_emulator:
        url = replicate_emulator.url
        with pytest.raises(ReplicateError) as unauthorized:
            client(url, "r8_wrong").predictions.create(model=MODEL, input={})
        assert (unauthorized.value.status, unauthorized.value.title) == (401, "Unauthenticated")
        assert httpx.get(f"{url}/v1/webhooks/default/secret").status_code == 401
        api = client(url)
        for missing in ("missing-owner/painter", "acme/missing-painter"):
            with pytest.raises(ReplicateError) as not_found:
                api.predictions.create(model=missing, input={})
            assert not_found.value.status == 404
            with pytest.raises(ReplicateError):
                api.models.get(missing)
        with pytest.raises(ReplicateError) as bad_version:
            api.predictions.create(version="not-a-version", input={})
        assert bad_version.value.status == 422 and "64" in (bad_version.value.detail or "")
        # Any 64-hex version is taken, of a model the emulator has never shown.
        unknown = hashlib.sha256(b"someone/else").hexdigest()
        assert api.predictions.create(version=unknown, input={"a": 1}).version == unknown
        with pytest.raises(ReplicateError) as broke:
            api.predictions.create(model=MODEL, input={"a": 2})
        assert broke.value.status == 402 and "insufficient credit" in (broke.value.detail or "")
        assert httpx.post(f"{url}/_credits", json={"add": 1}).json() == {"credits": 1}
        assert api.predictions.create(model=MODEL, input={"a": 2}).status == "starting"
        with pytest.raises(ReplicateError) as gone:
            api.predictions.get("no-such-prediction")
        assert gone.value.status == 404


def test_injected_429s_carry_retry_after_and_5xxs_are_refused_creates() -> None:
    faults = ProviderFaults(delay_ms=(0, 0), rate_429=0.5, rate_5xx=0.5, seed=3)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with emulator(faults) as replicate_emulator:
        answers = [
            httpx.post(
                f"{replicate_emulator.url}/v1/models/{MODEL}/predictions", json={"input": {}}, headers=auth
            )
            for _ in range(40)
        ]
        stats = replicate_emulator.stats()
    codes = [answer.status_code for answer in answers]
    assert {429, 503, 201} == set(codes)
    for answer in answers:
        if answer.status_code == 429:
            assert answer.headers["retry-after"] in ("0", "1") and answer.json()["status"] == 429
    # Only the 201s made predictions; every request counts as a create.
    assert stats["creates"] == 40 and stats["max_in_flight"] <= codes.count(201)


def test_a_repeated_create_is_a_second_prediction_counted_as_a_duplicate(receiver: CallbackReceiver) -> None:
    with emulator(ProviderFaults(delay_ms=(0, 50))) as replicate_emulator:
        api = client(replicate_emulator.url)
        same = {"input": {"prompt": "twice"}, "webhook": receiver.url, "webhook_events_filter": ["completed"]}
        first = api.predictions.create(model=MODEL, **same)
        second = api.predictions.create(version=version_of(MODEL), **same)
        other = api.predictions.create(model=MODEL, input={"prompt": "once"}, webhook=receiver.url)
        receiver.wait_for(3)
        assert len({first.id, second.id, other.id}) == 3
        assert replicate_emulator.stats()["duplicate_creates"] == 1


def test_a_get_before_the_end_is_a_poll_and_a_cancel_ends_it_with_a_webhook(
    receiver: CallbackReceiver,
) -> None:
    with emulator(ProviderFaults(delay_ms=(60_000, 60_000))) as replicate_emulator:
        api = client(replicate_emulator.url)
        prediction = api.predictions.create(
            model=MODEL, input={"p": 1}, webhook=receiver.url, webhook_events_filter=["completed"]
        )
        wait_until(lambda: api.predictions.get(prediction.id).status == "processing", "processing")
        canceled = api.predictions.cancel(prediction.id)
        assert canceled.status == "canceled" and canceled.completed_at is not None
        [delivery] = receiver.wait_for(1)
        assert json.loads(delivery.body)["status"] == "canceled"
        assert api.predictions.get(prediction.id).status == "canceled"
        stats = replicate_emulator.stats()
    assert stats["polls"] == stats["gets"] - 1 >= 1 and stats["in_flight"] == 0


def test_a_webhook_without_completed_in_its_filter_is_not_sent(receiver: CallbackReceiver) -> None:
    with emulator(ProviderFaults(delay_ms=(0, 0))) as replicate_emulator:
        api = client(replicate_emulator.url)
        quiet = api.predictions.create(
            model=MODEL, input={}, webhook=receiver.url + "&q=1", webhook_events_filter=["start"]
        )
        api.predictions.create(
            model=MODEL, input={}, webhook=receiver.url, webhook_events_filter=["completed"]
        )
        receiver.wait_for(1)
        wait_until(lambda: api.predictions.get(quiet.id).status == "succeeded", "quiet prediction done")
        assert [d.path for d in receiver.received()] == ["/callbacks/b1/r1?token=t"]


def test_a_models_name_says_the_shape_of_its_output() -> None:
    """`output` may be a URL, a list of URLs, a string or any JSON (§5b): one model for each."""
    with emulator(ProviderFaults(delay_ms=(0, 0), output_bytes=100)) as replicate_emulator:
        api = client(replicate_emulator.url)
        made = {
            name: api.predictions.create(model=f"acme/{name}", input={}).id
            for name in ("painter", "painter-url", "painter-images", "writer-text", "scorer-json")
        }
        wait_until(
            lambda: all(api.predictions.get(i).status == "succeeded" for i in made.values()), "all succeeded"
        )
        output = {name: api.predictions.get(i).output for name, i in made.items()}
        media = f"{replicate_emulator.url}/_media"
        assert output["painter"] == [f"{media}/{made['painter']}/imageUrl/output_0.png"]
        assert output["painter-url"] == f"{media}/{made['painter-url']}/imageUrl/output_0.png"
        assert output["painter-images"] == [
            f"{media}/{made['painter-images']}/imageUrl/output_{n}.png" for n in range(2)
        ]
        assert output["writer-text"] == f"emulated text of prediction {made['writer-text']}"
        assert output["scorer-json"] == {"caption": f"prediction {made['scorer-json']}", "score": 0.5}
        for url in [output["painter-url"], *output["painter-images"]]:
            assert httpx.get(url).status_code == 200
        # Only the outputs a prediction has are served.
        assert httpx.get(f"{media}/{made['painter']}/imageUrl/output_1.png").status_code == 404
        assert httpx.get(f"{media}/{made['writer-text']}/imageUrl/output_0.png").status_code == 404
        assert [m.length for m in replicate_emulator.expected_media(made["painter-images"])] == [100, 100]


def test_outputs_input_and_logs_vanish_after_the_output_ttl() -> None:
    with emulator(ProviderFaults(delay_ms=(0, 0), output_ttl_s=0.5)) as replicate_emulator:
        api = client(replicate_emulator.url)
        prediction = api.predictions.create(model=MODEL, input={"p": 1})
        wait_until(lambda: api.predictions.get(prediction.id).status == "succeeded", "succeeded")
        done = api.predictions.get(prediction.id)
        assert httpx.get(done.output[0]).status_code == 200
        wait_until(lambda: httpx.get(done.output[0]).status_code == 404, "the output expired", 5)
        removed = httpx.get(done.urls["get"], headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert (removed["output"], removed["input"], removed["data_removed"]) == (None, None, True)
        assert removed["status"] == "succeeded"


def test_only_the_final_webhook_is_retried_for_about_a_minute_then_given_up() -> None:
    assert 50 <= sum(CALLBACK_BACKOFF_S) <= 70
    failing = CallbackReceiver(status=500)
    try:
        with emulator(ProviderFaults(delay_ms=(0, 0)), callback_backoff_s=(0.05, 0.1)) as replicate_emulator:
            client(replicate_emulator.url).predictions.create(model=MODEL, input={}, webhook=failing.url)
            attempts = failing.wait_for(3)
            wait_until(lambda: replicate_emulator.stats()["deliveries_given_up"] == 1, "given up")
            stats = replicate_emulator.stats()
    finally:
        failing.stop()
    assert len({a.headers["webhook-id"] for a in attempts}) == 1
    assert len({a.body for a in attempts}) == 1
    assert (stats["callbacks_sent"], stats["callbacks_failed"]) == (3, 3)


# -- one table of signed vectors, judged by the client's validator and by rowcall's ------------


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """Standard Webhooks, written out here rather than taken from the code under test."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def client_accepts(headers: dict[str, str], body: bytes, secret: str) -> bool:
    try:
        replicate.webhooks.validate(
            headers=headers,
            body=body.decode(),
            secret=WebhookSigningSecret(key=secret),
            tolerance=TOLERANCE_S,
        )
    except WebhookValidationError:
        return False
    return True


def rowcall_accepts(headers: dict[str, str], body: bytes, secret: str) -> bool:
    """What the callback route asks of a delivery for a row on Replicate."""
    return ReplicateDeliveries(lambda: [secret]).verify(headers, body)


JUDGES: dict[str, Callable[[dict[str, str], bytes, str], bool]] = {
    "replicate client": client_accepts,
    "rowcall": rowcall_accepts,
}


def signed_vectors(captured: list[Delivery]) -> list[tuple[str, dict[str, str], bytes, str, bool]]:
    """(name, headers, body, secret the receiver holds, verdict): the emulator's own deliveries as
    received, and each way a delivery can be wrong."""
    vectors: list[tuple[str, dict[str, str], bytes, str, bool]] = []
    for n, delivery in enumerate(captured):
        headers = {k: v for k, v in delivery.headers.items() if k.startswith("webhook-")}
        vectors.append((f"emulator delivery {n}", headers, delivery.body, SECRET, True))
    first = captured[0]
    headers = {k: v for k, v in first.headers.items() if k.startswith("webhook-")}
    message_id, body, now = headers["webhook-id"], first.body, int(time.time())
    status = json.loads(body)["status"]
    flipped = "failed" if status == "succeeded" else "succeeded"
    forged = body.replace(f'"status": "{status}"'.encode(), f'"status": "{flipped}"'.encode())
    assert forged != body

    def at(timestamp: int, secret: str = SECRET, signed: bytes = body) -> dict[str, str]:
        return {
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret, message_id, timestamp, signed),
        }

    vectors += [
        ("forged body", headers, forged, SECRET, False),
        ("forged body, re-signed with another secret", at(now, OTHER_SECRET, forged), forged, SECRET, False),
        ("another message's id", {**headers, "webhook-id": "msg_other"}, body, SECRET, False),
        ("stale timestamp", at(now - TOLERANCE_S - 60), body, SECRET, False),
        ("future timestamp", at(now + TOLERANCE_S + 60), body, SECRET, False),
        ("just within tolerance", at(now - TOLERANCE_S + 30), body, SECRET, True),
        ("wrong secret", headers, body, OTHER_SECRET, False),
        (
            "made-up signature",
            {**headers, SIG: "v1," + base64.b64encode(b"x" * 32).decode()},
            body,
            SECRET,
            False,
        ),
        ("signed with another secret", at(now, OTHER_SECRET), body, SECRET, False),
        (
            "two signatures, one valid (rotation)",
            {**at(now), "webhook-signature": f"{at(now, OTHER_SECRET)[SIG]} {at(now)[SIG]}"},
            body,
            SECRET,
            True,
        ),
    ]
    for missing in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        vectors.append(
            (f"missing {missing}", {k: v for k, v in headers.items() if k != missing}, body, SECRET, False)
        )
    return vectors


def test_signed_vectors_are_judged_alike_by_the_client_and_by_rowcall() -> None:
    receiver = CallbackReceiver()
    try:
        faults = ProviderFaults(delay_ms=(0, 100), fail_rate=0.5, seed=11)
        with emulator(faults) as replicate_emulator:
            api = client(replicate_emulator.url)
            for n in range(4):
                api.predictions.create(
                    model=MODEL,
                    input={"prompt": f'quotes " and é, {n}'},
                    webhook=receiver.url,
                    webhook_events_filter=["completed"],
                )
            captured = receiver.wait_for(4)
    finally:
        receiver.stop()
    assert {json.loads(d.body)["status"] for d in captured} == {"succeeded", "failed"}
    vectors = signed_vectors(captured)
    verdicts = {
        judge: {name: accepts(headers, body, secret) for name, headers, body, secret, _ in vectors}
        for judge, accepts in JUDGES.items()
    }
    expected = {name: verdict for name, _, _, _, verdict in vectors}
    for judge, found in verdicts.items():
        assert found == expected, judge
