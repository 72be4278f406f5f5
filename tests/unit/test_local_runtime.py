"""The local runtime drives stand-in handlers from a small SAM template of the tests' own.

Real moto server over HTTP, real function processes, real loopback HTTP; no mocks. Waits are
conditions polled against a deadline.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote_plus

import httpx
import pytest

from rowcall_local.cli import build_parser, stack_options
from rowcall_local.function_pool import FunctionPool, FunctionRuntime
from rowcall_local.function_runtime import InstanceSpec
from rowcall_local.provider_emulator import ProviderFaults
from rowcall_local.sqs_event_source import failed_message_ids
from rowcall_local.stack import LocalStack, StackOptions

T = TypeVar("T")

TEMPLATE = """\
AWSTemplateFormatVersion: "2010-09-09"
Transform: AWS::Serverless-2016-10-31
Parameters:
  RecordDir:
    Type: String
    Default: /nowhere
Globals:
  Function:
    Runtime: python3.13
    Handler: app.lambda_handler
    Timeout: 10
    Layers: [!Ref SharedLayer]
    Environment:
      Variables:
        RECORD_DIR: !Ref RecordDir
Resources:
  SharedLayer:
    Type: AWS::Serverless::LayerVersion
    Properties:
      ContentUri: layer/
  Bucket:
    Type: AWS::S3::Bucket
    Properties:
      BucketName: !Sub "${AWS::StackName}-data-${AWS::AccountId}"
  Queue:
    Type: AWS::SQS::Queue
    Properties:
      VisibilityTimeout: 1
      RedrivePolicy:
        deadLetterTargetArn: !GetAtt DeadLetters.Arn
        maxReceiveCount: 2
  DeadLetters:
    Type: AWS::SQS::Queue
  Api:
    Type: AWS::Serverless::HttpApi
    Properties:
      Auth:
        EnableIamAuthorizer: true
        DefaultAuthorizer: AWS_IAM
  Recorder:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: recorder/
      Timeout: 1  # AWS wants the queue's visibility timeout at least the function's
      Events:
        Messages:
          Type: SQS
          Properties:
            Queue: !GetAtt Queue.Arn
            BatchSize: 10
            FunctionResponseTypes: [ReportBatchItemFailures]
  Uploads:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: uploads/
      Events:
        Upload:
          Type: S3
          Properties:
            Bucket: !Ref Bucket
            Events: s3:ObjectCreated:*
            Filter:
              S3Key:
                Rules:
                  - { Name: prefix, Value: in/ }
  Echo:
    Type: AWS::Serverless::Function
    Properties:
      CodeUri: echo/
      Events:
        GetItem:
          Type: HttpApi
          Properties:
            ApiId: !Ref Api
            Method: GET
            Path: /items/{item_id}
        Open:
          Type: HttpApi
          Properties:
            ApiId: !Ref Api
            Method: POST
            Path: /open/{a}/{b}
            Auth:
              Authorizer: NONE
"""

SHARED = """\
import json, os

def record(name, data):
    with open(os.path.join(os.environ["RECORD_DIR"], name + ".jsonl"), "a") as f:
        f.write(json.dumps(data) + "\\n")
"""

RECORDER = """\
from shared import record

def lambda_handler(event, context):
    failures = []
    for r in event["Records"]:
        count = int(r["attributes"]["ApproximateReceiveCount"])
        record("sqs", {"id": r["messageId"], "body": r["body"], "count": count,
                       "source": r["eventSource"], "arn": r["eventSourceARN"]})
        if r["body"] == "fail-always" or (r["body"] == "fail-once" and count == 1):
            failures.append({"itemIdentifier": r["messageId"]})
    return {"batchItemFailures": failures}
"""

UPLOADS = """\
import os
from shared import record

