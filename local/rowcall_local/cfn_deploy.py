"""Deploys a translated template into moto's CloudFormation and waits for it."""

from __future__ import annotations

import io
import json
import logging
import time
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any

from rowcall_local.aws_clients import AwsEndpoint

log = logging.getLogger(__name__)


def _placeholder_zip() -> bytes:
    # moto stores the code but never runs it (no Docker); the local runtime runs the folders.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("README", "local runtime: code is run from the template's folders\n")
    return buf.getvalue()


def upload_placeholder_artifacts(aws: AwsEndpoint, bucket: str, keys: Iterable[str]) -> None:
    """Give every `s3://bucket/<key>` the translated template points at an object to find."""
    s3 = aws.s3()
    s3.create_bucket(Bucket=bucket)
    body = _placeholder_zip()
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=body)


def deploy_stack(
    aws: AwsEndpoint,
    stack_name: str,
    template: Mapping[str, Any],
    parameters: Mapping[str, str],
    timeout_s: float = 60.0,
) -> dict[str, str]:
    """create_stack and wait for CREATE_COMPLETE; returns logical id -> physical id.

    Resource types moto's CloudFormation does not implement (AWS::ApiGatewayV2::*,
    AWS::Lambda::EventInvokeConfig, AWS::S3::BucketPolicy, ...) are skipped by moto itself with a
    warning; the stack still completes. The local runtime serves what they describe (HTTP API,
    async retries) from the template, so they are only logged here.
    """
    cfn = aws.cloudformation()
    cfn.create_stack(
        StackName=stack_name,
        TemplateBody=json.dumps(template),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM", "CAPABILITY_AUTO_EXPAND"],
    )
    deadline = time.monotonic() + timeout_s
    while True:
        stack = cfn.describe_stacks(StackName=stack_name)["Stacks"][0]
        status = stack["StackStatus"]
        if status == "CREATE_COMPLETE":
            break
        if not status.endswith("_IN_PROGRESS") or time.monotonic() > deadline:
            reason = stack.get("StackStatusReason", "")
            raise RuntimeError(f"stack {stack_name}: {status} {reason}".strip())
        time.sleep(0.1)
    physical: dict[str, str] = {}
    paginator = cfn.get_paginator("list_stack_resources")
    for page in paginator.paginate(StackName=stack_name):
        for summary in page["StackResourceSummaries"]:
            if summary.get("LogicalResourceId"):
                physical[summary["LogicalResourceId"]] = summary.get("PhysicalResourceId", "")
    skipped = sorted(
        f"{lid} ({res.get('Type')})" for lid, res in template["Resources"].items() if lid not in physical
    )
    if skipped:
        log.info("moto's CloudFormation skipped (served locally or not needed): %s", ", ".join(skipped))
    apply_bucket_properties(aws, template, physical)
    apply_table_properties(aws, template, physical)
    return physical


def apply_table_properties(
    aws: AwsEndpoint, template: Mapping[str, Any], physical: Mapping[str, str]
) -> None:
    """Apply the table properties moto's CloudFormation ignores: the TTL attribute (a table made by
    CloudFormation on AWS has it enabled, and `describe_time_to_live` should say so here too)."""
    dynamodb: Any = None
    for logical_id, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::DynamoDB::Table" or logical_id not in physical:
            continue
        ttl = (resource.get("Properties") or {}).get("TimeToLiveSpecification")
        if ttl and _is_literal(ttl):
            dynamodb = dynamodb or aws.dynamodb()
            dynamodb.update_time_to_live(
                TableName=physical[logical_id],
                TimeToLiveSpecification={
                    "AttributeName": ttl["AttributeName"],
                    "Enabled": bool(ttl["Enabled"]),
                },
            )


def _is_literal(value: Any) -> bool:
    if isinstance(value, dict):
        return not any(k == "Ref" or k.startswith("Fn::") for k in value) and all(
            map(_is_literal, value.values())
        )
    if isinstance(value, list):
        return all(map(_is_literal, value))
    return True


def apply_bucket_properties(
    aws: AwsEndpoint, template: Mapping[str, Any], physical: Mapping[str, str]
) -> None:
    """Apply the bucket properties moto's CloudFormation ignores (it applies only encryption and
    tags) where the API takes them as written. Versioning matters most: object versions are part
    of what a stored object is. Lifecycle rules (no effect within a local run) are left out.
    """
    s3 = aws.s3()
    for logical_id, resource in template["Resources"].items():
        if resource.get("Type") != "AWS::S3::Bucket" or logical_id not in physical:
            continue
        props = resource.get("Properties") or {}
        bucket = physical[logical_id]
        versioning = props.get("VersioningConfiguration")
        if versioning and _is_literal(versioning):
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": versioning["Status"]})
        public_access = props.get("PublicAccessBlockConfiguration")
        if public_access and _is_literal(public_access):
            s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=public_access)
        ownership = props.get("OwnershipControls")
        if ownership and _is_literal(ownership):
            s3.put_bucket_ownership_controls(Bucket=bucket, OwnershipControls=ownership)
