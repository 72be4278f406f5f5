"""Typed boto3 clients for the embedded AWS endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3.session

if TYPE_CHECKING:
    from mypy_boto3_cloudformation import CloudFormationClient
    from mypy_boto3_lambda import LambdaClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_ssm import SSMClient

ACCESS_KEY_ID = "testing"
SECRET_ACCESS_KEY = "testing"


@dataclass(frozen=True)
class AwsEndpoint:
    """Where the embedded AWS answers. Clients are thread-safe; sessions are not, so one each."""

    url: str
    region: str = "us-east-1"

    def _client(self, service: str) -> Any:
        session = boto3.session.Session(ACCESS_KEY_ID, SECRET_ACCESS_KEY, region_name=self.region)
        return session.client(service, endpoint_url=self.url)  # type: ignore[call-overload]

    def cloudformation(self) -> CloudFormationClient:
        client: CloudFormationClient = self._client("cloudformation")
        return client

    def dynamodb(self) -> Any:
        return self._client("dynamodb")

    def lambda_(self) -> LambdaClient:
        client: LambdaClient = self._client("lambda")
        return client

    def s3(self) -> S3Client:
        client: S3Client = self._client("s3")
        return client

    def sqs(self) -> SQSClient:
        client: SQSClient = self._client("sqs")
        return client

    def ssm(self) -> SSMClient:
        client: SSMClient = self._client("ssm")
        return client

    def sts(self) -> Any:
        return self._client("sts")

    def environment(self) -> dict[str, str]:
        """What a process needs in its environment to talk to this endpoint with boto3."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }
