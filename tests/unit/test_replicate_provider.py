"""Replicate's adapter (contract §5b) against a fake of its API on httpx's MockTransport: create
routes and bodies, error classes, output mapping, webhook signatures judged by rowcall and by the
official `replicate` client alike, and at most one prediction per row attempt (the list search)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from replicate.webhook import Webhooks, WebhookSigningSecret

from rowcall.input_checks import TechniqueDefinition, TechniqueRefused
from rowcall.models import CreateRunRequest, RunInput, RunObject
from rowcall.providers.port import (
    CreateSearch,
    ErrorClass,
    ProviderUnavailable,
    RetryPolicy,
    RunCreated,
    RunNotFound,
    RunRefused,
)
from rowcall.providers.replicate import (
    Prediction,
    ReplicateClient,
    ReplicateDeliveries,
    classify,
    outputs_of,
    run_of,
)
from rowcall.signing import WebhookSigner

TOKEN = "r8_test-token"
SECRET = "whsec_" + base64.b64encode(b"replicate-account-signing-key-32").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"some-other-accounts-signing-key!").decode()
VERSION = hashlib.sha256(b"acme/painter").hexdigest()


def iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class FakeReplicate:
    """Replicate's prediction routes as the official client sees them; newest first in lists."""

    page_size: int = 2
    # Replicate's API does not show a prediction's webhook; where it would, the search uses it.
    shows_webhook: bool = False
    predictions: list[dict[str, Any]] = field(default_factory=list)
    requests: list[httpx.Request] = field(default_factory=list)
    # Answers to send before the normal one, per "METHOD path" (e.g. a 500 after creating).
    scripted: dict[str, list[tuple[int, dict[str, str], Any, bool]]] = field(default_factory=dict)
    clock: Callable[[], float] = time.time

    def prediction(
        self, model: str, version: str, inputs: dict[str, Any], webhook: str, **over: Any
    ) -> dict[str, Any]:
        n = len(self.predictions)
        made = {
            "id": f"p{n:04d}",
            "model": model,
            "version": version,
            "status": "starting",
            "input": inputs,
            "output": None,
            "logs": "",
            "error": None,
            "metrics": {},
            "created_at": iso(self.clock()),
            "started_at": None,
            "completed_at": None,
            "urls": {"get": f"https://api.replicate.com/v1/predictions/p{n:04d}", "cancel": "x"},
            "webhook": webhook,
        } | over
        self.predictions.insert(0, made)
        return made

    def shown(self, prediction: dict[str, Any]) -> dict[str, Any]:
        return prediction if self.shows_webhook else {k: v for k, v in prediction.items() if k != "webhook"}

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            return httpx.Response(
                401, json={"title": "Unauthenticated", "detail": "bad token", "status": 401}
            )
        path = request.url.path
        key = f"{request.method} {path}"
        if self.scripted.get(key):
            status, headers, body, creates = self.scripted[key].pop(0)
            if creates:
                self._create(request)
            return httpx.Response(status, headers=headers, json=body)
        if request.method == "POST" and path.endswith("/predictions"):
            return httpx.Response(201, json=self.shown(self._create(request)))
        if request.method == "GET" and path == "/v1/predictions":
            start = int(request.url.params.get("cursor", "0"))
            page = self.predictions[start : start + self.page_size]
            more = start + self.page_size < len(self.predictions)
            nxt = (
                f"https://api.replicate.com/v1/predictions?cursor={start + self.page_size}" if more else None
            )
            return httpx.Response(
                200, json={"next": nxt, "previous": None, "results": [self.shown(p) for p in page]}
            )
        if request.method == "GET" and path.startswith("/v1/predictions/"):
            found = [p for p in self.predictions if p["id"] == path.rsplit("/", 1)[1]]
            if not found:
                return httpx.Response(
                    404, json={"title": "Not found", "detail": "no such prediction", "status": 404}
                )
            return httpx.Response(200, json=self.shown(found[0]))
        if request.method == "GET" and path.startswith("/v1/models/"):
            if "missing-" in path:
                return httpx.Response(
                    404, json={"title": "Not found", "detail": "model not found", "status": 404}
                )
            return httpx.Response(
                200, json={"owner": "acme", "name": "painter", "latest_version": {"id": VERSION}}
            )
        return httpx.Response(404, json={"title": "Not found", "status": 404})

    def _create(self, request: httpx.Request) -> dict[str, Any]:
        body = json.loads(request.content)
        path = request.url.path
        model = "/".join(path.split("/")[3:5]) if path.startswith("/v1/models/") else "acme/painter"
        return self.prediction(model, body.get("version", VERSION), body["input"], body["webhook"])

    def posts(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "POST"]

    def lists(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == "GET" and r.url.path == "/v1/predictions"]


