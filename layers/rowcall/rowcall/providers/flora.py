"""FLORA's adapter behind the provider port (contract §5): create technique runs with an
idempotency key, fetch a run's outputs after its webhook (the envelope carries none), read a
technique's inputs and price, and map FLORA's answers to what they mean for a row."""

from __future__ import annotations

import asyncio
import importlib.util
import random
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from rowcall.flora_signature import SIGNATURE_HEADER, verify_signature
from rowcall.input_checks import TechniqueDefinition, TechniqueRefused
from rowcall.models import CreateRunRequest, RunObject, RunWebhook
from rowcall.providers.port import (
    PAUSING_STATUS,
    ApiKey,
    CreateOutcome,
    CreateSearch,
    Delivery,
    ErrorClass,
    ProviderInfo,
    ProviderUnavailable,
    RetryPolicy,
    RunAlreadyCreated,
    RunCreated,
    RunNotFound,
    RunRefused,
    created_epoch_s,
    provider_http,
    retry_after,
    tls_context,
)

__all__ = [
    "ALREADY_CREATED",
    "BATCH_FATAL_CODES",
    "FLORA",
    "PAUSING_STATUS",
    "REPLAY_AGE_S",
    "ApiKey",
    "CreateOutcome",
    "FloraDeliveries",
    "ProviderClient",
    "ProviderConnection",
    "ProviderErrorBody",
    "ProviderErrorEnvelope",
    "ProviderUnavailable",
    "RetryPolicy",
    "RunAlreadyCreated",
    "RunCreated",
    "RunNotFound",
    "RunRefused",
    "classify",
    "created_epoch_s",
    "tls_context",
]

FLORA = ProviderInfo(
    name="flora", idempotent_creates=True, publishes_prices=True, webhook_carries_outputs=False
)

# Provider answers that say the whole batch cannot run, whatever the row: reason codes of §4.
BATCH_FATAL_CODES = {401: "provider_unauthorized", 403: "provider_unauthorized", 404: "technique_not_found"}
# The idempotency key was used already, so a run exists for the row's attempt and its webhook
# will come. FLORA's SDK: 409 `idempotency_duplicate` (two hours). FLORA's idempotency page: the
# same key with another body is 422 `idempotency_conflict` (24 hours). Keys are ours alone,
# `{batch}.{row}.{attempt}` (a reprocess takes a new attempt, so a new key), and a row's
# attempt always sends the same inputs; its body changes only if its callback URL did (the
# callback secret rotated, or the API's URL changed, between the first create and this one).
# Either way the run exists: failing the row would refuse its outcome and lose what it made.
ALREADY_CREATED = frozenset({(409, "idempotency_duplicate"), (422, "idempotency_conflict")})
# A run object whose `created_at` is this much older than our create is the original response
# replayed (FLORA's 24-hour reading), not a new run: clocks differ by far less, and a row is
# created again only once its intent is stale (`reconcile-after-s`, minutes).
REPLAY_AGE_S = 60.0


class ProviderErrorBody(BaseModel):
    code: str = "unknown"
    message: str = ""


class ProviderErrorEnvelope(BaseModel):
    error: ProviderErrorBody


_Outcome = TypeVar("_Outcome")


# httpcore tries `import sniffio` each time it makes an async lock (several per request), and a
# failed import is not remembered: each try walks sys.path again (~0.8 ms; 4-5 per provider
# request, profiled in the worker). anyio 4 no longer installs sniffio; when it is absent, say so
# once, and httpcore takes asyncio at once (the only event loop this package runs).
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ProviderConnection:
    base_url: str
    api_key: ApiKey
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float = 15.0

    @property
    def info(self) -> ProviderInfo:
        return FLORA

    def http(self) -> httpx.AsyncClient:
        return provider_http(self.timeout_s)

    def client(self, http: httpx.AsyncClient) -> ProviderClient:
        """A client of this provider over `http` (one per event loop and invocation)."""
        return ProviderClient(http, base_url=self.base_url, api_key=self.api_key, retry=self.retry)


def _error_of(response: httpx.Response) -> ProviderErrorBody:
    try:
        return ProviderErrorEnvelope.model_validate(response.json()).error
    except (ValueError, ValidationError):
        return ProviderErrorBody(code=f"http_{response.status_code}", message=response.text[:200])


def _fetched(response: httpx.Response) -> RunObject | RunNotFound | None:
    if response.status_code == 200:
        try:
            return RunObject.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            raise ProviderUnavailable(f"provider answered a run that is not one: {exc}") from None
    if response.status_code == 404:
        return RunNotFound(_error_of(response).message)
    if response.status_code == 429 or response.status_code >= 500:
        return None
    error = _error_of(response)
    raise ProviderUnavailable(f"provider refused the fetch: HTTP {response.status_code} {error.code}")


def _technique_of(response: httpx.Response) -> TechniqueDefinition | TechniqueRefused | None:
    status = response.status_code
    if status == 200:
        try:
            return TechniqueDefinition.model_validate(response.json())
        except (ValueError, ValidationError) as exc:
            raise ProviderUnavailable(f"provider answered a technique that is not one: {exc}") from None
    if status == 429 or status >= 500:
        return None
    error = _error_of(response)
    reason = BATCH_FATAL_CODES.get(status)
    if reason is None:
        raise ProviderUnavailable(f"provider refused the technique: HTTP {status} {error.code}")
    return TechniqueRefused(reason, f"the provider answered {status} {error.code}: {error.message}"[:500])


class ProviderClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_key: ApiKey,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._api_key = api_key
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()

    def _headers(self) -> dict[str, str]:
        key = self._api_key() if callable(self._api_key) else self._api_key
        return {"Authorization": f"Bearer {key}"}

    async def create_run(self, technique_id: str, request: CreateRunRequest) -> CreateOutcome:
        url = f"{self._base}/techniques/{technique_id}/runs"
        body = request.model_dump(mode="json")
        return await self._with_retries("POST", url, body, self._outcome, "accept the run")

    async def get_run(self, technique_id: str, run_id: str) -> RunObject | RunNotFound:
        """The run with its outputs (its `poll_url`); asked once, after its terminal webhook."""
        url = f"{self._base}/techniques/{quote(technique_id, safe='')}/runs/{quote(run_id, safe='')}"
        return await self._with_retries("GET", url, None, _fetched, "return the run")

    async def find_created(
        self, technique_id: str, searches: Sequence[CreateSearch], known_run_ids: frozenset[str] = frozenset()
    ) -> Mapping[str, list[RunObject]]:
        """FLORA's idempotency key makes a second create of a row's attempt a 409: nothing to look for."""
        return {}

    async def get_technique(self, technique_id: str) -> TechniqueDefinition | TechniqueRefused:
        """The technique's definition (`GET /techniques/{id}`), or the refusal that fails the
        batch (404 technique_not_found, 401/403 provider_unauthorized). 429 and 5xx are retried;
        past the retries, ProviderUnavailable."""
        url = f"{self._base}/techniques/{quote(technique_id, safe='')}"
        return await self._with_retries("GET", url, None, _technique_of, "return the technique")

    async def _with_retries(
        self,
        method: str,
        url: str,
        body: dict[str, Any] | None,
        outcome_of: Callable[[httpx.Response], _Outcome | None],
        what: str,
    ) -> _Outcome:
        """`outcome_of` returns None for an answer worth trying again (429, 5xx)."""
        last_problem = "no attempt made"
        for attempt in range(self._retry.attempts):
            delay: float | None = None
            try:
                response = await self._http.request(method, url, json=body, headers=self._headers())
            except httpx.TransportError as exc:
                last_problem = f"{type(exc).__name__}: {exc}"
            else:
                outcome = outcome_of(response)
                if outcome is not None:
                    return outcome
                last_problem = f"HTTP {response.status_code}"
                delay = retry_after(response)
            if attempt + 1 < self._retry.attempts:
                backoff = self._retry.backoff(attempt, self._rng)
                await self._sleep(backoff if delay is None else delay + backoff / 4)
        tries = self._retry.attempts
        raise ProviderUnavailable(f"provider did not {what} after {tries} tries: {last_problem}")

    @staticmethod
    def _outcome(response: httpx.Response) -> CreateOutcome | None:
        """None means: transient, try again."""
        status = response.status_code
        if 200 <= status < 300:
            try:
                return RunCreated(RunObject.model_validate(response.json()))
            except (ValueError, ValidationError):
                return RunRefused(status, "invalid_provider_response", response.text[:200], None)
        if status == 429 or status >= 500:
            return None
        error = _error_of(response)
        if classify(status, error.code) is ErrorClass.ALREADY_CREATED:
            return RunAlreadyCreated(error.message)
        return RunRefused(status, error.code, error.message, BATCH_FATAL_CODES.get(status))


def classify(status: int, code: str) -> ErrorClass:
    """What a FLORA error answer (`{"error": {"code", "message"}}`) means for the row's create."""
    if status == 429 or status >= 500:
        return ErrorClass.RETRY
    if (status, code) in ALREADY_CREATED:
        return ErrorClass.ALREADY_CREATED
    if status in BATCH_FATAL_CODES:
        return ErrorClass.BATCH_FAILS
    if status == PAUSING_STATUS:
        return ErrorClass.PAUSE_INSUFFICIENT_CREDITS
    return ErrorClass.ROW_FAILS


# A FLORA envelope is well under 1 KB; anything far larger is refused before it is parsed.
FLORA_MAX_CALLBACK_BYTES = 64 * 1024


class FloraDeliveries:
    """FLORA's run webhooks: `Flora-Signature` over the raw body under the workspace secrets
    (several while one rotates), then the envelope, which says how the run ended and nothing of
    its outputs (they are fetched from the run once)."""

    max_body_bytes = FLORA_MAX_CALLBACK_BYTES

    def __init__(self, secrets: Callable[[], Sequence[str]]) -> None:
        self._secrets = secrets

    def verify(self, headers: Mapping[str, str], raw_body: bytes) -> bool:
        header = next((v for k, v in headers.items() if k.lower() == SIGNATURE_HEADER.lower()), None)
        return verify_signature(header, raw_body, self._secrets())

    def parse(self, raw_body: bytes) -> Delivery:
        data = RunWebhook.model_validate_json(raw_body).data
        return Delivery(
            run_id=data.run_id,
            completed=data.status == "completed",
            error_code=data.error_code,
            error_message=data.error_message,
        )
