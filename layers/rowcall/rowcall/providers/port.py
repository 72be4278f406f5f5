"""The provider port: what rowcall asks of any run provider, and what its answers mean for a row.

The worker, the recorder, the webhook, the safety net and ingest's pre-flight speak only this;
each provider is an adapter behind it (`rowcall.providers.flora`, `rowcall.providers.replicate`).
An adapter speaks its provider's HTTP API and translates its objects to rowcall's: a run is a
`RunObject` (`run_id`, `status` completed | failed | still going, `outputs` as
`{output_id, type, url}`, `charged_cost` or None), a technique a `TechniqueDefinition`, and every
error answer one of `ErrorClass`.
"""

from __future__ import annotations

import enum
import functools
import random
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

import httpx

from rowcall.input_checks import TechniqueDefinition, TechniqueRefused
from rowcall.models import CreateRunRequest, RunObject

# The account cannot pay: nothing more can start until it is topped up, then the batch resumes.
PAUSING_STATUS = 402


class ErrorClass(enum.Enum):
    """What a provider's error answer means (every adapter classifies its own answers)."""

    RETRY = "retry"
    """Transient (429, 5xx, a transport error): asked again after a backoff."""
    ROW_FAILS = "row_fails"
    """This row's inputs were refused: the row fails, the batch goes on."""
    BATCH_FAILS = "batch_fails"
    """No row of the batch can run (unknown technique, refused credentials)."""
    PAUSE_INSUFFICIENT_CREDITS = "pause_insufficient_credits"
    """The account cannot pay: the batch pauses `insufficient_credits` until resumed."""
    ALREADY_CREATED = "already_created"
    """The idempotency key was used already: the run exists and its webhook will come."""


@dataclass(frozen=True)
class RunCreated:
    run: RunObject


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


class ProviderUnavailable(Exception):
    """Transient failures outlasted the retries; the row is left for a later attempt."""


class ProviderNotConfigured(Exception):
    """The batch names a provider this stack has no credentials for (its batches fail
    `provider_unauthorized` at ingest, before any run)."""


def created_epoch_s(run: RunObject) -> float | None:
    """The run's `created_at` in epoch seconds (FLORA sends epoch milliseconds, Replicate ISO
    8601), if it says."""
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
class RetryPolicy:
    attempts: int = 6
    base_delay_s: float = 0.2
    max_delay_s: float = 20.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: spreads the retries of many rows that failed together."""
        return rng.uniform(0, min(self.max_delay_s, self.base_delay_s * 2**attempt))


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default verification (certifi's CA bundle), built once per container."""
    return httpx.create_ssl_context()


def provider_http(timeout_s: float) -> httpx.AsyncClient:
    """An HTTP client for one event loop (one invocation), on the container's TLS context:
    building one costs ~50-140 ms of CPU (the CA bundle is parsed), which every invocation
    of the recorder, worker and safety net paid before. Redirects are never followed."""
    return httpx.AsyncClient(timeout=timeout_s, follow_redirects=False, verify=tls_context())


def retry_after(response: httpx.Response) -> float | None:
    """The `retry-after` seconds of a 429 or 503, if it says."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


ApiKey = str | Callable[[], str]
"""The provider's bearer token, or a source of it read at each request (it caches for a few
minutes), so a long-lived client sends a rotated key within that time."""


@dataclass(frozen=True)
class Delivery:
    """A verified, parsed run webhook: the run's terminal state and, where the provider's
    webhook carries it (Replicate), the finished run itself, so nothing is fetched."""

    run_id: str
    completed: bool
    error_code: str | None = None
    error_message: str | None = None
    run: RunObject | None = None


@dataclass(frozen=True)
class CreateSearch:
    """A row attempt's create, and when earlier deliveries meant to send it (their intents)."""

    request: CreateRunRequest
    intents: tuple[float, ...]


class RunProvider(Protocol):
    """One provider's API over one HTTP client (one per event loop and invocation)."""

    async def create_run(self, technique_id: str, request: CreateRunRequest) -> CreateOutcome:
        """Start one run for a row: its inputs, its callback URL, its idempotency key (sent where
        the provider has such a thing)."""
        ...

    async def get_run(self, technique_id: str, run_id: str) -> RunObject | RunNotFound:
        """The run with its outputs: the safety net's one question about a silent run, and the
        recorder's where the webhook carries no outputs."""
        ...

    async def get_technique(self, technique_id: str) -> TechniqueDefinition | TechniqueRefused:
        """The technique's inputs and price (None where the provider publishes none), or the
        refusal that fails the batch before any run."""
        ...

    async def find_created(
        self, technique_id: str, searches: Sequence[CreateSearch], known_run_ids: frozenset[str] = frozenset()
    ) -> Mapping[str, list[RunObject]]:
        """Runs already made for these requests by the creates sent at their intents, by callback
        URL: how a provider without idempotency keys avoids a second run for a row whose earlier
        create may have been made. Runs in `known_run_ids` belong to other rows. A provider with
        idempotency keys answers {}."""
        ...


@dataclass(frozen=True)
class ProviderInfo:
    """What the rest of rowcall needs to know of a provider beside its API."""

    name: str
    idempotent_creates: bool
    """Creates carry an idempotency key the provider honours (a retried create makes no second run)."""
    publishes_prices: bool
    """Techniques have a price per run (budgets and the daily budget apply)."""
    webhook_carries_outputs: bool
    """A completion's webhook is the finished run with its outputs (no GET after it)."""


class ProviderConnector(Protocol):
    """A provider's address and credentials, per container; `client` per invocation."""

    @property
    def info(self) -> ProviderInfo: ...

    def http(self) -> httpx.AsyncClient: ...

    def client(self, http: httpx.AsyncClient) -> RunProvider: ...


class DeliveryReader(Protocol):
    """Verifies and parses one provider's run webhooks (the callback route asks the one of the
    row's batch's provider)."""

    max_body_bytes: int

    def verify(self, headers: Mapping[str, str], raw_body: bytes) -> bool:
        """The provider's signature over the raw body, within its tolerance."""
        ...

    def parse(self, raw_body: bytes) -> Delivery:
        """The delivery; raises ValueError (pydantic's ValidationError) on a body that is not one."""
        ...


@dataclass
class Providers:
    """The stack's providers by name; a provider without credentials on this stack is absent."""

    connectors: dict[str, ProviderConnector] = field(default_factory=dict)

    def get(self, name: str) -> ProviderConnector:
        connector = self.connectors.get(name)
        if connector is None:
            raise ProviderNotConfigured(f"provider {name!r} is not configured on this stack")
        return connector

    def configured(self, name: str) -> bool:
        return name in self.connectors
