"""Client of the runs provider (contract §5): create runs, map its answers to what they mean for a row."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import random
import ssl
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from rowcall.input_checks import TechniqueDefinition, TechniqueRefused
from rowcall.models import CreateRunRequest, RunObject

# Provider answers that say the whole batch cannot run, whatever the row: reason codes of §4.
BATCH_FATAL_CODES = {401: "provider_unauthorized", 403: "provider_unauthorized", 404: "technique_not_found"}
# The account cannot pay: nothing more can start until it is topped up, then the batch resumes.
PAUSING_STATUS = 402
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


@dataclass(frozen=True)
class RunCreated:
    run: RunObject


def created_epoch_s(run: RunObject) -> float | None:
    """The run's `created_at` in epoch seconds (FLORA sends epoch milliseconds), if it says."""
    value = run.created_at
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value / 1000 if value > 1e11 else float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None


@dataclass(frozen=True)
class RunAlreadyCreated:
    """The idempotency key was seen before: a run exists and its callback will come."""

    message: str


@dataclass(frozen=True)
class RunRefused:
    """A permanent refusal. `batch_reason` is set when no row of the batch can run."""

    status_code: int
    code: str
    message: str
    batch_reason: str | None

    @property
    def pauses_batch(self) -> bool:
        return self.status_code == PAUSING_STATUS


CreateOutcome = RunCreated | RunAlreadyCreated | RunRefused


@dataclass(frozen=True)
class RunNotFound:
    """The provider does not know the run (or not under this technique)."""

    message: str


_Outcome = TypeVar("_Outcome")


class ProviderUnavailable(Exception):
    """Transient failures outlasted the retries; the row is left for a later attempt."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 6
    base_delay_s: float = 0.2
    max_delay_s: float = 20.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: spreads the retries of many rows that failed together."""
        return rng.uniform(0, min(self.max_delay_s, self.base_delay_s * 2**attempt))


# httpcore tries `import sniffio` each time it makes an async lock (several per request), and a
# failed import is not remembered: each try walks sys.path again (~0.8 ms; 4-5 per provider
# request, profiled in the worker). anyio 4 no longer installs sniffio; when it is absent, say so
# once, and httpcore takes asyncio at once (the only event loop this package runs).
if importlib.util.find_spec("sniffio") is None:
    sys.modules.setdefault("sniffio", None)  # type: ignore[arg-type]


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default verification (certifi's CA bundle), built once per container."""
    return httpx.create_ssl_context()


ApiKey = str | Callable[[], str]
"""The provider's bearer token, or a source of it read at each request (it caches for a few
minutes), so a long-lived client sends a rotated key within that time."""


@dataclass(frozen=True)
class ProviderConnection:
    base_url: str
    api_key: ApiKey
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float = 15.0

    def http(self) -> httpx.AsyncClient:
        """An HTTP client for one event loop (one invocation), on the container's TLS context:
        building one costs ~50-140 ms of CPU (the CA bundle is parsed), which every invocation
        of the recorder, worker and safety net paid before."""
        return httpx.AsyncClient(timeout=self.timeout_s, follow_redirects=False, verify=tls_context())

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


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


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
                delay = _retry_after(response)
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
        if (status, error.code) in ALREADY_CREATED:
            return RunAlreadyCreated(error.message)
        return RunRefused(status, error.code, error.message, BATCH_FATAL_CODES.get(status))
