"""The client package: SigV4 as botocore signs it, stack resolution (stack.json, CloudFormation outputs),
the API's errors as one line, and the progress figures."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto import mock_aws

from rowcall_client.api import ApiError, RowcallApi
from rowcall_client.progress import Rate, describe
from rowcall_client.sigv4 import SigV4
from rowcall_client.target import TargetError, deployed_target, local_target

CREDENTIALS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token")
API = "https://abc123.execute-api.eu-west-1.amazonaws.com"
_AUTHORIZATION = re.compile(
    r"^AWS4-HMAC-SHA256 "
    r"Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request, "
    r"SignedHeaders=(?P<signed>[^,]+), Signature=(?P<signature>[0-9a-f]{64})$"
)


def captured(request: httpx.Request, auth: httpx.Auth) -> httpx.Request:
    """The request as it leaves the client, after `auth` has signed it."""
    seen: list[httpx.Request] = []

    def answer(sent: httpx.Request) -> httpx.Response:
        seen.append(sent)
        return httpx.Response(200, json={})

    with httpx.Client(transport=httpx.MockTransport(answer), auth=auth) as client:
        client.send(request)
    return seen[0]


def botocore_signature(request: httpx.Request, signed: list[str], body: bytes | None = None) -> str:
    """botocore's own signature of the same request at the same instant, computed independently."""
    headers = {name: request.headers[name] for name in signed}
    aws = AWSRequest(
        method=request.method,
        url=str(request.url),
        data=request.content if body is None else body,
        headers=headers,
    )
    aws.context["timestamp"] = request.headers["x-amz-date"]
    signer = SigV4Auth(CREDENTIALS.get_frozen_credentials(), "execute-api", "eu-west-1")
    signature: str = signer.signature(signer.string_to_sign(aws, signer.canonical_request(aws)), aws)
    return signature


@pytest.mark.parametrize(
    "request_",
    [
        httpx.Request("POST", f"{API}/uploads", json={"filename": "a b.csv", "size_bytes": 3}),
        httpx.Request("GET", f"{API}/batches", params={"limit": 5, "cursor": "eyJ a=/+"}),
        httpx.Request("GET", f"{API}/batches/b_1/rows", params={"status": "failed"}),
    ],
    ids=["post-json", "get-query", "get-path"],
)
def test_sigv4_signs_as_botocore_does(request_: httpx.Request) -> None:
    sent = captured(request_, SigV4(CREDENTIALS, "eu-west-1"))
    parts = _AUTHORIZATION.match(sent.headers["authorization"])
    assert parts is not None, sent.headers["authorization"]
    assert (parts["key"], parts["region"], parts["service"]) == ("AKIDEXAMPLE", "eu-west-1", "execute-api")
    assert parts["date"] == sent.headers["x-amz-date"][:8]
    assert sent.headers["x-amz-security-token"] == "session-token"
    signed = parts["signed"].split(";")
    expected = {"host", "x-amz-date", "x-amz-security-token"} | ({"content-type"} if sent.content else set())
    assert set(signed) == expected
    assert parts["signature"] == botocore_signature(sent, signed)
    # The signature covers the body: another body is another signature.
    assert parts["signature"] != botocore_signature(sent, signed, body=sent.content + b" ")


def test_sigv4_takes_fresh_credentials_for_every_request() -> None:
    class Rotating(Credentials):
        def __init__(self) -> None:
            super().__init__("first", "secret")
            self.calls = 0

        def get_frozen_credentials(self) -> Any:
            self.calls += 1
            return Credentials(f"key{self.calls}", "secret").get_frozen_credentials()

    rotating = Rotating()
    auth = SigV4(rotating, "us-east-1")
    first = captured(httpx.Request("GET", f"{API}/batches"), auth).headers["authorization"]
    second = captured(httpx.Request("GET", f"{API}/batches"), auth).headers["authorization"]
    assert "Credential=key1/" in first and "Credential=key2/" in second


# -- stack resolution -------------------------------------------------------------------------------

OUTPUTS_TEMPLATE = {
    "Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
    "Outputs": {
        "ApiUrl": {"Value": API},
        "DataBucketName": {"Value": "rowcall-data-123-eu-west-1"},
        "OnDoneTopicArn": {"Value": {"Ref": "Topic"}},
        "TableName": {"Value": "t"},
    },
}


@pytest.fixture
def cloudformation(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("AWS_PROFILE", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield boto3.client("cloudformation", region_name="eu-west-1")


def test_a_deployed_target_reads_the_stacks_outputs_and_signs(cloudformation: Any) -> None:
    cloudformation.create_stack(StackName="rowcall-it", TemplateBody=json.dumps(OUTPUTS_TEMPLATE))
    target = deployed_target("rowcall-it", "eu-west-1")
    assert (target.api_url, target.bucket, target.region) == (API, "rowcall-data-123-eu-west-1", "eu-west-1")
    assert target.topic_arn is not None and target.topic_arn.startswith("arn:aws:sns:eu-west-1:")
    assert isinstance(target.auth, SigV4)
    assert target.aws_endpoint_url is None
    with target.http() as http:
        assert "authorization" not in http.headers  # signed per request, never a fixed header


def test_a_deployed_target_takes_aws_region_from_the_environment(
    cloudformation: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cloudformation.create_stack(StackName="rowcall-it", TemplateBody=json.dumps(OUTPUTS_TEMPLATE))
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert deployed_target("rowcall-it").region == "eu-west-1"


def test_an_unknown_stack_or_one_without_outputs_is_a_clear_error(cloudformation: Any) -> None:
    with pytest.raises(TargetError, match=r"^stack 'nope': Stack with id nope does not exist$"):
        deployed_target("nope", "eu-west-1")
    bare = {"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}}}
    cloudformation.create_stack(StackName="other", TemplateBody=json.dumps(bare))
    with pytest.raises(TargetError, match="has no output ApiUrl, DataBucketName: is it a rowcall stack"):
        deployed_target("other", "eu-west-1")


def test_a_local_target_reads_stack_json(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="no local stack is running"):
        local_target(tmp_path)
    info = {
        "aws_endpoint_url": "http://127.0.0.1:1",
        "region": "us-east-1",
        "bucket": "b",
        "topic_arn": "arn:t",
        "api_url": "http://127.0.0.1:2",
        "api_token": "tok",
    }
    (tmp_path / "stack.json").write_text(json.dumps(info))
    target = local_target(tmp_path)
    assert (target.api_url, target.bucket, target.aws_endpoint_url) == (
        "http://127.0.0.1:2",
        "b",
        "http://127.0.0.1:1",
    )
    with target.http() as http:
        assert http.headers["authorization"] == "Bearer tok"
    (tmp_path / "stack.json").write_text(json.dumps({"api_url": "x"}))
    with pytest.raises(TargetError, match="has no 'bucket'"):
        local_target(tmp_path)


# -- the API's answers ------------------------------------------------------------------------------


def api_answering(response: httpx.Response | Exception) -> RowcallApi:
    def answer(request: httpx.Request) -> httpx.Response:
        if isinstance(response, Exception):
            raise response
        return response

    return RowcallApi(httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(answer)))


@pytest.mark.parametrize(
    ("response", "status", "code", "line"),
    [
        (
            httpx.Response(404, json={"error": {"code": "batch_not_found", "message": "no batch 'x'"}}),
            404,
            "batch_not_found",
            "404 batch_not_found: no batch 'x'",
        ),
        (
            httpx.Response(
                400,
                json={
                    "error": {"code": "invalid_body", "message": "bad", "fields": {"size_bytes": "required"}}
                },
            ),
            400,
            "invalid_body",
            "400 invalid_body: bad; size_bytes: required",
        ),
        (httpx.Response(403, json={"message": "Forbidden"}), 403, "gateway", "403 gateway: Forbidden"),
        (
            httpx.Response(502, text="<html>\nBad\ngateway</html>"),
            502,
            "http_error",
            "502 http_error: <html> Bad gateway</html>",
        ),
        (httpx.ConnectError("connection refused"), 0, "unreachable", None),
    ],
)
def test_every_failure_is_an_api_error_of_one_line(
    response: httpx.Response | Exception, status: int, code: str, line: str | None
) -> None:
    with pytest.raises(ApiError) as raised:
        api_answering(response).get_batch("x")
    error = raised.value
    assert (error.status, error.code) == (status, code)
    assert "\n" not in str(error)
    assert str(error) == (line or "unreachable: cannot reach http://api.test/batches/x: connection refused")


def test_a_batch_id_stays_one_path_segment() -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(200, json={})

    api = RowcallApi(httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(answer)))
    api.get_batch("../uploads")
    api.reprocess("b/1", ["r1"])
    assert seen == ["/batches/..%2Fuploads", "/batches/b%2F1/reprocess"]


def test_rate_and_eta_from_what_was_observed() -> None:
    now = [100.0]
    rate = Rate(clock=lambda: now[0])
    assert rate.observe(0, None) == (None, None)
    now[0] = 102.0
    assert rate.observe(10, 50) == (5.0, 8.0)
    batch = {"status": "running", "completed_count": 8, "failed_count": 2, "total_count": 50}
    assert describe(batch, 5.0, 8.0) == "running, 8 done, 2 failed of 50, 5.0 rows/s, ETA 8s"
