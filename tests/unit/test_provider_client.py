"""The provider client against a scripted provider on loopback: what each answer means for a row."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from rowcall.models import CreateRunRequest, RunInput
from rowcall.provider import (
    ProviderClient,
    ProviderUnavailable,
    RetryPolicy,
    RunAlreadyCreated,
    RunCreated,
    RunRefused,
)

from .scripted_provider import ScriptedProvider, error

RUN = {"run_id": "run_1", "status": "queued", "outputs": []}


@pytest.fixture
def provider() -> Iterator[ScriptedProvider]:
    scripted = ScriptedProvider()
    yield scripted
    scripted.close()


REQUEST = CreateRunRequest(
    inputs=[RunInput(id="prompt", type="text", value="a cat")],
    callback_url="https://api.example/callbacks/b/0-1?token=t",
    idempotency_key="b.0-1.1",
)


def create(provider: ScriptedProvider, sleeps: list[float] | None = None) -> object:
    async def run() -> object:
        async def sleep(seconds: float) -> None:
            if sleeps is not None:
                sleeps.append(seconds)

        async with httpx.AsyncClient() as http:
            client = ProviderClient(
                http,
                base_url=provider.url,
                api_key="k",
                retry=RetryPolicy(attempts=3, base_delay_s=0.01),
                sleep=sleep,
            )
            return await client.create_run("tech-1", REQUEST)

    return asyncio.run(run())


def test_a_created_run_and_the_request_that_made_it(provider: ScriptedProvider) -> None:
    provider.script = [(201, {}, RUN)]
    outcome = create(provider)
    assert isinstance(outcome, RunCreated) and outcome.run.run_id == "run_1"
    (request,) = provider.requests
    assert request["path"] == "/techniques/tech-1/runs" and request["auth"] == "Bearer k"
    assert request["body"] == REQUEST.model_dump(mode="json")


def test_429_waits_as_long_as_retry_after_says_then_succeeds(provider: ScriptedProvider) -> None:
    provider.script = [
        (429, {"Retry-After": "2"}, error("rate_limited")),
        (503, {}, error("unavailable")),
        (201, {}, RUN),
    ]
    sleeps: list[float] = []
    assert isinstance(create(provider, sleeps), RunCreated)
    assert len(sleeps) == 2 and 2.0 <= sleeps[0] <= 2.01 and sleeps[1] <= 0.02


def test_transient_failures_that_outlast_the_retries_leave_the_row_for_later(
    provider: ScriptedProvider,
) -> None:
    provider.script = [(503, {}, error("unavailable"))] * 3
    with pytest.raises(ProviderUnavailable):
        create(provider, [])


def test_409_idempotency_duplicate_means_already_started(provider: ScriptedProvider) -> None:
    provider.script = [(409, {}, error("idempotency_duplicate"))]
    assert isinstance(create(provider), RunAlreadyCreated)


@pytest.mark.parametrize(
    ("status", "code", "batch_reason"),
    [
        (422, "validation_error", None),
        (400, "invalid_input", None),
        (402, "insufficient_credits", None),
        (401, "unauthorized", "provider_unauthorized"),
        (404, "not_found", "technique_not_found"),
    ],
)
def test_a_permanent_refusal_carries_the_providers_code(
    provider: ScriptedProvider, status: int, code: str, batch_reason: str | None
) -> None:
    provider.script = [(status, {}, error(code))]
    outcome = create(provider)
    assert isinstance(outcome, RunRefused)
    assert (outcome.code, outcome.batch_reason) == (code, batch_reason)
    assert len(provider.requests) == 1
