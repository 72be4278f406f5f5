"""Tests against a deployed stack, SAM's convention: `AWS_SAM_STACK_NAME` names it; without it they skip.

Environment: `AWS_SAM_STACK_NAME` (required), the usual AWS credentials and region (`AWS_REGION` or
`AWS_DEFAULT_REGION` or the profile's), and optionally `ROWCALL_IT_TECHNIQUE_ID`: the provider technique
each row runs (default: the stack's `DefaultTechniqueId`; the provider is whatever the stack's
`ProviderBaseUrl` names, and its run webhooks come back to the stack's API).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from rowcall_client.target import StackTarget, deployed_target

STACK_ENV = "AWS_SAM_STACK_NAME"


@pytest.fixture(scope="session")
def deployed() -> StackTarget:
    name = os.environ.get(STACK_ENV)
    if not name:
        pytest.skip(
            f"{STACK_ENV} is not set: these tests run against a deployed stack (README, Deploying to AWS)"
        )
    return deployed_target(name, os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION"))


class OnDoneQueue:
    """A temporary SQS queue subscribed to the stack's on-done topic, deleted afterwards."""

    def __init__(self, target: StackTarget) -> None:
        assert target.session is not None and target.topic_arn
        self._sqs: Any = target.session.client("sqs")
        self._sns: Any = target.session.client("sns")
        self.url = self._sqs.create_queue(QueueName=f"rowcall-it-{uuid.uuid4().hex[:12]}")["QueueUrl"]
        arn = self._sqs.get_queue_attributes(QueueUrl=self.url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": target.topic_arn}},
                }
            ],
        }
        self._sqs.set_queue_attributes(QueueUrl=self.url, Attributes={"Policy": json.dumps(policy)})
        self._subscription = self._sns.subscribe(
            TopicArn=target.topic_arn,
            Protocol="sqs",
            Endpoint=arn,
            Attributes={"RawMessageDelivery": "true"},
            ReturnSubscriptionArn=True,
        )["SubscriptionArn"]

    def notification(self, batch_id: str, timeout_s: float) -> dict[str, Any]:
        """The on-done message of `batch_id` (others are left alone: they are other batches')."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for message in self._sqs.receive_message(
                QueueUrl=self.url, MaxNumberOfMessages=10, WaitTimeSeconds=10
            ).get("Messages", []):
                body: dict[str, Any] = json.loads(message["Body"])
                if (body.get("data") or {}).get("batch_id") == batch_id:
                    return body
        raise AssertionError(f"no on-done message for {batch_id} within {timeout_s}s")

    def close(self) -> None:
        self._sns.unsubscribe(SubscriptionArn=self._subscription)
        self._sqs.delete_queue(QueueUrl=self.url)


@pytest.fixture(scope="session")
def on_done(deployed: StackTarget) -> Iterator[OnDoneQueue]:
    queue = OnDoneQueue(deployed)
    try:
        yield queue
    finally:
        queue.close()