def client(fake: FakeReplicate, sleeps: list[float] | None = None, token: str = TOKEN) -> ReplicateClient:
    async def sleep(seconds: float) -> None:
        if sleeps is not None:
            sleeps.append(seconds)

    http = httpx.AsyncClient(transport=httpx.MockTransport(fake.handler))
    return ReplicateClient(
        http,
        base_url="https://api.replicate.com",
        api_token=token,
        retry=RetryPolicy(attempts=4, base_delay_s=0.01, max_delay_s=0.02),
        sleep=sleep,
    )


def request(
    callback: str = "https://hooks.example/cb/b_1/0-1?token=1.abc", prompt: str = "a cat"
) -> CreateRunRequest:
    return CreateRunRequest(
        inputs=[RunInput(id="prompt", type="text", value=prompt)],
        callback_url=callback,
        idempotency_key="b_1.0-1.1",
    )


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# -- creates ---------------------------------------------------------------------------------


def test_a_model_is_run_through_its_predictions_route_and_a_version_through_predictions() -> None:
    fake = FakeReplicate()
    made = run(client(fake).create_run("acme/painter", request()))
    assert isinstance(made, RunCreated) and made.run.run_id == "p0000" and made.run.status == "starting"
    (post,) = fake.posts()
    assert post.url.path == "/v1/models/acme/painter/predictions"
    assert json.loads(post.content) == {
        "input": {"prompt": "a cat"},
        "webhook": "https://hooks.example/cb/b_1/0-1?token=1.abc",
        "webhook_events_filter": ["completed"],
    }
    assert post.headers["authorization"] == f"Bearer {TOKEN}"
    run(client(fake).create_run(VERSION, request()))
    assert fake.posts()[1].url.path == "/v1/predictions"
    assert json.loads(fake.posts()[1].content)["version"] == VERSION
    run(client(fake).create_run(f"acme/painter:{VERSION}", request()))
    assert fake.posts()[2].url.path == "/v1/predictions"


def test_a_429_is_retried_after_its_retry_after_and_makes_one_prediction() -> None:
    fake = FakeReplicate()
    too_many = (429, {"retry-after": "3"}, {"title": "Too Many Requests", "status": 429}, False)
    fake.scripted["POST /v1/models/acme/painter/predictions"] = [too_many]
    sleeps: list[float] = []
    made = run(client(fake, sleeps).create_run("acme/painter", request()))
    assert isinstance(made, RunCreated)
    assert len(fake.posts()) == 2 and len(fake.predictions) == 1 and fake.lists() == []
    assert len(sleeps) == 1 and sleeps[0] >= 3


@pytest.mark.parametrize(
    ("status", "title", "code", "batch_reason", "pauses"),
    [
        (402, "Insufficient credit", "insufficient_credits", None, True),
        (401, "Unauthenticated", "unauthenticated", "provider_unauthorized", False),
        (403, "Forbidden", "forbidden", "provider_unauthorized", False),
        (404, "Not found", "not_found", "technique_not_found", False),
        (422, "Input validation failed", "input_validation_failed", None, False),
    ],
)
def test_error_answers_are_classified_from_their_problem_details(
    status: int, title: str, code: str, batch_reason: str | None, pauses: bool
) -> None:
    fake = FakeReplicate()
    body = {"type": "https://replicate.com/errors", "title": title, "detail": "it says why", "status": status}
    fake.scripted["POST /v1/models/acme/painter/predictions"] = [(status, {}, body, False)]
    refused = run(client(fake).create_run("acme/painter", request()))
    assert isinstance(refused, RunRefused)
    assert (refused.code, refused.batch_reason, refused.pauses_batch) == (code, batch_reason, pauses)
    assert "it says why" in refused.message
    assert len(fake.posts()) == 1  # never retried


def test_the_error_classes() -> None:
    assert classify(429) is ErrorClass.RETRY and classify(503) is ErrorClass.RETRY
    assert classify(402) is ErrorClass.PAUSE_INSUFFICIENT_CREDITS
    assert classify(401) is ErrorClass.BATCH_FAILS and classify(404) is ErrorClass.BATCH_FAILS
    assert classify(400) is ErrorClass.ROW_FAILS and classify(422) is ErrorClass.ROW_FAILS


