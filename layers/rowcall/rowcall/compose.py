"""Builds each function's domain object from its settings, once per execution environment."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING

import boto3
from aws_lambda_powertools.utilities import parameters

from rowcall.admission import Admission
from rowcall.api import BatchQueries, RowQueries
from rowcall.batch_actions import BatchActions
from rowcall.callbacks import CallbackIntake
from rowcall.finishing import BatchFinisher
from rowcall.identity import CallbackSigner, secret_list
from rowcall.ingest import IngestLimits, Ingestor
from rowcall.input_checks import TechniqueCache
from rowcall.ledger import Ledger
from rowcall.ondone import OnDoneDelivery
from rowcall.outbound import DestinationPolicy, webhook_client
from rowcall.outcomes import OutcomeRecorder
from rowcall.provider import ProviderConnection
from rowcall.providers.replicate import ReplicateConnection
from rowcall.queues import ChunkQueue, DoneQueue, FinishedRunQueue, RedeliverySchedule
from rowcall.reuse import RowReuse
from rowcall.row_listing import RowListing
from rowcall.runs import RunStarter
from rowcall.safety_net import SafetyNet, SafetyNetTimes, ingest_stall_after
from rowcall.saved_outputs import OutputSaver, SaveQueue
from rowcall.settings import (
    ApiSettings,
    IngestSettings,
    NotifierSettings,
    RecorderSettings,
    SafetyNetSettings,
    SaverSettings,
    UploadSettings,
    WebhookSettings,
    WorkerSettings,
)
from rowcall.signing import WebhookSigner
from rowcall.uploads import Uploads, presigning_s3_client

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sns import SNSClient
    from mypy_boto3_sqs import SQSClient

SECRET_MAX_AGE_S = 300


def secret(name: str) -> str:
    """An SSM SecureString, cached for a few minutes so a rotation is picked up."""
    return parameters.get_parameter(name, decrypt=True, max_age=SECRET_MAX_AGE_S)


def secret_source(name: str) -> Callable[[], str]:
    """Read on every use, never held: the domain objects live as long as the container, and a
    value taken once would outlive a rotation; through the cache a rotation is seen within
    SECRET_MAX_AGE_S by every warm container."""
    return lambda: secret(name)


@cache
def _s3() -> S3Client:
    return boto3.client("s3")


@cache
def _sqs() -> SQSClient:
    return boto3.client("sqs")


@cache
def _dynamodb() -> DynamoDBClient:
    return boto3.client("dynamodb")


@cache
def _sns() -> SNSClient:
    return boto3.client("sns")


def _replicate(
    settings: IngestSettings | WorkerSettings | RecorderSettings | SafetyNetSettings,
) -> ReplicateConnection | None:
    """Replicate's API where this stack has its token (contract §5b), else None: its batches fail
    provider_unauthorized at ingest."""
    if settings.replicate_api_token_param is None:
        return None
    return ReplicateConnection(
        base_url=settings.replicate_base_url, api_token=secret_source(settings.replicate_api_token_param)
    )


def _ledger(table: str) -> Ledger:
    return Ledger(_dynamodb(), table)


# Row writes of one received batch in flight at once: SQS hands the recorder at most ten records,
# and boto3's client keeps ten connections.
ROW_WRITERS = 10


def _finisher(
    ledger: Ledger, done_queue_url: str, max_in_flight: int, chunk_queue_url: str | None = None
) -> BatchFinisher:
    """With the chunk queue, slots given back wake the chunks waiting for them."""
    admission = None
    if chunk_queue_url and max_in_flight > 0:
        admission = Admission(ledger, ChunkQueue(_sqs(), chunk_queue_url), max_in_flight)
    return BatchFinisher(
        ledger,
        DoneQueue(_sqs(), done_queue_url),
        capped=max_in_flight > 0,
        row_writers=ROW_WRITERS,
        admission=admission,
    )


@cache
def ingestor() -> Ingestor:
    settings = IngestSettings.from_env()
    ledger = _ledger(settings.table_name)
    return Ingestor(
        s3=_s3(),
        ledger=ledger,
        chunk_queue=ChunkQueue(_sqs(), settings.chunk_queue_url),
        finisher=_finisher(ledger, settings.done_queue_url, settings.max_in_flight),
        limits=IngestLimits(
            max_rows=settings.max_rows,
            max_bytes=settings.max_bytes,
            chunk_rows=settings.chunk_rows,
            default_technique_id=settings.default_technique_id,
            defaults=settings.spec_defaults(),
        ),
        destinations=DestinationPolicy(allow_loopback=settings.allow_loopback_webhooks),
        provider=ProviderConnection(
            base_url=settings.provider_url, api_key=secret_source(settings.provider_api_key_param)
        ),
        techniques=TechniqueCache(),
        replicate=_replicate(settings),
    )


@cache
def run_starter() -> RunStarter:
    settings = WorkerSettings.from_env()
    ledger = _ledger(settings.table_name)
    return RunStarter(
        s3=_s3(),
        ledger=ledger,
        finisher=_finisher(ledger, settings.done_queue_url, settings.max_in_flight, settings.chunk_queue_url),
        provider=ProviderConnection(
            base_url=settings.provider_url, api_key=secret_source(settings.provider_api_key_param)
        ),
        signer=CallbackSigner(_secrets(settings.callback_secret_param)),
        callback_base_url=settings.callback_base_url,
        concurrency=settings.run_concurrency,
        chunk_queue=ChunkQueue(_sqs(), settings.chunk_queue_url),
        max_in_flight=settings.max_in_flight,
        intent_valid_s=settings.reconcile_after_s,
        daily_budget_usd=settings.daily_budget_usd,
        reuse=RowReuse(ledger.reuse, clock=time.time),
        replicate=_replicate(settings),
    )


def _secrets(name: str) -> Callable[[], list[str]]:
    """Like secret_source, for a parameter holding several secrets while one rotates."""
    return lambda: secret_list(secret(name))


@cache
def callback_intake() -> CallbackIntake:
    settings = WebhookSettings.from_env()
    batches = _ledger(settings.table_name).batches

    def batch_provider(batch_id: str) -> str | None:
        batch = batches.get(batch_id)
        return None if batch is None else batch.spec.provider

    replicate_secret = settings.replicate_webhook_secret_param
    return CallbackIntake(
        batch_exists=lambda batch_id: batches.get(batch_id) is not None,
        batch_provider=batch_provider,
        finished_runs=FinishedRunQueue(_sqs(), settings.finished_run_queue_url),
        callback_secrets=_secrets(settings.callback_secret_param),
        provider_signing_secrets=_secrets(settings.provider_webhook_secret_param),
        replicate_signing_secrets=_secrets(replicate_secret) if replicate_secret else None,
    )


@cache
def batch_actions() -> BatchActions:
    settings = ApiSettings.from_env()
    ledger = _ledger(settings.table_name)
    return BatchActions(
        ledger, ChunkQueue(_sqs(), settings.chunk_queue_url), _finisher(ledger, settings.done_queue_url, 0)
    )


@cache
def uploads() -> Uploads:
    settings = UploadSettings.from_env()
    return Uploads(
        s3=presigning_s3_client(),
        bucket=settings.bucket_name,
        max_bytes=settings.max_bytes,
        default_technique_id=settings.default_technique_id,
        destinations=DestinationPolicy(allow_loopback=settings.allow_loopback_webhooks),
        defaults=settings.spec_defaults(),
        intents=_ledger(settings.table_name).upload_intents,
    )


@cache
def outcome_recorder() -> OutcomeRecorder:
    settings = RecorderSettings.from_env()
    ledger = _ledger(settings.table_name)
    return OutcomeRecorder(
        ledger=ledger,
        finisher=_finisher(ledger, settings.done_queue_url, settings.max_in_flight, settings.chunk_queue_url),
        provider=ProviderConnection(
            base_url=settings.provider_url, api_key=secret_source(settings.provider_api_key_param)
        ),
        reuse=RowReuse(ledger.reuse, clock=time.time, keep_days=settings.reuse_days),
        save_queue=SaveQueue(_sqs(), settings.save_queue_url) if settings.save_queue_url else None,
        replicate=_replicate(settings),
    )


# A saved output's download waits this long for a byte before it is tried again.
OUTPUT_READ_TIMEOUT_S = 60.0


@cache
def output_saver() -> OutputSaver:
    settings = SaverSettings.from_env()
    ledger = _ledger(settings.table_name)
    return OutputSaver(
        s3=_s3(),
        bucket=settings.bucket_name,
        ledger=ledger,
        finisher=_finisher(ledger, settings.done_queue_url, settings.max_in_flight),
        http=webhook_client(
            DestinationPolicy(allow_loopback=settings.allow_loopback_outputs), timeout_s=OUTPUT_READ_TIMEOUT_S
        ),
        max_output_bytes=settings.max_output_bytes,
    )


@cache
def batch_queries() -> BatchQueries:
    return BatchQueries(_ledger(WebhookSettings.from_env().table_name))


@cache
def row_queries() -> RowQueries:
    ledger = _ledger(WebhookSettings.from_env().table_name)
    return RowQueries(ledger, RowListing(ledger, _s3()))


@cache
def on_done_delivery() -> OnDoneDelivery:
    settings = NotifierSettings.from_env()
    ledger = _ledger(settings.table_name)
    return OnDoneDelivery(
        s3=_s3(),
        sns=_sns(),
        ledger=ledger,
        done_queue=DoneQueue(_sqs(), settings.done_queue_url),
        http=webhook_client(DestinationPolicy(allow_loopback=settings.allow_loopback_webhooks)),
        signer=WebhookSigner(secret_source(settings.webhook_secret_param)),
        topic_arn=settings.topic_arn,
    )


@cache
def safety_net() -> SafetyNet:
    settings = SafetyNetSettings.from_env()
    ledger = _ledger(settings.table_name)
    return SafetyNet(
        ledger=ledger,
        finisher=_finisher(ledger, settings.done_queue_url, settings.max_in_flight, settings.chunk_queue_url),
        chunk_queue=ChunkQueue(_sqs(), settings.chunk_queue_url),
        done_queue=DoneQueue(_sqs(), settings.done_queue_url),
        provider=ProviderConnection(
            base_url=settings.provider_url, api_key=secret_source(settings.provider_api_key_param)
        ),
        times=SafetyNetTimes(
            reconcile_after_s=settings.reconcile_after_s,
            callback_deadline_s=settings.callback_deadline_s,
            ingest_stall_s=ingest_stall_after(settings.ingest_max_event_age_s, settings.ingest_timeout_s),
        ),
        save_queue=SaveQueue(_sqs(), settings.save_queue_url) if settings.save_queue_url else None,
        admission=(
            Admission(ledger, ChunkQueue(_sqs(), settings.chunk_queue_url), settings.max_in_flight)
            if settings.max_in_flight
            else None
        ),
        daily_budget_usd=settings.daily_budget_usd,
        replicate=_replicate(settings),
    )


@cache
def redelivery_schedule() -> RedeliverySchedule:
    return RedeliverySchedule(_sqs())
