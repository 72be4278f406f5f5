"""The real handlers, driven by the sample events in events/, against in-process moto."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import boto3
import pytest

from rowcall.compose import secret

from .conftest import Aws

ROOT = Path(__file__).resolve().parents[2]


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
    for key, value in {
        "TABLE_NAME": aws.table,
        "DONE_QUEUE_URL": aws.done_queue_url,
        "CHUNK_QUEUE_URL": aws.chunk_queue_url,
        "CALLBACK_SECRET_PARAM": "/rowcall/callback-secret",
        "PROVIDER_API_KEY_PARAM": "/rowcall/provider-api-key",
        "PROVIDER_URL": "http://127.0.0.1:9",
        "CALLBACK_BASE_URL": "http://127.0.0.1:9",
        "DEFAULT_TECHNIQUE_ID": "tech",
        "MAX_ROWS": "1000",
        "MAX_BYTES": "1000000",
        "CHUNK_ROWS": "10",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "POWERTOOLS_METRICS_NAMESPACE": "rowcall",
        "POWERTOOLS_SERVICE_NAME": "rowcall",
    }.items():
        monkeypatch.setenv(key, value)
    from rowcall import compose

    for factory in (compose.callback_recorder, compose.batch_queries, compose.ingestor, compose.run_starter):
        factory.cache_clear()
    yield
    for factory in (compose.callback_recorder, compose.batch_queries, compose.ingestor, compose.run_starter):
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


def test_a_signed_callback_with_a_bad_body_is_400_with_fields(webhook: ModuleType) -> None:
    from rowcall.identity import CallbackSigner

    callback = event("webhook-callback.json")
    token = CallbackSigner(secret("/rowcall/callback-secret")).token("b_k3v7yqzq5d2ttvqmq3xw3gq2", "0-1")
    callback["queryStringParameters"]["token"] = token
    callback["rawQueryString"] = f"token={token}"
    callback["body"] = '{"status": "completed"}'
    response = webhook.lambda_handler(callback, Context())
    assert response["statusCode"] == 400
    assert "run_id" in json.loads(response["body"])["error"]["fields"]


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
    assert json.loads(response["body"])["error"]["fields"] == {"limit": "1000"}


def test_ingest_decodes_the_event_key_and_skips_folder_markers(environment: None, aws: Aws) -> None:
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
    result = load_handler("ingest").lambda_handler(s3_event, Context())
    (batch_id,) = result["batch_ids"]
    batch = aws.ledger.get_batch(batch_id)
    assert batch is not None and batch.source.key == "uploads/spring catalog.csv" and batch.total_count == 1


def test_a_malformed_chunk_message_fails_alone(environment: None, aws: Aws) -> None:
    sqs_event = event("worker-sqs-chunk.json")
    good = sqs_event["Records"][0]
    bad = good | {"messageId": "bad-1", "body": '{"batch_id": 42}'}
    sqs_event["Records"].append(bad)
    result = load_handler("worker").lambda_handler(sqs_event, Context())
    # The good record names a batch this table does not have: nothing to start, not a failure.
    assert result == {"batchItemFailures": [{"itemIdentifier": "bad-1"}]}