def test_a_5xx_after_the_prediction_was_made_finds_it_instead_of_creating_a_second() -> None:
    fake = FakeReplicate()
    fake.prediction("acme/painter", VERSION, {"prompt": "a cat"}, "https://hooks.example/other")  # not ours
    fake.scripted["POST /v1/models/acme/painter/predictions"] = [(500, {}, {"title": "Internal"}, True)]
    made = run(client(fake).create_run("acme/painter", request()))
    assert isinstance(made, RunCreated) and made.run.run_id == "p0001"
    assert len(fake.posts()) == 1 and len(fake.predictions) == 2 and len(fake.lists()) == 1


def test_a_5xx_that_made_nothing_is_created_again_once() -> None:
    fake = FakeReplicate()
    fake.scripted["POST /v1/models/acme/painter/predictions"] = [(503, {}, {"title": "Unavailable"}, False)]
    made = run(client(fake).create_run("acme/painter", request()))
    assert isinstance(made, RunCreated)
    assert len(fake.posts()) == 2 and len(fake.predictions) == 1 and len(fake.lists()) == 1


def test_unanswered_creates_outlasting_the_retries_are_unavailable() -> None:
    fake = FakeReplicate()
    fake.scripted["POST /v1/models/acme/painter/predictions"] = [(502, {}, {}, False)] * 4
    with pytest.raises(ProviderUnavailable):
        run(client(fake).create_run("acme/painter", request()))
    assert fake.predictions == []


# -- the list search -------------------------------------------------------------------------


def search(
    intent: float, callback: str = "https://hooks.example/cb/b_1/0-1?token=1.abc"
) -> list[CreateSearch]:
    return [CreateSearch(request(callback), (intent,))]


def test_the_search_pages_back_to_the_intent_and_matches_webhook_model_and_input() -> None:
    fake = FakeReplicate(page_size=2, shows_webhook=True)
    now = time.time()
    fake.clock = lambda: now - 7200
    fake.prediction("acme/painter", VERSION, {"prompt": "older"}, "https://hooks.example/older")
    fake.clock = lambda: now - 3600
    fake.prediction(
        "acme/painter", VERSION, {"prompt": "a cat"}, "https://hooks.example/cb/b_1/0-1?token=1.abc"
    )
    fake.clock = lambda: now - 30
    ours = fake.prediction(
        "acme/painter", VERSION, {"prompt": "a cat"}, "https://hooks.example/cb/b_1/0-1?token=1.abc"
    )
    fake.clock = lambda: now - 10
    fake.prediction(
        "acme/painter", VERSION, {"prompt": "a dog"}, "https://hooks.example/cb/b_1/0-1?token=1.abc"
    )
    fake.prediction(
        "acme/other", VERSION, {"prompt": "a cat"}, "https://hooks.example/cb/b_1/0-1?token=1.abc"
    )
    for n in range(4):
        fake.prediction(
            "acme/painter", VERSION, {"prompt": "a cat"}, f"https://hooks.example/cb/b_1/0-{n + 2}?token=1.x"
        )
    found = run(client(fake).find_created("acme/painter", search(now - 120)))
    assert {url: [r.run_id for r in runs] for url, runs in found.items()} == {
        "https://hooks.example/cb/b_1/0-1?token=1.abc": [ours["id"]]
    }
    # 9 predictions, 2 a page: the walk stopped on the page with the first one older than the
    # intent (an hour old, the same row's: not this attempt's run), the last page never read.
    assert [r.url.params.get("cursor") for r in fake.lists()] == [None, "2", "4", "6"]


def test_the_search_finds_nothing_for_a_row_never_created_and_reads_one_page() -> None:
    fake = FakeReplicate(page_size=100)
    now = time.time()
    fake.prediction("acme/painter", VERSION, {"prompt": "a dog"}, "https://hooks.example/elsewhere")
    fake.prediction("acme/other", VERSION, {"prompt": "a cat"}, "https://hooks.example/elsewhere")
    assert run(client(fake).find_created("acme/painter", search(now - 60))) == {}
    assert len(fake.lists()) == 1


def test_two_predictions_for_one_row_attempt_are_both_found_where_the_webhook_shows() -> None:
    fake = FakeReplicate(shows_webhook=True)
    for _ in range(2):
        fake.prediction("acme/painter", VERSION, {"prompt": "a cat"}, request().callback_url)
    found = run(client(fake).find_created("acme/painter", search(time.time() - 60)))
    assert [r.run_id for r in found[request().callback_url]] == ["p0001", "p0000"]


