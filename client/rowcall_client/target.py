"""The stack a client talks to: the local one (its stack.json) or a deployed one (CloudFormation outputs)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3.session
import httpx
from botocore.exceptions import BotoCoreError, ClientError

from rowcall_client.api import RowcallApi
from rowcall_client.sigv4 import SigV4

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# The local stack's embedded AWS takes any key; this is the one its own tools use (the functions
# have keys of their own), so downloads through it are the administrator's, as on a laptop they are.
LOCAL_ACCESS_KEY = "testing"
LOCAL_SECRET_KEY = "testing"
API_TIMEOUT_S = 30.0
# The template's outputs the client reads.
OUTPUT_API_URL = "ApiUrl"
OUTPUT_BUCKET = "DataBucketName"
OUTPUT_TOPIC = "OnDoneTopicArn"


class TargetError(Exception):
    """The stack cannot be found or read (no local stack running, no such CloudFormation stack,
    no AWS credentials); one line fit for a terminal."""


@dataclass(frozen=True)
class StackTarget:
    """Everything a client needs to reach one stack. `auth` signs or authorizes every API request."""

    name: str
    api_url: str
    bucket: str
    region: str
    topic_arn: str | None = None
    auth: httpx.Auth | None = field(default=None, repr=False)
    headers: dict[str, str] = field(default_factory=dict, repr=False)
    aws_endpoint_url: str | None = None
    """The local stack's embedded AWS; None for AWS itself."""
    session: boto3.session.Session | None = field(default=None, repr=False)

    def http(self, timeout_s: float = API_TIMEOUT_S) -> httpx.Client:
        return httpx.Client(base_url=self.api_url, auth=self.auth, headers=self.headers, timeout=timeout_s)

    def api(self) -> RowcallApi:
        return RowcallApi(self.http())

    def _session(self) -> boto3.session.Session:
        if self.session is not None:
            return self.session
        return boto3.session.Session(LOCAL_ACCESS_KEY, LOCAL_SECRET_KEY, region_name=self.region)

    def s3(self) -> S3Client:
        """For results downloads (`results/{batch_id}/...`) and, locally, anything else in the bucket."""
        client: S3Client = self._session().client("s3", endpoint_url=self.aws_endpoint_url)
        return client


def local_target(state_dir: Path) -> StackTarget:
    """The stack `rowcall up --state-dir state_dir` is running (it writes stack.json when ready and
    removes it when it stops)."""
    stack_json = state_dir / "stack.json"
    try:
        info: dict[str, Any] = json.loads(stack_json.read_text())
    except FileNotFoundError:
        raise TargetError(
            f"no local stack is running ({stack_json} not found): start one with `rowcall up`, "
            "or name a deployed one with --stack"
        ) from None
    except (OSError, ValueError) as exc:
        raise TargetError(f"cannot read {stack_json}: {exc}") from None
    try:
        return StackTarget(
            name=f"local ({state_dir})",
            api_url=info["api_url"],
            bucket=info["bucket"],
            region=info.get("region") or "us-east-1",
            topic_arn=info.get("topic_arn"),
            headers={"Authorization": f"Bearer {info['api_token']}"},
            aws_endpoint_url=info["aws_endpoint_url"],
        )
    except KeyError as missing:
        raise TargetError(f"{stack_json} has no {missing}: is it a rowcall stack.json?") from None


def stack_outputs(session: boto3.session.Session, stack_name: str) -> dict[str, str]:
    try:
        stacks = session.client("cloudformation").describe_stacks(StackName=stack_name)["Stacks"]
    except ClientError as exc:
        message = exc.response.get("Error", {}).get("Message") or str(exc)
        raise TargetError(f"stack {stack_name!r}: {message}") from None
    except BotoCoreError as exc:
        raise TargetError(f"stack {stack_name!r}: {exc}") from None
    if not stacks:
        raise TargetError(f"stack {stack_name!r} does not exist")
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs") or [] if "OutputKey" in o}


def deployed_target(stack_name: str, region: str | None = None) -> StackTarget:
    """A stack deployed by `sam deploy`: its outputs, and SigV4 with botocore's credential chain
    (environment, profile, SSO, instance role...)."""
    try:
        # AWS_REGION too: Lambda and the SAM CLI set it, boto3 reads only AWS_DEFAULT_REGION.
        session = boto3.session.Session(region_name=region or os.environ.get("AWS_REGION") or None)
    except BotoCoreError as exc:
        raise TargetError(f"AWS configuration: {exc}") from None
    if not session.region_name:
        raise TargetError("no AWS region: pass --region or set AWS_REGION / a profile's region")
    credentials = session.get_credentials()
    if credentials is None:
        raise TargetError("no AWS credentials found (environment, profile, SSO or instance role)")
    outputs = stack_outputs(session, stack_name)
    missing = [k for k in (OUTPUT_API_URL, OUTPUT_BUCKET) if not outputs.get(k)]
    if missing:
        raise TargetError(f"stack {stack_name!r} has no output {', '.join(missing)}: is it a rowcall stack?")
    return StackTarget(
        name=stack_name,
        api_url=outputs[OUTPUT_API_URL],
        bucket=outputs[OUTPUT_BUCKET],
        region=session.region_name,
        topic_arn=outputs.get(OUTPUT_TOPIC),
        auth=SigV4(credentials, session.region_name),
        session=session,
    )
