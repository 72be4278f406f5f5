"""The provider emulator on loopback and a RunStarter pointed at it, shared by the unit tests that
start runs. Its own module (not a test file) so test files import it without importing each other."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from rowcall.callbacks import CallbackIntake
from rowcall.identity import CallbackSigner
from rowcall.models import FinishedRun, RunWebhook
from rowcall.outcomes import OutcomeRecorder
from rowcall.provider import ProviderConnection, RetryPolicy
from rowcall.reuse import RowReuse
from rowcall.runs import RunStarter
from rowcall_local.provider_emulator import ProviderEmulator, ProviderFaults
from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

if TYPE_CHECKING:  # conftest imports this module for its fixtures
    from .conftest import Aws
    from .scripted_provider import ScriptedProvider

API_KEY = "test-provider-key"
CALLBACK_SECRET = "callback-secret"
SIGNER = CallbackSigner(CALLBACK_SECRET)
PROVIDER_SECRET = "whsec_provider-signing-secret"
WEBHOOK_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FAST_RETRY = RetryPolicy(attempts=8, base_delay_s=0.01, max_delay_s=0.05)


def start_provider(**faults: object) -> ProviderEmulator:
    emulator = ProviderEmulator(
        API_KEY,
        ProviderFaults(delay_ms=(0, 5), seed=7, **faults),  # type: ignore[arg-type]
        webhook_secret=PROVIDER_SECRET,
        allow_loopback_callbacks=True,
    )
    emulator.start()
    return emulator


def starter(
    aws: Aws,
    provider: ProviderEmulator | ScriptedProvider,
    callbacks: Receiver,
    reuse: RowReuse | None = None,
    **options: Any,
) -> RunStarter:
    """Anything with a `url` that speaks the runs API can be the provider; `options` are the
    RunStarter's own (concurrency, chunk_queue, max_in_flight, clock ...)."""
    return RunStarter(
        s3=aws.s3,
        ledger=aws.ledger,
        finisher=aws.finisher,
        provider=ProviderConnection(base_url=provider.url, api_key=API_KEY, retry=FAST_RETRY),
        signer=SIGNER,
        callback_base_url=callbacks.url,
        reuse=reuse,
        **{"concurrency": 4, **options},
    )


def replay(
    aws: Aws,
    provider: ProviderEmulator,
    received: list,  # type: ignore[type-arg]
    order: random.Random | None = None,
) -> None:
    """Deliver recorded webhooks as the webhook function would (token, then signature), then
    record what they queued as the recorder function would."""
    replay_intake(aws, received, order)
    recorder = OutcomeRecorder(
        ledger=aws.ledger,
        finisher=aws.finisher,
        provider=ProviderConnection(base_url=provider.url, api_key=API_KEY, retry=FAST_RETRY),
    )
    messages = [FinishedRun.model_validate_json(b) for b in aws.drain(aws.finished_run_queue_url)]
    assert not recorder.record([(str(n), m) for n, m in enumerate(messages)]).failed


def replay_intake(
    aws: Aws,
    received: list,  # type: ignore[type-arg]
    order: random.Random | None = None,
) -> None:
    """Deliver recorded webhooks as the webhook function would (token, then signature): each
    queues its finished run."""
    intake = CallbackIntake(
        finished_runs=aws.finished_runs,
        callback_secrets=lambda: [CALLBACK_SECRET],
        provider_signing_secrets=lambda: [PROVIDER_SECRET],
    )
    calls = list(received)
    if order:
        order.shuffle(calls)
    for call in calls:
        parts = urlsplit(call.path)
        _, _, batch_id, row_id = parts.path.split("/")
        attempt = intake.attempt_of(batch_id, row_id, parse_qs(parts.query)["token"][0])
        assert attempt is not None
        assert intake.signed_by_provider(call.headers["flora-signature"], call.body)
        intake.accept(batch_id, row_id, attempt, RunWebhook.model_validate_json(call.body))