def test_without_the_webhook_a_row_takes_one_prediction_of_its_input_made_just_after_its_intent() -> None:
    """Replicate's list shows no webhook: model, input and the time after the intent decide, each
    prediction goes to one row, and runs other rows have already are never taken."""
    fake = FakeReplicate(page_size=3)
    intent = time.time() - 2000
    fake.clock = lambda: intent + 5
    first = fake.prediction("acme/painter", VERSION, {"prompt": "a cat"}, "x")  # row 1's
    second = fake.prediction("acme/painter", VERSION, {"prompt": "a cat"}, "x")  # row 3's, same input
    fake.prediction("acme/painter", VERSION, {"prompt": "a dog"}, "x")  # another input
    fake.clock = lambda: intent + 1000  # long after the intents: another batch's or a later create
    fake.prediction("acme/painter", VERSION, {"prompt": "a cat"}, "x")
    rows = [CreateSearch(request(f"https://h/cb/b_1/0-{n}?t", "a cat"), (intent,)) for n in (1, 2)]
    found = run(client(fake).find_created("acme/painter", rows, frozenset({second["id"]})))
    assert {url: [r.run_id for r in runs] for url, runs in found.items()} == {
        "https://h/cb/b_1/0-1?t": [first["id"]]
    }
    both = run(client(fake).find_created("acme/painter", rows))
    assert sorted(r.run_id for runs in both.values() for r in runs) == sorted([first["id"], second["id"]])
    assert all(len(runs) == 1 for runs in both.values())


# -- one prediction, the pre-flight --------------------------------------------------------


def test_a_prediction_is_fetched_by_id_and_an_unknown_one_is_not_found() -> None:
    fake = FakeReplicate()
    fake.prediction(
        "acme/painter",
        VERSION,
        {},
        "https://h/cb",
        status="succeeded",
        output=["https://r.delivery/a/out-0.png"],
    )
    got = run(client(fake).get_run("acme/painter", "p0000"))
    assert isinstance(got, RunObject) and got.status == "completed" and got.charged_cost is None
    assert [o.model_dump(exclude_none=True) for o in got.outputs] == [
        {"output_id": "output_0", "type": "imageUrl", "url": "https://r.delivery/a/out-0.png"}
    ]
    assert isinstance(run(client(fake).get_run("acme/painter", "nope")), RunNotFound)


def test_the_pre_flight_reads_the_model_and_maps_404_and_401() -> None:
    fake = FakeReplicate()
    found = run(client(fake).get_technique("acme/painter"))
    assert isinstance(found, TechniqueDefinition) and found.run_cost is None and found.inputs == []
    missing = run(client(fake).get_technique("acme/missing-model"))
    assert isinstance(missing, TechniqueRefused) and missing.reason == "technique_not_found"
    refused = run(client(fake, token="wrong").get_technique("acme/painter"))
    assert isinstance(refused, TechniqueRefused) and refused.reason == "provider_unauthorized"
    # A bare version has no route of its own: its token is checked with one list request.
    assert isinstance(run(client(fake).get_technique(VERSION)), TechniqueDefinition)
    assert fake.requests[-1].url.path == "/v1/predictions"
    bad = run(client(fake).get_technique("not a model"))
    assert isinstance(bad, TechniqueRefused) and bad.reason == "technique_not_found"


# -- outputs and statuses --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (
            "https://r.delivery/x/out.png",
            [{"output_id": "output_0", "type": "imageUrl", "url": "https://r.delivery/x/out.png"}],
        ),
        (
            ["https://r.delivery/x/a.mp4", "https://r.delivery/x/b.wav", "https://r.delivery/x/c.bin"],
            [
                {"output_id": "output_0", "type": "videoUrl", "url": "https://r.delivery/x/a.mp4"},
                {"output_id": "output_1", "type": "audioUrl", "url": "https://r.delivery/x/b.wav"},
                {"output_id": "output_2", "type": "fileUrl", "url": "https://r.delivery/x/c.bin"},
            ],
        ),
        ("a plain answer", [{"output_id": "output_0", "type": "text", "value": "a plain answer"}]),
        (["Hel", "lo"], [{"output_id": "output_0", "type": "text", "value": "Hello"}]),
        (
            {"label": "cat", "score": 0.9},
            [{"output_id": "output_0", "type": "text", "value": '{"label":"cat","score":0.9}'}],
        ),
        (42, [{"output_id": "output_0", "type": "text", "value": "42"}]),
        (None, []),
    ],
)
def test_outputs_are_urls_or_one_text_output(output: Any, expected: list[dict[str, Any]]) -> None:
    assert [o.model_dump(exclude_none=True) for o in outputs_of(output)] == expected


