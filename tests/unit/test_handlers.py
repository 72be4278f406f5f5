"""The real handlers, driven by the sample events in events/, against in-process moto."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from rowcall.compose import secret
from rowcall.flora_signature import signature_header
from rowcall_local.provider_emulator import ProviderEmulator

from .conftest import Aws

ROOT = Path(__file__).resolve().parents[2]
PROVIDER_SECRET_PARAM = "/rowcall/provider-webhook-secret"
PROVIDER_SECRET = "whsec_provider-signing-secret"


@dataclass
class Context:
    function_name: str = "test"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:test"
    aws_request_id: str = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 30_000


def load_handler(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"handler_{name}", ROOT / "functions" / name / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def event(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((ROOT / "events" / name).read_text())
    return loaded


@pytest.fixture
def environment(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """What the template gives the functions, pointed at in-process moto."""
    ssm = boto3.client("ssm", region_name="us-east-1")
    ssm.put_parameter(Name="/rowcall/callback-secret", Value="s3cret", Type="SecureString")
    ssm.put_parameter(Name="/rowcall/provider-api-key", Value="key", Type="SecureString")
    ssm.put_parameter(Name=PROVIDER_SECRET_PARAM, Value=PROVIDER_SECRET, Type="SecureString")
    for key, value in {
        "TABLE_NAME": aws.table,
        "DONE_QUEUE_URL": aws.done_queue_url,
        "CHUNK_QUEUE_URL": aws.chunk_queue_url,
        "CALLBACK_SECRET_PARAM": "/rowcall/callback-secret",
        "PROVIDER_WEBHOOK_SECRET_PARAM": PROVIDER_SECRET_PARAM,
        "FINISHED_RUN_QUEUE_URL": aws.finished_run_queue_url,
        "PROVIDER_API_KEY_PARAM": "/rowcall/provider-api-key",
        "PROVIDER_URL": "http://127.0.0.1:9",
        "CALLBACK_BASE_URL": "http://127.0.0.1:9",
        "DEFAULT_TECHNIQUE_ID": "tech",
        "MAX_ROWS": "1000",
        "MAX_BYTES": "1000000",
        "DATA_BUCKET": aws.bucket,
        "CHUNK_ROWS": "10",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "rowcall",
        "POWERTOOLS_SERVICE_NAME": "rowcall",
    }.items():
        monkeypatch.setenv(key, value)
    from rowcall import compose

    factories = (
        compose.callback_intake,
        compose.batch_queries,
        compose.ingestor,
        compose.run_starter,
        compose.outcome_recorder,
        compose.batch_actions,
        compose.safety_net,
        compose.uploads,
    )
    for factory in factories:
        factory.cache_clear()
    yield
    for factory in factories:
        factory.cache_clear()


@pytest.fixture
def webhook(environment: None) -> Iterator[ModuleType]:
    yield load_handler("webhook")
    sys.modules.pop("handler_webhook", None)


def test_unknown_batch_is_404_in_the_contract_error_shape(webhook: ModuleType) -> None:
    response = webhook.lambda_handler(event("webhook-get-batch.json"), Context())
    assert response["statusCode"] == 404
    assert json.loads(response["body"])["error"]["code"] == "batch_not_found"


def test_a_callback_with_a_forged_token_is_401_and_writes_nothing(webhook: ModuleType, aws: Aws) -> None:
    response = webhook.lambda_handler(event("webhook-callback.json"), Context())
    assert response["statusCode"] == 401
    assert json.loads(response["body"])["error"]["code"] == "invalid_token"
    assert aws.dynamodb.scan(TableName=aws.table)["Count"] == 0


def signed_callback(body: str, *, secret_: str = PROVIDER_SECRET, age_s: int = 0) -> dict[str, Any]:
    """The sample callback with a valid row token and a Flora-Signature over `body`."""
    from rowcall.identity import CallbackSigner

    callback = event("webhook-callback.json")
    token = CallbackSigner(secret("/rowcall/callback-secret")).token("b_k3v7yqzq5d2ttvqmq3xw3gq2", "0-1", 1)
    callback["queryStringParameters"]["token"] = token
    callback["rawQueryString"] = f"token={token}"
    callback["body"] = body
    signed_at = int(time.time()) - age_s
    callback["headers"]["flora-signature"] = signature_header([secret_], signed_at, body.encode())
    return callback


def test_a_signed_callback_with_a_bad_body_is_400_with_fields(webhook: ModuleType) -> None:
    response = webhook.lambda_handler(signed_callback('{"type": "run.completed"}'), Context())
    assert response["statusCode"] == 400
    assert "data" in json.loads(response["body"])["error"]["fields"]


@pytest.mark.parametrize(("secret_", "age_s"), [("whsec_forged", 0), (PROVIDER_SECRET, 301)])
def test_a_forged_or_stale_signature_is_401_and_queues_nothing(
    webhook: ModuleType, aws: Aws, secret_: str, age_s: int
) -> None:
    body = event("webhook-callback.json")["body"]
    response = webhook.lambda_handler(signed_callback(body, secret_=secret_, age_s=age_s), Context())
    assert response["statusCode"] == 401
    assert json.loads(response["body"])["error"]["code"] == "invalid_signature"
    assert (
        aws.drain(aws.finished_run_queue_url) == [] and aws.dynamodb.scan(TableName=aws.table)["Count"] == 0
    )


def test_an_oversized_callback_is_413_before_it_is_parsed(webhook: ModuleType) -> None:
    response = webhook.lambda_handler(signed_callback("x" * (65 * 1024)), Context())
    assert response["statusCode"] == 413


def open_sample_batch(aws: Aws) -> None:
    from rowcall.models import BatchSpec, BatchState, BatchStatus, SourceObject

    aws.ledger.batches.open(
        BatchState(
            batch_id="b_k3v7yqzq5d2ttvqmq3xw3gq2",
            name="sample",
            source=SourceObject(bucket=aws.bucket, key="uploads/sample.csv"),
            spec=BatchSpec(technique_id="tech", name="sample"),
            status=BatchStatus.RUNNING,
            created_at="2026-11-24T22:00:00.000Z",
            updated_at="2026-11-24T22:00:00.000Z",
        )
    )


def test_a_signed_webhook_for_an_unknown_batch_is_404_and_queues_nothing(
    webhook: ModuleType, aws: Aws
) -> None:
    response = webhook.lambda_handler(signed_callback(event("webhook-callback.json")["body"]), Context())
    assert response["statusCode"] == 404
    assert json.loads(response["body"])["error"]["code"] == "batch_not_found"
    assert aws.drain(aws.finished_run_queue_url) == []


def test_a_run_webhook_queues_one_message_per_run_and_writes_nothing(webhook: ModuleType, aws: Aws) -> None:
    open_sample_batch(aws)
    items_before = aws.dynamodb.scan(TableName=aws.table)["Count"]
    body = event("webhook-callback.json")["body"]
    for _ in range(2):  # a retried delivery
        response = webhook.lambda_handler(signed_callback(body), Context())
        assert response["statusCode"] == 200
        assert json.loads(response["body"]) == {"accepted": True}
    (queued,) = aws.drain(aws.finished_run_queue_url)
    assert json.loads(queued) == {
        "batch_id": "b_k3v7yqzq5d2ttvqmq3xw3gq2",
        "chunk": 0,
        "record": 1,
        "attempt": 1,
        "run_id": "run_5f0c2d9e8b7a6c5d4e3f",
        "status": "completed",
        "error_code": None,
        "error_message": None,
        "content_key": None,  # the sample token carries none (`rowcall.reuse`)
    }
    assert aws.dynamodb.scan(TableName=aws.table)["Count"] == items_before


def test_the_recorder_reports_a_message_that_failed_and_keeps_the_rest(environment: None, aws: Aws) -> None:
    sqs_event = event("recorder-sqs-finished-run.json")
    good = sqs_event["Records"][0]
    sqs_event["Records"].append(good | {"messageId": "bad-1", "body": '{"batch_id": 42}'})
    result = load_handler("recorder").lambda_handler(sqs_event, Context())
    # The good record names a batch this table does not have: dropped, not retried.
    assert result == {"batchItemFailures": [{"itemIdentifier": "bad-1"}]}


def test_list_limit_out_of_range_is_400(webhook: ModuleType) -> None:
    listing = event("webhook-get-batch.json") | {
        "rawPath": "/batches",
        "routeKey": "GET /batches",
        "rawQueryString": "limit=1000",
        "queryStringParameters": {"limit": "1000"},
        "pathParameters": {},
    }
    listing["requestContext"] = listing["requestContext"] | {
        "http": listing["requestContext"]["http"] | {"path": "/batches"}
    }
    response = webhook.lambda_handler(listing, Context())
    assert response["statusCode"] == 400
    error = json.loads(response["body"])["error"]
    assert error["code"] == "invalid_parameter"
    assert error["fields"] == {"limit": "Input should be less than or equal to 100"}


def _post_upload(webhook: ModuleType, body: str) -> tuple[int, dict[str, Any]]:
    request = event("webhook-get-batch.json") | {
        "rawPath": "/uploads",
        "routeKey": "POST /uploads",
        "rawQueryString": "",
        "queryStringParameters": {},
        "pathParameters": {},
        "body": body,
        "isBase64Encoded": False,
    }
    request["requestContext"] = request["requestContext"] | {
        "http": request["requestContext"]["http"] | {"path": "/uploads", "method": "POST"}
    }
    response = webhook.lambda_handler(request, Context())
    return response["statusCode"], json.loads(response["body"])


def test_post_uploads_grants_a_put_in_the_stacks_bucket(webhook: ModuleType, aws: Aws) -> None:
    status, body = _post_upload(
        webhook, json.dumps({"filename": "a.csv", "size_bytes": 10, "key_column": "id"})
    )
    assert status == 200
    assert body["key"].startswith("uploads/") and body["key"].endswith("/a.csv")
    assert aws.bucket in body["upload_url"] and body["key"] in body["upload_url"]
    # Only what a browser sends is signed; the metadata is kept on rowcall's side for ingest.
    assert body["headers"] == {"Content-Type": "text/csv", "Content-Length": "10"}
    assert "x-amz-meta" not in body["upload_url"]
    granted = aws.ledger.upload_intents.recall(body["key"], now_epoch=time.time())
    assert granted == {"key-column": "id", "batch-name": "a.csv"}


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ("not json", 400, "invalid_body"),
        ("", 400, "invalid_body"),
        (json.dumps({"filename": "a.csv", "size_bytes": 1_000_001}), 413, "file_too_large"),
        (
            json.dumps({"filename": "a.csv", "size_bytes": 1, "input_types": {"a": "b"}}),
            400,
            "invalid_metadata",
        ),
    ],
)
def test_post_uploads_refuses_in_the_contract_shape(
    webhook: ModuleType, body: str, status: int, code: str
) -> None:
    answered, error = _post_upload(webhook, body)
    assert answered == status
    assert error["error"]["code"] == code


def test_ingest_decodes_the_event_key_and_skips_folder_markers(
    environment: None, aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pre-flight asks the provider for the technique: the emulator answers, with the key in SSM.
    emulator = ProviderEmulator("key", webhook_secret="whsec_aGFuZGxlcnM=")
    emulator.start()
    monkeypatch.setenv("PROVIDER_URL", emulator.url)
    s3_event = event("ingest-s3-put.json")
    record = s3_event["Records"][0]
    put = aws.s3.put_object(
        Bucket=aws.bucket, Key="uploads/spring catalog.csv", Body=b"sku,prompt\nA,a cat\n"
    )
    record["s3"]["bucket"]["name"] = aws.bucket
    record["s3"]["object"]["versionId"] = put["VersionId"]
    folder = json.loads(json.dumps(record))
    folder["s3"]["object"]["key"] = "uploads/new+folder/"
    s3_event["Records"].append(folder)
    try:
        result = load_handler("ingest").lambda_handler(s3_event, Context())
    finally:
        emulator.stop()
    (batch_id,) = result["batch_ids"]
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and batch.source.key == "uploads/spring catalog.csv" and batch.total_count == 1
    assert emulator.stats()["technique_gets"] == 1 and batch.run_cost_usd == 0.04


def test_a_malformed_chunk_message_fails_alone(environment: None, aws: Aws) -> None:
    sqs_event = event("worker-sqs-chunk.json")
    good = sqs_event["Records"][0]
    bad = good | {"messageId": "bad-1", "body": '{"batch_id": 42}'}
    sqs_event["Records"].append(bad)
    result = load_handler("worker").lambda_handler(sqs_event, Context())
    # The good record names a batch this table does not have: nothing to start, not a failure.
    assert result == {"batchItemFailures": [{"itemIdentifier": "bad-1"}]}
