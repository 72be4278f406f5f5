"""Replicate's adapter behind the provider port (contract §5b), as its official Python client
`replicate` 1.0.7 speaks to it.

- A technique is a model (`owner/name`: `POST /v1/models/{owner}/{name}/predictions`) or a version
  (64 hex characters, or `owner/name:version`: `POST /v1/predictions` with `version`). The body is
  `{"input": {id: value}, "webhook": <callback URL>, "webhook_events_filter": ["completed"]}`, so
  only the terminal delivery comes, and it is the prediction itself with its `output`: nothing is
  fetched after a webhook.
- Replicate has no idempotency key. A create answered 5xx or not at all may still have made its
  prediction, so before it is sent again the predictions list (`GET /v1/predictions`, newest
  first, cursor pages) is searched for it: same webhook (our callback URL, unique per row
  attempt), same model or version, same input, created since the create was sent. The worker does
  the same for a row whose earlier delivery died between its intent and its start page.
- Errors are problem-details JSON (`{"type", "title", "status", "detail"}`, RFC 7807, as the
  client's `ReplicateError.from_response` reads them): 429 (with `retry-after`) and 5xx are
  retried; 401/403 fail the batch `provider_unauthorized`, 404 `technique_not_found`; 402 (the
  account's credit is exhausted) pauses it `insufficient_credits`; any other 4xx fails the row.
- Replicate publishes no price per run: techniques have `run_cost` None, runs `charged_cost` None.
- Deliveries are signed per Standard Webhooks under the account's `whsec_` secret
  (`GET /v1/webhooks/default/secret`): `rowcall.signing` verifies them, 300 s tolerance.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, urljoin, urlsplit

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from rowcall.input_checks import TechniqueDefinition, TechniqueRefused
from rowcall.models import CreateRunRequest, RunObject, RunOutput
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
    RunCreated,
    RunNotFound,
    RunRefused,
    created_epoch_s,
    provider_http,
    retry_after,
)
from rowcall.signing import WebhookSigner

REPLICATE = ProviderInfo(
    name="replicate", idempotent_creates=False, publishes_prices=False, webhook_carries_outputs=True
)
VERSION_ID = re.compile(r"^[0-9a-f]{64}$")
MODEL_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)/([A-Za-z0-9][A-Za-z0-9._-]*)$")
BATCH_FATAL = {401: "provider_unauthorized", 403: "provider_unauthorized", 404: "technique_not_found"}
# Our clock against Replicate's `created_at`: a prediction created up to this long before the
# intent (or the create) was written is still looked at.
CLOCK_SKEW_S = 60.0
# A create is sent right after its intent is written; with its retries (backoffs, retry-after) it
# may reach Replicate this long after.
CREATE_WINDOW_S = 600.0
# The list walk gives up (the row waits for a later delivery) rather than read without end.
MAX_LIST_PAGES = 50
# A prediction with its logs may be large; Lambda takes a request body of 6 MB.
REPLICATE_MAX_CALLBACK_BYTES = 4 * 1024 * 1024
# Output types by what the URL's path ends with; other URLs are `fileUrl`.
URL_TYPES = {
    "imageUrl": (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff"),
    "videoUrl": (".mp4", ".webm", ".mov", ".mkv", ".avi"),
    "audioUrl": (".mp3", ".wav", ".ogg", ".flac", ".m4a", ".aac"),
    "documentUrl": (".pdf",),
}


class Prediction(BaseModel):
    """A prediction as the API answers it (the fields of the client's `Prediction` rowcall reads;
    `webhook` is the URL it was created with, which the list shows too)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    model: str | None = None
    version: str | None = None
    status: Literal["starting", "processing", "succeeded", "failed", "canceled"]
    input: dict[str, Any] | None = None
    output: Any = None
    error: Any = None
    created_at: str | None = None
    completed_at: str | None = None
    webhook: str | None = None


class PredictionPage(BaseModel):
    """`GET /v1/predictions` (the client's `Page`): newest first, `next` the next page's URL."""

    model_config = ConfigDict(extra="allow")

    next: str | None = None
    previous: str | None = None
    results: list[Prediction]