def lambda_handler(event, context):
    (r,) = event["Records"]
    key = r["s3"]["object"]["key"]
    record("s3", {"key": key, "bucket": r["s3"]["bucket"]["name"], "event": r["eventName"],
                  "function": context.function_name, "remaining_ms": context.get_remaining_time_in_millis()})
    marker = os.path.join(os.environ["RECORD_DIR"], "flaky-seen")
    if "flaky" in key and not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
"""

ECHO = """\
import base64, json, os

def lambda_handler(event, context):
    item = (event.get("pathParameters") or {}).get("item_id")
    if item == "raise":
        raise ValueError("echo was asked to fail")
    if item == "exit":
        os._exit(3)
    if item == "binary":
        return {"statusCode": 200, "headers": {"content-type": "application/octet-stream"},
                "body": base64.b64encode(b"\\x00\\x01\\xff").decode(), "isBase64Encoded": True}
    if item == "bare":
        return {"just": "json"}
    if item == "env":
        return {"statusCode": 200, "body": json.dumps(dict(os.environ))}
    return {"statusCode": 201, "headers": {"content-type": "application/json", "x-pid": str(os.getpid())},
            "cookies": ["echo=1; Path=/"], "body": json.dumps(event)}
"""


def wait_for(condition: Callable[[], T], timeout_s: float = 20.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)


def records(record_dir: Path, name: str) -> list[dict[str, Any]]:
    path = record_dir / f"{name}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("records")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, record_dir: Path) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp("app")
    (root / "template.yaml").write_text(TEMPLATE)
    for folder, module, source in [
        ("layer", "shared.py", SHARED),
        ("recorder", "app.py", RECORDER),
        ("uploads", "app.py", UPLOADS),
        ("echo", "app.py", ECHO),
    ]:
        (root / folder).mkdir()
        (root / folder / module).write_text(source)
    options = StackOptions(
        template=root / "template.yaml",
        state_dir=root / "state",
        stack_name="rowcall-test",
        provider_faults=None,
        parameters={"RecordDir": str(record_dir)},
    )
    # Variables of the developer's shell that must not reach a handler.
    leaks = {"LEAKY_VARIABLE": "x", "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9", "AWS_SESSION_TOKEN": "t"}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in leaks.items():
            patch.setenv(name, value)
        with LocalStack(options) as started:
            yield started


@pytest.fixture
def api(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.info["api_url"], timeout=15) as client:
        yield client


def auth(stack: LocalStack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.info['api_token']}"}


def test_stack_json_is_written_with_the_contract_keys(stack: LocalStack) -> None:
    written = json.loads(stack.stack_json.read_text())
    assert written == stack.info
    assert list(written) == [
        "aws_endpoint_url",
        "region",
        "bucket",
        "table",
        "topic_arn",
        "api_url",
        "api_token",
        "provider_url",
        "webhook_secret",
        "provider_api_key",
        "provider_webhook_secret",
        "replicate_url",
        "replicate_api_token",
        "replicate_webhook_secret",
    ]
    assert written["bucket"] == "rowcall-test-data-123456789012"
    assert written["webhook_secret"].startswith("whsec_")
    assert written["provider_webhook_secret"].startswith("whsec_")
    assert written["provider_webhook_secret"] != written["webhook_secret"]
    assert written["provider_api_key"] == stack.secrets.provider_api_key
    # This stack runs no provider emulator, so no Replicate one either; its secrets are the stack's.
    assert written["replicate_url"] == ""
    assert written["replicate_api_token"] == stack.secrets.replicate_api_token
    assert written["replicate_webhook_secret"] == stack.secrets.replicate_webhook_secret
    assert written["replicate_webhook_secret"].startswith("whsec_")
    assert written["replicate_webhook_secret"] not in (
        written["webhook_secret"],
        written["provider_webhook_secret"],
    )


def test_sqs_partial_batch_failures_are_redelivered_and_successes_deleted(
    stack: LocalStack, record_dir: Path
) -> None:
    assert stack.wiring is not None
    (trigger,) = stack.wiring.sqs_triggers
    sqs = stack.aws.sqs()
    sqs.send_message_batch(
        QueueUrl=trigger.queue_url,
        Entries=[
            {"Id": str(i), "MessageBody": body} for i, body in enumerate(["ok", "fail-once", "fail-always"])
        ],
    )
    dead_letters_url = stack.wiring.physical_ids["DeadLetters"]

    def settled() -> bool:
        seen = [r["body"] for r in records(record_dir, "sqs")]
        attributes = sqs.get_queue_attributes(QueueUrl=trigger.queue_url, AttributeNames=["All"])[
            "Attributes"
        ]
        left = int(attributes["ApproximateNumberOfMessages"]) + int(
            attributes["ApproximateNumberOfMessagesNotVisible"]
        )
        dead = int(
            sqs.get_queue_attributes(
                QueueUrl=dead_letters_url, AttributeNames=["ApproximateNumberOfMessages"]
            )["Attributes"]["ApproximateNumberOfMessages"]
        )
        return seen.count("fail-once") == 2 and seen.count("fail-always") == 2 and left == 0 and dead == 1

    wait_for(settled, what="partial batch failures to be redelivered and dead-lettered")
    got = records(record_dir, "sqs")
    assert [r["body"] for r in got].count("ok") == 1  # deleted, or it would be back after 1 s
    assert [r["count"] for r in got if r["body"] == "fail-once"] == [1, 2]
    assert {r["source"] for r in got} == {"aws:sqs"}
    assert {r["arn"] for r in got} == {trigger.queue_arn}
    dead = sqs.receive_message(QueueUrl=dead_letters_url, MaxNumberOfMessages=10)["Messages"]
    assert [m["Body"] for m in dead] == ["fail-always"]


def test_failed_message_ids_follows_lambda_rules() -> None:
    ids = ["a", "b"]
    assert failed_message_ids(None, ids) == set()
    assert failed_message_ids({}, ids) == set()
    assert failed_message_ids({"batchItemFailures": []}, ids) == set()
    assert failed_message_ids({"batchItemFailures": [{"itemIdentifier": "b"}]}, ids) == {"b"}
    assert failed_message_ids({"batchItemFailures": [{"itemIdentifier": "zz"}]}, ids) == {"a", "b"}
    assert failed_message_ids({"batchItemFailures": [{}]}, ids) == {"a", "b"}
    assert failed_message_ids("nonsense", ids) == {"a", "b"}


def test_http_api_builds_a_v2_event(stack: LocalStack, api: httpx.Client) -> None:
    response = api.get(
        "/items/abc%20d",
        params=[("x", "1"), ("x", "2"), ("y", "")],
        headers={**auth(stack), "X-Custom": "v", "Cookie": "a=1; b=2"},
    )
    assert response.status_code == 201, response.text
    assert response.headers["set-cookie"] == "echo=1; Path=/"
    event = response.json()
    assert event["version"] == "2.0"
    assert event["routeKey"] == "GET /items/{item_id}"
    assert event["rawPath"] == "/items/abc%20d"
    assert event["rawQueryString"] == "x=1&x=2&y="
    assert event["queryStringParameters"] == {"x": "1,2", "y": ""}
    assert event["pathParameters"] == {"item_id": "abc d"}
    assert event["headers"]["x-custom"] == "v"
    assert event["cookies"] == ["a=1", "b=2"]
    assert "body" not in event and event["isBase64Encoded"] is False
    context = event["requestContext"]
    assert context["http"]["method"] == "GET"
    assert context["http"]["path"] == "/items/abc%20d"
    assert context["http"]["sourceIp"] == "127.0.0.1"
    assert context["stage"] == "$default"
    assert context["routeKey"] == "GET /items/{item_id}"
    assert context["accountId"] == "123456789012"
    assert abs(context["timeEpoch"] / 1000 - time.time()) < 60


def test_http_api_iam_routes_need_the_bearer_token(stack: LocalStack, api: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": stack.info["api_token"]}):
        response = api.get("/items/abc", headers=headers)
        assert response.status_code == 401
        assert response.json() == {
            "error": {"code": "unauthorized", "message": "missing or invalid bearer token"}
        }


def test_http_api_open_route_bodies_and_errors(stack: LocalStack, api: httpx.Client) -> None:
    opened = api.post("/open/one/two", json={"k": "v"})
    assert opened.status_code == 201
    event = opened.json()
    assert event["routeKey"] == "POST /open/{a}/{b}"
    assert event["pathParameters"] == {"a": "one", "b": "two"}
    assert json.loads(event["body"]) == {"k": "v"} and event["isBase64Encoded"] is False
    binary = api.post("/open/x/y", content=b"\x00\xff", headers={"content-type": "application/octet-stream"})
    assert binary.json()["isBase64Encoded"] is True and binary.json()["body"] == "AP8="
    assert api.get("/items/binary", headers=auth(stack)).content == b"\x00\x01\xff"
    assert api.get("/items/bare", headers=auth(stack)).json() == {"just": "json"}
    assert api.get("/items/raise", headers=auth(stack)).status_code == 500
    missing = api.get("/nothing/here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert api.get("/open/one/two").status_code == 405


def test_a_dead_instance_is_replaced(stack: LocalStack, api: httpx.Client) -> None:
    assert stack.runtime is not None
    pool = stack.runtime.pools["Echo"]

    def full_pool(unlike: set[int]) -> set[int]:
        pids = pool.live_pids()
        return pids if len(pids) == pool.size and pids != unlike else set()

    before = wait_for(lambda: full_pool(set()), what="all instances up")
    assert api.get("/items/exit", headers=auth(stack)).status_code == 500
    after = wait_for(lambda: full_pool(before), what="a replacement instance")
    assert len(before - after) == 1
    for _ in range(pool.size + 1):
        assert api.get("/items/ok", headers=auth(stack)).status_code == 201


def test_s3_upload_reaches_the_s3_triggered_function(stack: LocalStack, record_dir: Path) -> None:
    s3 = stack.aws.s3()
    bucket = stack.info["bucket"]
    s3.put_object(Bucket=bucket, Key="out/ignored.csv", Body=b"a,b\n")
    s3.put_object(Bucket=bucket, Key="in/report 1.csv", Body=b"a,b\n1,2\n")
    s3.put_object(Bucket=bucket, Key="in/flaky.csv", Body=b"a\n")
    # S3 event keys are URL-encoded with "/" left as it is; they are passed through as they are.
    report, flaky = quote_plus("in/report 1.csv", safe="/"), quote_plus("in/flaky.csv", safe="/")

    def delivered() -> list[dict[str, Any]]:
        got = records(record_dir, "s3")
        keys = [r["key"] for r in got]
        return got if keys.count(flaky) == 2 and report in keys else []

    got = wait_for(delivered, what="both uploads delivered (the flaky one retried)")
    assert all(r["bucket"] == bucket for r in got)
    assert all(r["event"] == "ObjectCreated:Put" for r in got)
    assert [r["key"] for r in got].count(report) == 1
    assert not any("out" in r["key"] for r in got)
    assert all(0 < r["remaining_ms"] <= 10_000 for r in got)


def test_cli_flags_read_the_environment_and_the_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ROWCALL_PROVIDER_FAIL_RATE", "0.25")
    monkeypatch.setenv("ROWCALL_PROVIDER_DELAY_MS", "5:60")
    monkeypatch.setenv("ROWCALL_MAX_ROWS", "10")
    monkeypatch.setenv("ROWCALL_AWS_FAULT_RATE", "0.05")
    monkeypatch.delenv("ROWCALL_STATE_DIR", raising=False)
    options = stack_options(
        build_parser().parse_args(["up", "--max-rows", "20", "--reconcile-after-s", "30"])
    )
    assert options.provider_faults == ProviderFaults(fail_rate=0.25, delay_ms=(5, 60))
    assert options.max_rows == 20
    assert options.reconcile_after_s == 30.0
    assert options.aws_fault_rate == 0.05
    assert options.state_dir == Path(".rowcall")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--provider-fail-rate", "2"])


def test_the_providers_idempotency_reading_is_a_flag_and_an_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ROWCALL_PROVIDER_IDEMPOTENCY", raising=False)
    assert stack_options(build_parser().parse_args(["up"])).provider_faults.idempotency == "duplicate"
    monkeypatch.setenv("ROWCALL_PROVIDER_IDEMPOTENCY", "replay")
    assert stack_options(build_parser().parse_args(["up"])).provider_faults.idempotency == "replay"
    flagged = build_parser().parse_args(["up", "--provider-idempotency", "duplicate"])
    assert stack_options(flagged).provider_faults.idempotency == "duplicate"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--provider-idempotency", "sometimes"])


def test_an_invocation_past_its_timeout_is_killed_and_the_instance_replaced(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        "import time\n"
        "def lambda_handler(event, context):\n"
        "    time.sleep(event['sleep'])\n"
        "    return {'remaining_ms': context.get_remaining_time_in_millis()}\n"
    )
    spec = InstanceSpec(
        function_id="Slow",
        function_name="slow",
        function_arn="arn:aws:lambda:us-east-1:123456789012:function:slow",
        handler="app.lambda_handler",
        code_dir=str(tmp_path),
        layer_dirs=(),
        environment={},
        memory_mb=128,
        timeout_s=1,
        log_path=str(tmp_path / "Slow.log"),
    )
    runtime = FunctionRuntime({"Slow": FunctionPool(spec, 1)})
    runtime.start()
    try:
        timed_out = runtime.invoke("Slow", {"sleep": 5})
        assert timed_out.error is not None and timed_out.error.type == "Sandbox.Timedout"
        answered = runtime.invoke("Slow", {"sleep": 0})
        assert answered.ok and 0 < answered.payload["remaining_ms"] <= 1000
        # Billed as Lambda bills: the timed-out one up to its timeout, the other at least 1 ms.
        usage = runtime.usage()["Slow"]
        assert usage["invocations"] == 2 and usage["memory_mb"] == 128
        assert 1001 <= usage["billed_ms"] < 1500
        runtime.reset_usage()
        assert runtime.invoke("Slow", {"sleep": 0.2}).ok
        usage = runtime.usage()["Slow"]
        assert usage["invocations"] == 1 and 200 <= usage["billed_ms"] < 1000
    finally:
        runtime.stop()


def test_a_handler_sees_its_template_environment_and_nothing_of_the_shell(
    stack: LocalStack, api: httpx.Client
) -> None:
    environment = api.get("/items/env", headers=auth(stack)).json()
    assert "LEAKY_VARIABLE" not in environment and "AWS_SESSION_TOKEN" not in environment
    assert "AWS_ENDPOINT_URL_S3" not in environment
    assert environment["AWS_ENDPOINT_URL"] == stack.info["aws_endpoint_url"]
    assert "PATH" in environment


def test_a_second_stack_cannot_share_a_state_dir_and_a_stale_stack_json_is_removed(
    stack: LocalStack, tmp_path: Path
) -> None:
    with pytest.raises(RuntimeError, match="another rowcall stack"):
        LocalStack(StackOptions(state_dir=stack.state_dir, provider_faults=None)).start()
    assert stack.stack_json.exists(), "the refused stack removed the running one's stack.json"
    state = tmp_path / "state"
    state.mkdir()
    (state / "stack.json").write_text('{"api_url": "http://127.0.0.1:1"}')
    doomed = LocalStack(
        StackOptions(state_dir=state, template=tmp_path / "missing.yaml", provider_faults=None)
    )
    with pytest.raises(Exception):  # noqa: B017 - any failure to start will do; the file must be gone
        doomed.start()
    assert not (state / "stack.json").exists()