@pytest.mark.parametrize(
    ("status", "run_status", "error_code"),
    [
        ("succeeded", "completed", None),
        ("failed", "failed", "prediction_failed"),
        ("canceled", "canceled", "prediction_canceled"),
        ("processing", "processing", None),
    ],
)
def test_prediction_statuses_map_to_run_outcomes(
    status: str, run_status: str, error_code: str | None
) -> None:
    prediction = Prediction.model_validate(
        {
            "id": "p1",
            "status": status,
            "output": "https://r.delivery/o.png",
            "error": "boom" if status == "failed" else None,
        }
    )
    mapped = run_of(prediction)
    assert (mapped.status, mapped.error_code) == (run_status, error_code)
    assert bool(mapped.outputs) is (status == "succeeded")
    assert (mapped.terminal_status is None) is (status == "processing")
    if status == "failed":
        assert mapped.error_message == "boom"


# -- webhook signatures: one table of vectors, judged by rowcall and by the official client ---


def prediction_body(status: str = "succeeded") -> bytes:
    return json.dumps(
        {
            "id": "p0007",
            "model": "acme/painter",
            "version": VERSION,
            "status": status,
            "input": {"prompt": "a cat"},
            "output": ["https://r.delivery/x/out-0.webp"],
            "logs": "",
            "error": None,
            "metrics": {"predict_time": 1.2},
            "created_at": "2026-12-03T17:00:00.000Z",
            "started_at": "2026-12-03T17:00:01.000Z",
            "completed_at": "2026-12-03T17:00:02.000Z",
            "urls": {"get": "https://api.replicate.com/v1/predictions/p0007", "cancel": "x"},
        }
    ).encode()


def signed(body: bytes, secret: str = SECRET, age_s: int = 0, message_id: str = "msg_1") -> dict[str, str]:
    return WebhookSigner(secret).headers(message_id, int(time.time()) - age_s, body)


def _vectors() -> list[tuple[str, dict[str, str], bytes, bool]]:
    body = prediction_body()
    good = signed(body)
    rotated = dict(good)
    rotated["webhook-signature"] = (
        f"{signed(body, OTHER_SECRET)['webhook-signature']} {good['webhook-signature']}"
    )
    return [
        ("valid", good, body, True),
        ("several signatures, one ours", rotated, body, True),
        ("2 minutes old", signed(body, age_s=120), body, True),
        ("stale (301 s)", signed(body, age_s=301), body, False),
        ("from the future (301 s)", signed(body, age_s=-301), body, False),
        ("wrong secret", signed(body, OTHER_SECRET), body, False),
        (
            "forged signature",
            good | {"webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()},
            body,
            False,
        ),
        ("body changed", good, body.replace(b"a cat", b"a dog"), False),
        ("id changed", good | {"webhook-id": "msg_2"}, body, False),
        ("no signature", {k: v for k, v in good.items() if k != "webhook-signature"}, body, False),
    ]


VECTOR_NAMES = [v[0] for v in _vectors()]


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_signature_vectors_are_judged_alike_by_rowcall_and_the_official_client(name: str) -> None:
    # Signed now, not at collection: the tolerance is counted from the judging.
    (headers, body, valid) = next(v[1:] for v in _vectors() if v[0] == name)
    ours = ReplicateDeliveries(lambda: [SECRET]).verify(headers, body)
    try:
        Webhooks.validate(
            headers=headers, body=body.decode(), secret=WebhookSigningSecret(key=SECRET), tolerance=300
        )
        theirs = True
    except Exception:
        theirs = False
    assert (ours, theirs) == (valid, valid), name


def test_a_rotated_secret_and_upper_case_headers_are_accepted() -> None:
    body = prediction_body()
    headers = {k.upper(): v for k, v in signed(body, OTHER_SECRET).items()}
    assert ReplicateDeliveries(lambda: [SECRET, OTHER_SECRET]).verify(headers, body)
    assert not ReplicateDeliveries(lambda: [SECRET, "whsec_not base64!"]).verify(headers, body)


def test_a_delivery_is_the_finished_prediction_with_its_outputs() -> None:
    delivery = ReplicateDeliveries(lambda: [SECRET]).parse(prediction_body())
    assert delivery.completed and delivery.run_id == "p0007" and delivery.run is not None
    assert [o.url for o in delivery.run.outputs] == ["https://r.delivery/x/out-0.webp"]
    failed = ReplicateDeliveries(lambda: [SECRET]).parse(prediction_body("failed"))
    assert not failed.completed and failed.error_code == "prediction_failed"
    with pytest.raises(ValueError):
        ReplicateDeliveries(lambda: [SECRET]).parse(prediction_body("processing"))
