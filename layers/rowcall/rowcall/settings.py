"""Typed settings for each function, read from the environment the template gives it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rowcall.metadata import SpecDefaults
from rowcall.models import MAX_USD


def _none_when_empty(value: Any) -> Any:
    """A template number parameter left empty ("") means none."""
    return None if isinstance(value, str) and not value.strip() else value


def _on_off(value: Any) -> Any:
    if isinstance(value, str) and value.strip().lower() in ("on", "off"):
        return value.strip().lower() == "on"
    return value


class _EnvSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    table_name: str = Field(alias="TABLE_NAME")
    max_in_flight: int = Field(alias="MAX_IN_FLIGHT", default=0, ge=0)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        return cls.model_validate(dict(os.environ if env is None else env))


def _str_none_when_empty(value: Any) -> Any:
    """An SSM parameter name left empty in the template means the thing is not configured."""
    return None if isinstance(value, str) and not value.strip() else value


class _ReplicateAccess(_EnvSettings):
    """Replicate's API (contract §5b): its root and the SSM parameter holding its token, None when
    the stack has no Replicate token configured (its batches then fail provider_unauthorized)."""

    replicate_base_url: str = Field(alias="REPLICATE_BASE_URL", default="https://api.replicate.com")
    replicate_api_token_param: str | None = Field(alias="REPLICATE_API_TOKEN_PARAMETER", default=None)

    _empty_token = field_validator("replicate_api_token_param", mode="before")(_str_none_when_empty)


class _BatchDefaults(_EnvSettings):
    """The template's defaults for §3 keys an upload leaves out: ingest applies them, and
    POST /uploads checks a request with them as ingest will."""

    max_batch_cost_usd: float | None = Field(alias="MAX_BATCH_COST_USD", default=None, ge=0, le=MAX_USD)
    reuse_completed_rows: bool = Field(alias="REUSE_COMPLETED_ROWS", default=True)
    save_outputs: bool = Field(alias="SAVE_OUTPUTS", default=True)
    default_provider: Literal["flora", "replicate"] = Field(alias="DEFAULT_PROVIDER", default="flora")

    _empty_cost = field_validator("max_batch_cost_usd", mode="before")(_none_when_empty)
    _switches = field_validator("reuse_completed_rows", "save_outputs", mode="before")(_on_off)

    def spec_defaults(self) -> SpecDefaults:
        return SpecDefaults(
            max_cost_usd=self.max_batch_cost_usd,
            reuse=self.reuse_completed_rows,
            save_outputs=self.save_outputs,
            provider=self.default_provider,
        )


class IngestSettings(_BatchDefaults, _ReplicateAccess):
    chunk_queue_url: str = Field(alias="CHUNK_QUEUE_URL")
    done_queue_url: str = Field(alias="DONE_QUEUE_URL")
    default_technique_id: str = Field(alias="DEFAULT_TECHNIQUE_ID")
    max_rows: int = Field(alias="MAX_ROWS", gt=0)
    max_bytes: int = Field(alias="MAX_BYTES", gt=0)
    chunk_rows: int = Field(alias="CHUNK_ROWS", gt=0, le=10_000)
    # Lets an on-done URL be plain http to loopback: set only by the local stack (the template's
    # AllowLoopbackWebhooks), the one thing that tells code which of the two it runs on.
    allow_loopback_webhooks: bool = Field(alias="ALLOW_LOOPBACK_WEBHOOKS", default=False)
    # The pre-flight's GET /techniques/{id} (contract §4).
    provider_url: str = Field(alias="PROVIDER_URL")
    provider_api_key_param: str = Field(alias="PROVIDER_API_KEY_PARAM")


class WorkerSettings(_ReplicateAccess):
    reconcile_after_s: float = Field(alias="RECONCILE_AFTER_SECONDS", default=900, gt=0)
    done_queue_url: str = Field(alias="DONE_QUEUE_URL")
    chunk_queue_url: str = Field(alias="CHUNK_QUEUE_URL")
    provider_url: str = Field(alias="PROVIDER_URL")
    provider_api_key_param: str = Field(alias="PROVIDER_API_KEY_PARAM")
    callback_secret_param: str = Field(alias="CALLBACK_SECRET_PARAM")
    callback_base_url: str = Field(alias="CALLBACK_BASE_URL")
    run_concurrency: int = Field(alias="RUN_CONCURRENCY", default=16, gt=0, le=256)
    # Stack-wide: the sum of run_cost over runs started in one UTC day (template DailyBudgetUsd).
    daily_budget_usd: float | None = Field(alias="DAILY_BUDGET_USD", default=None, ge=0)

    _empty_budget = field_validator("daily_budget_usd", mode="before")(_none_when_empty)


class WebhookSettings(_EnvSettings):
    finished_run_queue_url: str = Field(alias="FINISHED_RUN_QUEUE_URL")
    callback_secret_param: str = Field(alias="CALLBACK_SECRET_PARAM")
    provider_webhook_secret_param: str = Field(alias="PROVIDER_WEBHOOK_SECRET_PARAM")
    # Replicate's webhook secret (contract §5b); None: Replicate is not configured.
    replicate_webhook_secret_param: str | None = Field(
        alias="REPLICATE_WEBHOOK_SECRET_PARAMETER", default=None
    )

    _empty_replicate_secret = field_validator("replicate_webhook_secret_param", mode="before")(
        _str_none_when_empty
    )


class ApiSettings(_EnvSettings):
    """The management API's actions (the webhook function serves them)."""

    chunk_queue_url: str = Field(alias="CHUNK_QUEUE_URL")
    # A cancel with no run in flight finishes its batch at once and queues its on-done.
    done_queue_url: str = Field(alias="DONE_QUEUE_URL")