@dataclass(frozen=True)
class ProblemDetails:
    """An error answer as the client's `ReplicateError.from_response` reads it."""

    status: int
    title: str | None
    detail: str | None

    @classmethod
    def of(cls, response: httpx.Response) -> ProblemDetails:
        try:
            data = response.json()
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        title, detail = data.get("title"), data.get("detail")
        return cls(
            response.status_code,
            title if isinstance(title, str) else None,
            detail if isinstance(detail, str) else (response.text[:200] or None),
        )

    @property
    def code(self) -> str:
        """A row's `error_code`: the title as a slug (`Invalid input` -> `invalid_input`)."""
        if self.status == PAUSING_STATUS:
            return "insufficient_credits"
        slug = re.sub(r"[^a-z0-9]+", "_", (self.title or "").lower()).strip("_")
        return slug[:64] or f"http_{self.status}"

    @property
    def message(self) -> str:
        return " - ".join(p for p in (self.title, self.detail) if p)[:500]


def classify(status: int) -> ErrorClass:
    """What a Replicate error answer means for the row's create."""
    if status == 429 or status >= 500:
        return ErrorClass.RETRY
    if status in BATCH_FATAL:
        return ErrorClass.BATCH_FAILS
    if status == PAUSING_STATUS:
        return ErrorClass.PAUSE_INSUFFICIENT_CREDITS
    return ErrorClass.ROW_FAILS


def _url_type(url: str) -> str:
    path = urlsplit(url).path.lower()
    return next((kind for kind, ends in URL_TYPES.items() if path.endswith(ends)), "fileUrl")


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("https://", "http://"))


def outputs_of(output: Any) -> list[RunOutput]:
    """`output_0`, `output_1`, ... for a URL or a list of URLs; anything else (text, numbers, JSON,
    a list of strings from a language model) is one `text` output with its value as text."""
    if output is None:
        return []
    if _is_url(output):
        return [RunOutput(output_id="output_0", type=_url_type(output), url=output)]
    if isinstance(output, list) and output and all(_is_url(o) for o in output):
        return [RunOutput(output_id=f"output_{n}", type=_url_type(u), url=u) for n, u in enumerate(output)]
    if isinstance(output, list) and all(isinstance(o, str) for o in output):
        text = "".join(output)  # a language model's tokens, as the client's `output` iterator joins them
    else:
        text = output if isinstance(output, str) else json.dumps(output, separators=(",", ":"))
    return [RunOutput.model_validate({"output_id": "output_0", "type": "text", "value": text})]


def run_of(prediction: Prediction) -> RunObject:
    """The prediction as rowcall's run: succeeded -> completed, failed | canceled -> failed (with
    Replicate's `error`), starting | processing still going; no charged cost."""
    status = {"succeeded": "completed"}.get(prediction.status, prediction.status)
    error_code = {"failed": "prediction_failed", "canceled": "prediction_canceled"}.get(prediction.status)
    error = prediction.error
    message = None if error is None else (error if isinstance(error, str) else json.dumps(error))[:1000]
    if prediction.status == "canceled" and message is None:
        message = "the prediction was canceled"
    return RunObject(
        run_id=prediction.id,
        status=status,
        created_at=prediction.created_at,
        completed_at=prediction.completed_at,
        outputs=outputs_of(prediction.output) if prediction.status == "succeeded" else [],
        error_code=error_code,
        error_message=message,
        charged_cost=None,
    )


def prediction_input(request: CreateRunRequest) -> dict[str, Any]:
    """The row's inputs as Replicate takes them: `{id: value}`."""
    return {i.id: i.value for i in request.inputs}


@dataclass(frozen=True)
class Target:
    """Where a technique id sends its predictions."""

    model: str | None
    version: str | None

    @classmethod
    def of(cls, technique_id: str) -> Target | None:
        name, _, version = technique_id.partition(":")
        if VERSION_ID.fullmatch(technique_id):
            return cls(None, technique_id)
        if MODEL_NAME.fullmatch(name) and (not version or VERSION_ID.fullmatch(version)):
            return cls(name, version or None)
        return None

    def create_path(self) -> str:
        if self.version is not None:
            return "/v1/predictions"
        assert self.model is not None
        owner, name = self.model.split("/")
        return f"/v1/models/{quote(owner, safe='')}/{quote(name, safe='')}/predictions"

    def made(self, prediction: Prediction) -> bool:
        if self.version is not None:
            return prediction.version == self.version
        return prediction.model == self.model


