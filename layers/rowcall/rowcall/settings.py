"""Typed settings for each function, read from the environment the template gives it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Self

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _EnvSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    table_name: str = Field(alias="TABLE_NAME")
    max_in_flight: int = Field(alias="MAX_IN_FLIGHT", default=0, ge=0)
    # Stack-wide ceiling on the cost of the runs started per UTC day (template DailyBudgetUsd;
    # empty: none). The worker reserves against it; the safety net resumes the next day.
    daily_budget_usd: float | None = Field(alias="DAILY_BUDGET_USD", default=None, gt=0)

    @field_validator("daily_budget_usd", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        return cls.model_validate(dict(os.environ if env is None else env))


class IngestSettings(_EnvSettings):
    chunk_queue_url: str = Field(alias="CHUNK_QUEUE_URL")
    done_queue_url: str = Field(alias="DONE_QUEUE_URL")
    default_technique_id: str = Field(alias="DEFAULT_TECHNIQUE_ID")
    max_rows: int = Field(alias="MAX_ROWS", gt=0)
    max_bytes: int = Field(alias="MAX_BYTES", gt=0)
    chunk_rows: int = Field(alias="CHUNK_ROWS", gt=0, le=10_000)
    # Lets an on-done URL be plain http to loopback: set only by the local stack (the template's
    # AllowLoopbackWebhooks), the one thing that tells code which of the two it runs on.
    allow_loopback_webhooks: bool = Field(alias="ALLOW_LOOPBACK_WEBHOOKS", default=False)


class WorkerSettings(_EnvSettings):
    reconcile_after_s: float = Field(alias="RECONCILE_AFTER_SECONDS", default=900, gt=0)
    done_queue_url: str = Field(alias="DONE_QUEUE_URL")
    chunk_queue_url: str = Field(alias="CHUNK_QUEUE_URL")
    provider_url: str = Field(alias="PROVIDER_URL")
    provider_api_key_param: str = Field(alias="PROVIDER_API_KEY_PARAM")
    callback_secret_param: str = Field(alias="CALLBACK_SECRET_PARAM")
    callback_base_url: str = Field(alias="CALLBACK_BASE_URL")
    run_concurrency: int = Field(alias="RUN_CONCURRENCY", default=16, gt=0, le=256)


class WebhookSettings(_EnvSettings):
    finished_run_queue_url: str = Field(alias="FINISHED_RUN_QUEUE_URL")
    callback_secret_param: str = Field(alias="CALLBACK_SECRET_PARAM")
    provider_webhook_secret_param: str = Field(alias="PROVIDER_WEBHOOK_SECRET_PARAM")


class ApiSettings(_EnvSettings):
    """The management API's actions (the webhook function serves them)."""

    chunk_queue_url: str = Field(alias="CHUNK_QUEUE_URL")
    # A cancel with no run in flight finishes its batch at once and queues its on-done.
    done_queue_url: str = Field(alias="DONE_QUEUE_URL")


class UploadSettings(_EnvSettings):
    """POST /uploads (the webhook function serves it): where uploads go and what ingest will accept."""

    bucket_name: str = Field(alias="DATA_BUCKET")
    max_bytes: int = Field(alias="MAX_BYTES", gt=0)
    default_technique_id: str = Field(alias="DEFAULT_TECHNIQUE_ID")
    allow_loopback_webhooks: bool = Field(alias="ALLOW_LOOPBACK_WEBHOOKS", default=False)


class RecorderSettings(_EnvSettings):
    done_queue_url: str = Field(alias="DONE_QUEUE_URL")
    # Slots given back wake the chunks waiting for them (under MaxInFlight).
    chunk_queue_url: str | None = Field(alias="CHUNK_QUEUE_URL", default=None)
    provider_url: str = Field(alias="PROVIDER_URL")
    provider_api_key_param: str = Field(alias="PROVIDER_API_KEY_PARAM")


class NotifierSettings(_EnvSettings):
    done_queue_url: str = Field(alias="DONE_QUEUE_URL")
    topic_arn: str = Field(alias="TOPIC_ARN")
    webhook_secret_param: str = Field(alias="WEBHOOK_SECRET_PARAM")
    allow_loopback_webhooks: bool = Field(alias="ALLOW_LOOPBACK_WEBHOOKS", default=False)


class SafetyNetSettings(_EnvSettings):
    chunk_queue_url: str = Field(alias="CHUNK_QUEUE_URL")
    done_queue_url: str = Field(alias="DONE_QUEUE_URL")
    provider_url: str = Field(alias="PROVIDER_URL")
    provider_api_key_param: str = Field(alias="PROVIDER_API_KEY_PARAM")
    reconcile_after_s: float = Field(alias="RECONCILE_AFTER_SECONDS", gt=0)
    callback_deadline_s: float = Field(alias="CALLBACK_DEADLINE_SECONDS", gt=0)