class UploadSettings(_BatchDefaults):
    """POST /uploads (the webhook function serves it): where uploads go and what ingest will accept."""

    bucket_name: str = Field(alias="DATA_BUCKET")
    max_bytes: int = Field(alias="MAX_BYTES", gt=0)
    default_technique_id: str = Field(alias="DEFAULT_TECHNIQUE_ID")
    allow_loopback_webhooks: bool = Field(alias="ALLOW_LOOPBACK_WEBHOOKS", default=False)


class RecorderSettings(_ReplicateAccess):
    done_queue_url: str = Field(alias="DONE_QUEUE_URL")
    # Slots given back wake the chunks waiting for them (under MaxInFlight).
    chunk_queue_url: str | None = Field(alias="CHUNK_QUEUE_URL", default=None)
    provider_url: str = Field(alias="PROVIDER_URL")
    provider_api_key_param: str = Field(alias="PROVIDER_API_KEY_PARAM")
    # A completed row's content key is kept this long for `reuse` (template ReuseDays).
    reuse_days: int = Field(alias="REUSE_DAYS", default=30, gt=0)
    # Largest output copied into the bucket (template MaxOutputBytes).
    max_output_bytes: int = Field(alias="MAX_OUTPUT_BYTES", default=5 * 1024**3, gt=0)
    # Where completed rows of batches with `save-outputs` on go to have their outputs saved.
    save_queue_url: str | None = Field(alias="SAVE_QUEUE_URL", default=None)


class SaverSettings(_EnvSettings):
    done_queue_url: str = Field(alias="DONE_QUEUE_URL")
    bucket_name: str = Field(alias="DATA_BUCKET")
    max_output_bytes: int = Field(alias="MAX_OUTPUT_BYTES", gt=0)
    # Output URLs are the provider's, but checked as any URL from outside: https to public
    # addresses; the local stack's emulator is plain http on loopback.
    allow_loopback_outputs: bool = Field(alias="ALLOW_LOOPBACK_WEBHOOKS", default=False)


class NotifierSettings(_EnvSettings):
    done_queue_url: str = Field(alias="DONE_QUEUE_URL")
    topic_arn: str = Field(alias="TOPIC_ARN")
    webhook_secret_param: str = Field(alias="WEBHOOK_SECRET_PARAM")
    allow_loopback_webhooks: bool = Field(alias="ALLOW_LOOPBACK_WEBHOOKS", default=False)


class SafetyNetSettings(_ReplicateAccess):
    chunk_queue_url: str = Field(alias="CHUNK_QUEUE_URL")
    done_queue_url: str = Field(alias="DONE_QUEUE_URL")
    provider_url: str = Field(alias="PROVIDER_URL")
    provider_api_key_param: str = Field(alias="PROVIDER_API_KEY_PARAM")
    reconcile_after_s: float = Field(alias="RECONCILE_AFTER_SECONDS", gt=0)
    callback_deadline_s: float = Field(alias="CALLBACK_DEADLINE_SECONDS", gt=0)
    save_queue_url: str | None = Field(alias="SAVE_QUEUE_URL", default=None)
    ingest_max_event_age_s: float = Field(alias="INGEST_MAX_EVENT_AGE_SECONDS", default=21600, gt=0)
    ingest_timeout_s: float = Field(alias="INGEST_TIMEOUT_SECONDS", default=900, gt=0)
    # A batch paused `daily_budget` goes on by itself the next UTC day (template DailyBudgetUsd).
    daily_budget_usd: float | None = Field(alias="DAILY_BUDGET_USD", default=None, ge=0)

    _empty_budget = field_validator("daily_budget_usd", mode="before")(_none_when_empty)