@dataclass(frozen=True)
class ReplicateConnection:
    base_url: str
    api_token: ApiKey
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout_s: float = 15.0

    @property
    def info(self) -> ProviderInfo:
        return REPLICATE

    def http(self) -> httpx.AsyncClient:
        return provider_http(self.timeout_s)

    def client(self, http: httpx.AsyncClient) -> ReplicateClient:
        return ReplicateClient(http, base_url=self.base_url, api_token=self.api_token, retry=self.retry)


class ReplicateClient:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        api_token: ApiKey,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._token = api_token
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._clock = clock or time.time

    def _headers(self) -> dict[str, str]:
        token = self._token() if callable(self._token) else self._token
        return {"Authorization": f"Bearer {token}"}

    async def _send(self, method: str, url: str, body: dict[str, Any] | None = None) -> httpx.Response | None:
        """One request; None for a transport error (no answer)."""
        try:
            return await self._http.request(method, url, json=body, headers=self._headers())
        except httpx.TransportError:
            return None

    async def _pause(self, attempt: int, response: httpx.Response | None) -> None:
        if attempt + 1 >= self._retry.attempts:
            return
        backoff = self._retry.backoff(attempt, self._rng)
        delay = None if response is None else retry_after(response)
        await self._sleep(backoff if delay is None else delay + backoff / 4)

    # -- create ------------------------------------------------------------------------------

    async def create_run(self, technique_id: str, request: CreateRunRequest) -> CreateOutcome:
        target = Target.of(technique_id)
        if target is None:
            return RunRefused(
                404,
                "technique_not_found",
                f"{technique_id!r} is neither owner/name nor a version id",
                "technique_not_found",
            )
        body: dict[str, Any] = {
            "input": prediction_input(request),
            "webhook": request.callback_url,
            "webhook_events_filter": ["completed"],
        }
        if target.version is not None:
            body["version"] = target.version
        url = f"{self._base}{target.create_path()}"
        sent_at = self._clock()
        maybe_made = False
        last = "no attempt made"
        for attempt in range(self._retry.attempts):
            if maybe_made:
                # The last create may have made its prediction before its answer was lost: find
                # it rather than make a second one.
                search = CreateSearch(request, (sent_at,))
                found = (await self.find_created(technique_id, [search])).get(request.callback_url)
                if found:
                    return RunCreated(found[0])
            response = await self._send("POST", url, body)
            if response is None:
                maybe_made, last = True, "no answer"
            elif 200 <= response.status_code < 300:
                try:
                    return RunCreated(run_of(Prediction.model_validate(response.json())))
                except (ValueError, ValidationError):
                    return RunRefused(
                        response.status_code, "invalid_provider_response", response.text[:200], None
                    )
            else:
                problem = ProblemDetails.of(response)
                kind = classify(response.status_code)
                if kind is not ErrorClass.RETRY:
                    return RunRefused(
                        response.status_code,
                        problem.code,
                        problem.message,
                        BATCH_FATAL.get(response.status_code),
                    )
                # A 429 is refused before anything is made; a 5xx may come after the prediction was.
                maybe_made = maybe_made or response.status_code >= 500
                last = f"HTTP {response.status_code}"
            await self._pause(attempt, response)
        raise ProviderUnavailable(
            f"Replicate did not accept the prediction after {self._retry.attempts} tries: {last}"
        )

    # -- one prediction ----------------------------------------------------------------------

    async def get_run(self, technique_id: str, run_id: str) -> RunObject | RunNotFound:
        url = f"{self._base}/v1/predictions/{quote(run_id, safe='')}"
        last = "no attempt made"
        for attempt in range(self._retry.attempts):
            response = await self._send("GET", url)
            if response is not None:
                if response.status_code == 200:
                    try:
                        return run_of(Prediction.model_validate(response.json()))
                    except (ValueError, ValidationError) as exc:
                        raise ProviderUnavailable(
                            f"Replicate answered a prediction that is not one: {exc}"
                        ) from None
                if response.status_code == 404:
                    return RunNotFound(ProblemDetails.of(response).message or "no such prediction")
                if classify(response.status_code) is not ErrorClass.RETRY:
                    problem = ProblemDetails.of(response)
                    raise ProviderUnavailable(
                        f"Replicate refused the fetch: HTTP {problem.status} {problem.code}"
                    )
                last = f"HTTP {response.status_code}"
            else:
                last = "no answer"
            await self._pause(attempt, response)
        raise ProviderUnavailable(
            f"Replicate did not return the prediction after {self._retry.attempts} tries: {last}"
        )

    # -- pre-flight --------------------------------------------------------------------------

    async def get_technique(self, technique_id: str) -> TechniqueDefinition | TechniqueRefused:
        """The model (`GET /v1/models/{owner}/{name}`, or its version): 404 technique_not_found,
        401/403 provider_unauthorized. A bare version id has no route of its own: the token is
        checked with one list request instead. No price, and the inputs are not declared (any
        columns go, as for a FLORA technique with `inputs: []`)."""
        target = Target.of(technique_id)
        if target is None:
            return TechniqueRefused(
                "technique_not_found", f"{technique_id!r} is neither owner/name nor a 64-hex version id"
            )
        if target.model is None:
            path = "/v1/predictions"
        elif target.version is None:
            owner, name = target.model.split("/")
            path = f"/v1/models/{quote(owner, safe='')}/{quote(name, safe='')}"
        else:
            owner, name = target.model.split("/")
            path = f"/v1/models/{quote(owner, safe='')}/{quote(name, safe='')}/versions/{target.version}"
        last = "no attempt made"
        for attempt in range(self._retry.attempts):
            response = await self._send("GET", f"{self._base}{path}")
            if response is not None:
                status = response.status_code
                if status == 200:
                    return TechniqueDefinition(
                        technique_id=technique_id, name=target.model, inputs=[], run_cost=None
                    )
                kind = classify(status)
                if kind is ErrorClass.BATCH_FAILS:
                    problem = ProblemDetails.of(response)
                    return TechniqueRefused(
                        BATCH_FATAL[status],
                        f"Replicate answered {status} {problem.code}: {problem.message}"[:500],
                    )
                if kind is not ErrorClass.RETRY:
                    raise ProviderUnavailable(f"Replicate refused the model: HTTP {status}")
                last = f"HTTP {status}"
            else:
                last = "no answer"
            await self._pause(attempt, response)
        raise ProviderUnavailable(
            f"Replicate did not return the model after {self._retry.attempts} tries: {last}"
        )

    # -- at most one prediction per row attempt ----------------------------------------------

    async def find_created(
        self, technique_id: str, searches: Sequence[CreateSearch], known_run_ids: frozenset[str] = frozenset()
    ) -> Mapping[str, list[RunObject]]:
        """Predictions the creates sent at these intents may have made, by callback URL. The list
        is walked newest first, page by page, until a prediction older than the earliest intent
        (less the clock skew). A prediction is a row's when its model or version and its input
        are the row's, it was created within CREATE_WINDOW_S after one of the row's intents, and
        it is no other row's (`known_run_ids`); where the list shows the prediction's `webhook`
        (our callback URL, unique per row attempt), that must be the row's too. Each row takes at
        most one prediction it cannot tell from another's; with the webhook shown, every one made
        for it (more than one: duplicates made before)."""
        target = Target.of(technique_id)
        found: dict[str, list[RunObject]] = {}
        if target is None or not searches:
            return found
        oldest = (
            min(t for s in searches for t in s.intents) - CLOCK_SKEW_S
            if any(s.intents for s in searches)
            else 0
        )
        by_url = {s.request.callback_url: s for s in searches}
        url: str | None = f"{self._base}/v1/predictions"
        for _ in range(MAX_LIST_PAGES):
            if url is None:
                return found
            page = await self._page(url)
            for prediction in page.results:
                created = created_epoch_s(
                    RunObject(run_id=prediction.id, status="-", created_at=prediction.created_at)
                )
                if created is not None and created < oldest:
                    return found
                if prediction.id in known_run_ids or not target.made(prediction):
                    continue
                for search in self._candidates(prediction, created, by_url, found):
                    found.setdefault(search.request.callback_url, []).append(run_of(prediction))
                    break
            url = self._next_url(page.next)
        raise ProviderUnavailable(
            f"the predictions list is longer than {MAX_LIST_PAGES} pages since the intent"
        )

    @staticmethod
    def _candidates(
        prediction: Prediction,
        created: float | None,
        by_url: Mapping[str, CreateSearch],
        found: Mapping[str, list[RunObject]],
    ) -> list[CreateSearch]:
        """The rows this prediction may be the run of, best first."""
        if prediction.webhook is not None:
            search = by_url.get(prediction.webhook)
            matches = search is not None and prediction.input == prediction_input(search.request)
            return [search] if matches and search is not None else []
        return [
            s
            for s in by_url.values()
            if s.request.callback_url not in found
            and prediction.input == prediction_input(s.request)
            and created is not None
            and any(t - CLOCK_SKEW_S <= created <= t + CREATE_WINDOW_S for t in s.intents)
        ]

    def _next_url(self, cursor: str | None) -> str | None:
        """The client requests `next` as it is: an absolute URL (only ever on this API's host)."""
        if not cursor:
            return None
        url = urljoin(f"{self._base}/", cursor)
        if urlsplit(url).netloc != urlsplit(self._base).netloc:
            raise ProviderUnavailable("the predictions list's next page is on another host")
        return url

    async def _page(self, url: str) -> PredictionPage:
        last = "no attempt made"
        for attempt in range(self._retry.attempts):
            response = await self._send("GET", url)
            if response is not None:
                if response.status_code == 200:
                    try:
                        return PredictionPage.model_validate(response.json())
                    except (ValueError, ValidationError) as exc:
                        raise ProviderUnavailable(
                            f"Replicate answered a list that is not one: {exc}"
                        ) from None
                if classify(response.status_code) is not ErrorClass.RETRY:
                    raise ProviderUnavailable(f"Replicate refused the list: HTTP {response.status_code}")
                last = f"HTTP {response.status_code}"
            else:
                last = "no answer"
            await self._pause(attempt, response)
        raise ProviderUnavailable(
            f"Replicate did not list the predictions after {self._retry.attempts} tries: {last}"
        )


