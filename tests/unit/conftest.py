"""In-process AWS (moto mock_aws) shaped by template.yaml, for the layer's unit tests."""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from moto import mock_aws

from rowcall.finishing import BatchFinisher
from rowcall.ingest import IngestLimits, Ingestor, ObjectCreated
from rowcall.ledger import Ledger
from rowcall.models import ChunkMessage
from rowcall.outbound import DestinationPolicy
from rowcall.queues import ChunkQueue, DoneQueue, FinishedRunQueue
from rowcall_local import moto_fidelity
from rowcall_local.provider_emulator import ProviderEmulator
from rowcall_local.webhook_receiver import WebhookReceiver as Receiver

from .loopback_runs import start_provider

TEMPLATE = Path(__file__).resolve().parents[2] / "template.yaml"
# The tests' on-done receivers listen on 127.0.0.1 over http, as on the local stack.
LOOPBACK_ALLOWED = DestinationPolicy(allow_loopback=True)


class _CfnLoader(yaml.SafeLoader):
    """Reads CloudFormation short-form tags (!Ref, !Sub ...) as plain data."""


_CfnLoader.add_multi_constructor("!", lambda loader, suffix, node: None)

# The in-process moto refuses what AWS refuses too (empty or unused ExpressionAttributeNames, SQS
# batches over 10, ...), as the embedded AWS of `rowcall up` does: a request AWS would refuse fails here.
moto_fidelity.refuse_what_aws_refuses()


@functools.cache
def _template() -> dict[str, Any]:
    """template.yaml, parsed once per test process: each `aws` fixture read it three times (~0.25 s
    of CPU a test, with some 300 tests using the fixture)."""
    template: dict[str, Any] = yaml.load(TEMPLATE.read_text(), Loader=_CfnLoader)
    return template


def template_resource(logical_id: str) -> dict[str, Any]:
    """A copy of the resource's Properties: a test may change what it gets."""
    resource: dict[str, Any] = copy.deepcopy(_template()["Resources"][logical_id]["Properties"])
    return resource


@dataclass
class Aws:
    s3: Any
    sqs: Any
    dynamodb: Any
    sns: Any
    bucket: str
    table: str
    chunk_queue_url: str
    done_queue_url: str
    finished_run_queue_url: str
    topic_arn: str

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.dynamodb, self.table)

    @property
    def done_queue(self) -> DoneQueue:
        return DoneQueue(self.sqs, self.done_queue_url)

    @property
    def chunk_queue(self) -> ChunkQueue:
        return ChunkQueue(self.sqs, self.chunk_queue_url)

    @property
    def finished_runs(self) -> FinishedRunQueue:
        return FinishedRunQueue(self.sqs, self.finished_run_queue_url)

    @property
    def finisher(self) -> BatchFinisher:
        return BatchFinisher(self.ledger, self.done_queue)

    def drain(self, queue_url: str) -> list[str]:
        bodies: list[str] = []
        while True:
            got = self.sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0)
            messages = got.get("Messages", [])
            if not messages:
                return bodies
            for m in messages:
                bodies.append(m["Body"])
                self.sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])


def ingest(aws: Aws, body: bytes, **meta: str) -> str:
    """Upload `body` under uploads/ and ingest it (four rows a chunk); the new batch's id."""
    put = aws.s3.put_object(Bucket=aws.bucket, Key="uploads/rows.csv", Body=body, Metadata=meta)
    batch = Ingestor(
        s3=aws.s3,
        ledger=aws.ledger,
        chunk_queue=aws.chunk_queue,
        finisher=aws.finisher,
        limits=IngestLimits(max_rows=1000, max_bytes=10**6, chunk_rows=4, default_technique_id="tech"),
        destinations=LOOPBACK_ALLOWED,
    ).ingest(ObjectCreated(bucket=aws.bucket, key="uploads/rows.csv", version_id=put["VersionId"]))
    assert batch is not None
    return batch.batch_id


def chunk_messages(aws: Aws) -> list[ChunkMessage]:
    return [ChunkMessage.model_validate_json(b) for b in aws.drain(aws.chunk_queue_url)]


@pytest.fixture
def aws() -> Iterator[Aws]:
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1"
    )
    os.environ.pop("AWS_ENDPOINT_URL", None)
    with mock_aws():
        table_props = {
            k: v
            for k, v in template_resource("Table").items()
            if k in ("AttributeDefinitions", "KeySchema", "GlobalSecondaryIndexes", "BillingMode")
        }
        dynamodb = boto3.client("dynamodb", region_name="us-east-1")
        dynamodb.create_table(TableName="rowcall-test", **table_props)
        # CreateTable takes no TTL; CloudFormation applies the template's afterwards, as here.
        ttl = template_resource("Table")["TimeToLiveSpecification"]
        dynamodb.update_time_to_live(TableName="rowcall-test", TimeToLiveSpecification=ttl)
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="rowcall-test-data")
        s3.put_bucket_versioning(Bucket="rowcall-test-data", VersioningConfiguration={"Status": "Enabled"})
        sqs = boto3.client("sqs", region_name="us-east-1")
        sns = boto3.client("sns", region_name="us-east-1")
        yield Aws(
            s3=s3,
            sqs=sqs,
            dynamodb=dynamodb,
            sns=sns,
            bucket="rowcall-test-data",
            table="rowcall-test",
            chunk_queue_url=sqs.create_queue(QueueName="chunks")["QueueUrl"],
            done_queue_url=sqs.create_queue(QueueName="done")["QueueUrl"],
            finished_run_queue_url=sqs.create_queue(
                QueueName="finished-runs.fifo",
                Attributes={
                    k: str(v).lower() if isinstance(v, bool) else str(v)
                    for k, v in template_resource("FinishedRunQueue").items()
                    if k in ("FifoQueue", "DeduplicationScope", "FifoThroughputLimit")
                },
            )["QueueUrl"],
            topic_arn=sns.create_topic(Name="on-done")["TopicArn"],
        )


@pytest.fixture
def callbacks() -> Iterator[Receiver]:
    """A webhook receiver on loopback: the callback base URL runs are started with."""
    receiver = Receiver()
    yield receiver
    receiver.close()


@pytest.fixture
def provider() -> Iterator[ProviderEmulator]:
    """The FLORA emulator on loopback, short delays, no faults (files needing a scripted provider
    or faults define their own `provider`)."""
    emulator = start_provider()
    yield emulator
    emulator.stop()
