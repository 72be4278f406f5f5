"""POST /uploads: what the presigned PUT binds, checked by the embedded S3's own verifier of presigned
requests (strict_s3.presign_problem), and every refusal in the contract's shape."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.config import Config
from moto import mock_aws

from rowcall.api import ApiError
from rowcall.outbound import DestinationPolicy
from rowcall.uploads import UPLOAD_URL_VALID_S, UploadGrant, UploadRequest, Uploads, object_key, parse_request
from rowcall_local.strict_s3 import presign_problem
from tests.unit.conftest import template_resource

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
ENDPOINT = "http://127.0.0.1:4566"


def uploads(max_bytes: int = 10_000, allow_loopback: bool = True) -> Uploads:
    # Presigning is local computation: no endpoint is contacted.
    s3 = boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        config=Config(signature_version="s3v4"),
    )
    return Uploads(
        s3=s3,
        bucket="rowcall-data",
        max_bytes=max_bytes,
        default_technique_id="tech",
        destinations=DestinationPolicy(allow_loopback=allow_loopback),
        clock=lambda: NOW,
        new_token=lambda: "tok",
    )


def grant(**body: Any) -> UploadGrant:
    return uploads().grant(parse_request({"filename": "people.csv", "size_bytes": 120} | body))


def refusal(**body: Any) -> ApiError:
    with pytest.raises(ApiError) as raised:
        uploads().grant(parse_request({"filename": "people.csv", "size_bytes": 120} | body))
    return raised.value


def sent(granted: UploadGrant, **changes: str | None) -> dict[str, str]:
    """The headers a client sends: the granted ones (with Host), changed as given."""
    headers = dict(granted.headers) | {"Host": urlsplit(granted.upload_url).netloc}
    for name, value in changes.items():
        header = name.replace("_", "-")
        headers = {k: v for k, v in headers.items() if k.lower() != header.lower()}
        if value is not None:
            headers[header] = value
    return headers


def check(
    granted: UploadGrant, headers: dict[str, str], at: datetime | None = None
) -> tuple[str, str] | None:
    # botocore signs with the wall clock; the checker is asked at a time relative to that.
    signed_at = datetime.strptime(
        parse_qs(urlsplit(granted.upload_url).query)["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"
    ).replace(tzinfo=UTC)
    return presign_problem("PUT", granted.upload_url, headers, at or signed_at + timedelta(seconds=1))


FULL = {
    "technique_id": "tech-2",
    "key_column": "id",
    "input_columns": ["photo", "caption"],
    "input_types": {"photo": "imageUrl"},
    "static_inputs": [{"id": "reference_0", "type": "imageUrl", "value": "https://example.com/r.png"}],
    "on_done_url": "http://127.0.0.1:8080/done",
    "batch_name": "spring photos",
}


def test_the_grant_is_a_5_minute_put_under_uploads_signing_size_type_and_metadata() -> None:
    granted = grant(**FULL)
    query = parse_qs(urlsplit(granted.upload_url).query)
    assert granted.key == "uploads/tok/people.csv"
    assert urlsplit(granted.upload_url).path == "/rowcall-data/uploads/tok/people.csv"
    assert granted.expires_at == "2030-01-02T03:09:05.000Z"
    assert query["X-Amz-Expires"] == [str(UPLOAD_URL_VALID_S)]
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    signed = set(query["X-Amz-SignedHeaders"][0].split(";"))
    metadata = {k for k in granted.headers if k.startswith("x-amz-meta-")}
    assert {"content-length", "content-type", "host"} | metadata == signed
    assert granted.headers["Content-Type"] == "text/csv"
    assert granted.headers["Content-Length"] == "120"
    assert granted.headers["x-amz-meta-input-columns"] == "photo;caption"
    assert granted.headers["x-amz-meta-input-types"] == "photo=imageUrl"
    assert json.loads(granted.headers["x-amz-meta-static-inputs"]) == FULL["static_inputs"]
    assert granted.headers["x-amz-meta-batch-name"] == "spring photos"
    assert granted.headers["x-amz-meta-on-done-url"] == "http://127.0.0.1:8080/done"


def test_the_batch_is_named_after_the_file_unless_named() -> None:
    assert grant().headers["x-amz-meta-batch-name"] == "people.csv"
    assert "x-amz-meta-technique-id" not in grant().headers


def test_s3_accepts_the_put_as_granted() -> None:
    granted = grant(**FULL)
    assert check(granted, sent(granted)) is None


@pytest.mark.parametrize(
    "change",
    [
        {"Content_Type": "text/plain"},
        {"Content_Length": "121"},
        {"x_amz_meta_technique_id": "another"},
        {"x_amz_meta_batch_name": None},
    ],
)
def test_s3_refuses_a_put_whose_signed_headers_differ(change: dict[str, str | None]) -> None:
    granted = grant(**FULL)
    problem = check(granted, sent(granted, **change))
    assert problem is not None and problem[0] == "SignatureDoesNotMatch"


def test_s3_refuses_metadata_that_was_not_signed() -> None:
    granted = grant()
    problem = check(granted, sent(granted, x_amz_meta_on_done_url="https://example.com/"))
    assert problem == (
        "AccessDenied",
        "There were headers present in the request which were not signed: x-amz-meta-on-done-url",
    )


def test_s3_refuses_the_put_once_five_minutes_have_passed() -> None:
    granted = grant()
    signed_at = datetime.strptime(
        parse_qs(urlsplit(granted.upload_url).query)["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"
    ).replace(tzinfo=UTC)
    assert check(granted, sent(granted), at=signed_at + timedelta(seconds=UPLOAD_URL_VALID_S)) is None
    late = signed_at + timedelta(seconds=UPLOAD_URL_VALID_S + 1)
    assert check(granted, sent(granted), at=late) == ("AccessDenied", "Request has expired")


def test_s3_refuses_a_url_signed_with_another_secret() -> None:
    granted = grant()
    headers = sent(granted)
    signed_at = datetime.strptime(
        parse_qs(urlsplit(granted.upload_url).query)["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"
    ).replace(tzinfo=UTC)
    problem = presign_problem("PUT", granted.upload_url, headers, signed_at, secret_for=lambda key: "other")
    assert problem is not None and problem[0] == "SignatureDoesNotMatch"


def test_a_file_over_the_stacks_limit_is_413() -> None:
    with pytest.raises(ApiError) as raised:
        uploads(max_bytes=100).grant(parse_request({"filename": "big.csv", "size_bytes": 101}))
    assert (raised.value.status, raised.value.code) == (413, "file_too_large")
    assert raised.value.fields == {"size_bytes": "at most 100"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"input_types": {"photo": "picture"}}, "input_types"),
        ({"static_inputs": [{"id": "x", "type": "text"}]}, "static_inputs"),
        ({"static_inputs": [{"id": "x", "type": "text", "value": "a"}] * 2}, "static_inputs"),
        ({"on_done_url": "http://example.com/done"}, "on_done_url"),
        ({"batch_name": "caf\u00e9"}, "batch_name"),
        ({"input_columns": ["a;b"]}, "input_columns"),
    ],
)
def test_metadata_ingest_would_refuse_is_400_naming_the_field(body: dict[str, Any], field: str) -> None:
    error = refusal(**body)
    assert (error.status, error.code) == (400, "invalid_metadata")
    assert list(error.fields) == [field]
    assert error.message.startswith(f"{field}: ")


def test_metadata_over_s3s_2_kb_is_400() -> None:
    error = refusal(batch_name="n" * 2100)
    assert (error.status, error.code) == (400, "invalid_metadata")
    assert "2048" in error.message


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"filename": "a.csv"}, "size_bytes"),
        ({"filename": "a.csv", "size_bytes": "120"}, "size_bytes"),
        ({"filename": "a.csv", "size_bytes": 0}, "size_bytes"),
        ({"filename": "", "size_bytes": 1}, "filename"),
        ({"filename": "a.csv", "size_bytes": 1, "technique": "x"}, "technique"),
        (["a.csv"], "body"),
    ],
)
def test_a_malformed_request_is_400_with_its_fields(body: Any, field: str) -> None:
    with pytest.raises(ApiError) as raised:
        parse_request(body)
    assert (raised.value.status, raised.value.code) == (400, "invalid_body")
    assert field in raised.value.fields


def test_the_metadata_may_be_written_as_in_section_3_under_its_own_names() -> None:
    as_text = {
        "technique-id": "tech-2",
        "key-column": "id",
        "input-columns": "photo;caption",
        "input_types": "photo=imageUrl",
        "static-inputs": json.dumps(FULL["static_inputs"], separators=(",", ":")),
        "on-done-url": "http://127.0.0.1:8080/done",
        "batch-name": "spring photos",
    }
    assert grant(**as_text).headers == grant(**FULL).headers


def test_a_field_that_takes_a_list_or_text_is_refused_once() -> None:
    with pytest.raises(ApiError) as raised:
        parse_request({"filename": "a.csv", "size_bytes": 1, "input-types": 5})
    assert raised.value.fields == {
        "input_types": "Input should be a valid dictionary, or Input should be a valid string"
    }


@pytest.mark.parametrize(
    ("filename", "key"),
    [
        ("people.csv", "uploads/t/people.csv"),
        ("../../etc/pass wd.csv", "uploads/t/pass_wd.csv"),
        ("C:\\Users\\me\\data (1).csv", "uploads/t/data_1_.csv"),
        ("..", "uploads/t/upload.csv"),
        ("\u00e9t\u00e9.csv", "uploads/t/_t_.csv"),
    ],
)
def test_the_key_keeps_only_a_safe_file_name(filename: str, key: str) -> None:
    assert object_key(filename, "t") == key


@pytest.mark.parametrize("region", ["eu-west-3", "ap-east-1", "us-east-1"])
def test_the_url_is_presigned_against_the_buckets_regional_virtual_hosted_endpoint(
    region: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The legacy global host answers 307 for a bucket less than a day old and 400 in Regions
    opened after March 2019 (ap-east-1): the function's own client must presign Regionally."""
    from rowcall import compose

    for name in [n for n in os.environ if n.startswith("AWS_ENDPOINT_URL") or n == "AWS_PROFILE"]:
        monkeypatch.delenv(name)
    env = {
        "AWS_REGION": region,
        "AWS_DEFAULT_REGION": region,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "TABLE_NAME": "t",
        "DATA_BUCKET": "rowcall-data-123456789012",
        "MAX_BYTES": "10000",
        "DEFAULT_TECHNIQUE_ID": "tech",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # Clients are cached per container; each Region here is a new container.
    compose.uploads.cache_clear()
    compose._dynamodb.cache_clear()
    # The grant keeps the request's metadata in the ledger (an upload intent): an in-process table.
    table = {
        k: v
        for k, v in template_resource("Table").items()
        if k in ("AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes", "BillingMode")
    }
    try:
        with mock_aws():
            boto3.client("dynamodb", region_name=region).create_table(TableName="t", **table)
            url = urlsplit(compose.uploads().grant(UploadRequest(filename="a.csv", size_bytes=10)).upload_url)
    finally:
        compose.uploads.cache_clear()
        compose._dynamodb.cache_clear()
    assert (url.scheme, url.hostname) == ("https", f"rowcall-data-123456789012.s3.{region}.amazonaws.com")
    assert url.path.startswith("/uploads/") and f"%2F{region}%2Fs3%2Faws4_request" in url.query


def test_the_local_stack_still_presigns_against_its_embedded_endpoint(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rowcall.uploads import presigning_s3_client

    monkeypatch.setenv("AWS_ENDPOINT_URL", ENDPOINT)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    url = presigning_s3_client("eu-west-3").generate_presigned_url(
        "put_object", Params={"Bucket": "rowcall-data", "Key": "uploads/a.csv"}
    )
    assert urlsplit(url)[:3] == urlsplit(f"{ENDPOINT}/rowcall-data/uploads/a.csv")[:3]