class ReplicateDeliveries:
    """Replicate's webhooks: Standard Webhooks (`webhook-id`, `webhook-timestamp`,
    `webhook-signature: v1,<base64>`) under the account's `whsec_` secret, its base64 part the
    HMAC key (as `replicate.webhooks.validate` takes it), 300 s tolerance; several secrets
    (separated by spaces in the parameter) are accepted while one rotates. The body is the
    finished prediction, outputs included."""

    max_body_bytes = REPLICATE_MAX_CALLBACK_BYTES

    def __init__(
        self, secrets: Callable[[], Sequence[str]], clock: Callable[[], float] | None = None
    ) -> None:
        self._secrets = secrets
        self._clock = clock

    def verify(self, headers: Mapping[str, str], raw_body: bytes) -> bool:
        lowered = {k.lower(): v for k, v in headers.items()}
        now = None if self._clock is None else self._clock()
        for secret in self._secrets():
            try:
                if secret and WebhookSigner(secret).verify(lowered, raw_body, now=now):
                    return True
            except ValueError:  # not base64 after `whsec_`: not a secret of ours
                continue
        return False

    def parse(self, raw_body: bytes) -> Delivery:
        prediction = Prediction.model_validate_json(raw_body)
        run = run_of(prediction)
        terminal = run.terminal_status
        if terminal is None:
            raise ValueError(f"a completed-event webhook for a prediction still {prediction.status}")
        return Delivery(
            run_id=run.run_id,
            completed=run.status == "completed",
            error_code=run.error_code,
            error_message=run.error_message,
            run=run,
        )
