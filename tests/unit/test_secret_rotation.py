"""A rotated SSM secret is used by the same warm objects once the cache's max age has passed.

The functions' domain objects are built once per container (`rowcall.compose`'s cached factories);
each secret is read through Powertools' parameter cache at use. The cache's clock is shifted here
instead of waiting five minutes.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.parameters import base as powertools_parameters
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from rowcall import compose
from rowcall.identity import CallbackSigner
from rowcall.models import DoneMessage, FinishedRun, RowStatus
from rowcall_local.webhook_receiver import WebhookReceiver

from .conftest import Aws, chunk_messages, ingest
from .scripted_provider import ScriptedProvider

PARAMS = {
    "PROVIDER_API_KEY_PARAM": "/rot/provider-api-key",
    "CALLBACK_SECRET_PARAM": "/rot/callback-secret",
    "WEBHOOK_SECRET_PARAM": "/rot/webhook-secret",
}
OLD = {"PROVIDER_API_KEY_PARAM": "key-old", "CALLBACK_SECRET_PARAM": "cb-old", "WEBHOOK_SECRET_PARAM": ""}
NEW = {"PROVIDER_API_KEY_PARAM": "key-new", "CALLBACK_SECRET_PARAM": "cb-new", "WEBHOOK_SECRET_PARAM": ""}
OLD["WEBHOOK_SECRET_PARAM"] = "whsec_" + "b2xkLXdlYmhvb2stc2VjcmV0LTMyLWJ5dGVzISE="
NEW["WEBHOOK_SECRET_PARAM"] = "whsec_" + "bmV3LXdlYmhvb2stc2VjcmV0LTMyLWJ5dGVzISE="
FACTORIES = (compose.run_starter, compose.outcome_recorder, compose.on_done_delivery)


class Clock:
    """What Powertools' parameter cache believes the time is."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ahead = datetime.timedelta(0)
        clock = self

        class Shifted(datetime.datetime):
            @classmethod
            def now(cls, tz: datetime.tzinfo | None = None) -> Shifted:
                return datetime.datetime.now(tz) + clock.ahead  # type: ignore[return-value]

        # Raises if Powertools stops reading the time this way: the test would then say so.
        monkeypatch.setattr(powertools_parameters, "datetime", Shifted)

    def advance(self, seconds: float) -> None:
        self.ahead += datetime.timedelta(seconds=seconds)


@pytest.fixture
def provider() -> Iterator[ScriptedProvider]:
    scripted = ScriptedProvider()
    scripted.by_path["/techniques/tech/runs"] = (201, {}, {"run_id": "run_1", "status": "queued"})
    scripted.by_path["/techniques/tech/runs/run_1"] = (
        200,
        {},
        {"run_id": "run_1", "status": "completed", "outputs": [{"url": "https://out.example/1.png"}]},
    )
    yield scripted
    scripted.close()


@pytest.fixture
def clock(aws: Aws, provider: ScriptedProvider, monkeypatch: pytest.MonkeyPatch) -> Iterator[Clock]:
    ssm = boto3.client("ssm", region_name="us-east-1")
    for env, name in PARAMS.items():
        ssm.put_parameter(Name=name, Value=OLD[env], Type="SecureString")
        monkeypatch.setenv(env, name)
    for key, value in {
        "TABLE_NAME": aws.table,
        "DONE_QUEUE_URL": aws.done_queue_url,
        "CHUNK_QUEUE_URL": aws.chunk_queue_url,
        "TOPIC_ARN": aws.topic_arn,
        "PROVIDER_URL": provider.url,
        "CALLBACK_BASE_URL": "https://api.example",
        "ALLOW_LOOPBACK_WEBHOOKS": "true",
    }.items():
        monkeypatch.setenv(key, value)
    parameters.clear_caches()
    for factory in FACTORIES:
        factory.cache_clear()
    yield Clock(monkeypatch)
    parameters.clear_caches()
    for factory in FACTORIES:
        factory.cache_clear()


def rotate() -> None:
    ssm = boto3.client("ssm", region_name="us-east-1")
    for env, name in PARAMS.items():
        ssm.put_parameter(Name=name, Value=NEW[env], Type="SecureString", Overwrite=True)


def start_one_row(aws: Aws, provider: ScriptedProvider) -> tuple[str | None, str, str]:
    """A new one-row batch through the container's worker: the key and callback token it used."""
    batch_id = ingest(aws, b"prompt\na cat\n")
    (message,) = chunk_messages(aws)
    assert compose.run_starter().start_chunk(message, lambda: 300.0).started == 1
    request = provider.requests[-1]
    callback = urlsplit(request["body"]["callback_url"])  # type: ignore[index]
    return request["auth"], batch_id, parse_qs(callback.query)["token"][0]  # type: ignore[return-value]


def test_the_worker_uses_a_rotated_api_key_and_callback_secret_after_the_max_age(
    aws: Aws, provider: ScriptedProvider, clock: Clock
) -> None:
    worker = compose.run_starter()
    auth, batch_id, token = start_one_row(aws, provider)
    assert auth == "Bearer key-old" and CallbackSigner("cb-old").verify(batch_id, "0-1", token) == 1
    rotate()
    clock.advance(compose.SECRET_MAX_AGE_S - 10)
    auth, batch_id, token = start_one_row(aws, provider)
    assert auth == "Bearer key-old", "within the max age the cached key is used"
    clock.advance(20)
    auth, batch_id, token = start_one_row(aws, provider)
    assert compose.run_starter() is worker  # the same warm object, not a rebuilt one
    assert auth == "Bearer key-new"
    assert CallbackSigner("cb-new").verify(batch_id, "0-1", token) == 1
    assert CallbackSigner("cb-old").verify(batch_id, "0-1", token) is None


def test_the_recorder_fetches_with_a_rotated_api_key_after_the_max_age(
    aws: Aws, provider: ScriptedProvider, clock: Clock
) -> None:
    _, batch_id, _ = start_one_row(aws, provider)
    finished = FinishedRun(
        batch_id=batch_id, chunk=0, record=1, attempt=1, run_id="run_1", status=RowStatus.COMPLETED
    )
    recorder = compose.outcome_recorder()
    recorder.record([("m1", finished)])
    rotate()
    clock.advance(compose.SECRET_MAX_AGE_S + 1)
    recorder.record([("m2", finished)])
    assert compose.outcome_recorder() is recorder
    gets = [r["auth"] for r in provider.requests if r["method"] == "GET"]
    assert gets == ["Bearer key-old", "Bearer key-new"]


def test_the_notifier_signs_with_a_rotated_webhook_secret_after_the_max_age(aws: Aws, clock: Clock) -> None:
    hook = WebhookReceiver()
    try:

        def notify() -> None:
            ingest(aws, b"prompt\n", **{"on-done-url": hook.url + "/done"})  # header only: done at once
            (body,) = aws.drain(aws.done_queue_url)
            result = compose.on_done_delivery().deliver(DoneMessage.model_validate_json(body))
            assert result.status == "delivered", result

        notify()
        rotate()
        clock.advance(compose.SECRET_MAX_AGE_S + 1)
        notify()
        first, second = hook.got
        assert Webhook(OLD["WEBHOOK_SECRET_PARAM"]).verify(first.body, first.headers)
        assert Webhook(NEW["WEBHOOK_SECRET_PARAM"]).verify(second.body, second.headers)
        with pytest.raises(WebhookVerificationError):
            Webhook(OLD["WEBHOOK_SECRET_PARAM"]).verify(second.body, second.headers)
    finally:
        hook.close()
