"""The on-done URL is checked again at delivery: DNS may say something else than at upload."""

from __future__ import annotations

from collections.abc import Sequence

from rowcall.ingest import IngestLimits, Ingestor, ObjectCreated
from rowcall.models import DoneMessage
from rowcall.ondone import OnDoneDelivery
from rowcall.outbound import DestinationPolicy, webhook_client
from rowcall.signing import WebhookSigner
from rowcall_local.webhook_receiver import WebhookReceiver

from .conftest import LOOPBACK_ALLOWED, Aws

WEBHOOK_SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Dns:
    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table

    def __call__(self, host: str, port: int) -> Sequence[str]:
        if host not in self.table:
            raise OSError(f"{host}: Name or service not known")
        return self.table[host]


def delivery(aws: Aws, policy: DestinationPolicy) -> OnDoneDelivery:
    return OnDoneDelivery(
        s3=aws.s3,
        sns=aws.sns,
        ledger=aws.ledger,
        done_queue=aws.done_queue,
        http=webhook_client(policy, timeout_s=5),
        signer=WebhookSigner(WEBHOOK_SECRET),
        topic_arn=aws.topic_arn,
        retry_schedule_s=(1, 1),
    )


def finished(
    aws: Aws, on_done_url: str, policy: DestinationPolicy = LOOPBACK_ALLOWED
) -> tuple[str, DoneMessage]:
    """A header-only upload, checked by `policy`: the batch completes at once and asks for its on-done."""
    put = aws.s3.put_object(
        Bucket=aws.bucket,
        Key="uploads/hooked.csv",
        Body=b"sku,prompt\n",
        Metadata={"on-done-url": on_done_url},
    )
    batch = Ingestor(
        s3=aws.s3,
        ledger=aws.ledger,
        chunk_queue=aws.chunk_queue,
        finisher=aws.finisher,
        limits=IngestLimits(max_rows=10, max_bytes=10**6, chunk_rows=4, default_technique_id="tech"),
        destinations=policy,
    ).ingest(ObjectCreated(bucket=aws.bucket, key="uploads/hooked.csv", version_id=put["VersionId"]))
    assert batch is not None and batch.spec.on_done_url == on_done_url, "refused at upload"
    (body,) = aws.drain(aws.done_queue_url)
    return batch.batch_id, DoneMessage.model_validate_json(body)


def test_a_name_that_now_resolves_to_a_forbidden_address_is_not_sent_to_and_not_retried(aws: Aws) -> None:
    hook = WebhookReceiver()
    try:
        port = hook.url.rsplit(":", 1)[1]
        dns = Dns({"hooks.test": ["127.0.0.1"]})
        policy = DestinationPolicy(allow_loopback=True, resolver=dns)
        # Fine when uploaded (a loopback receiver, which this configuration allows)...
        batch_id, message = finished(aws, f"http://hooks.test:{port}/done", policy)
        # ...but by delivery time the name points at the metadata service.
        dns.table["hooks.test"] = ["169.254.169.254"]
        result = delivery(aws, policy).deliver(message)
        assert (result.status, result.attempts) == ("failed", 1)
        assert "on-done-url: host hooks.test resolves to 169.254.169.254" in result.detail
        assert "cloud instance metadata" in result.detail
        assert hook.got == []
        assert aws.drain(aws.done_queue_url) == []  # no retry scheduled
        batch = aws.ledger.batches.get(batch_id)
        assert batch is not None and (batch.notification.status, batch.notification.attempts) == ("failed", 1)
        assert batch.notification.sns_published and batch.notification.results_written
    finally:
        hook.close()


def test_a_name_that_does_not_resolve_at_delivery_is_retried(aws: Aws) -> None:
    batch_id, message = finished(aws, "https://not-yet.test/done")
    result = delivery(aws, DestinationPolicy(resolver=Dns({}))).deliver(message)
    assert (result.status, result.attempts, result.detail) == ("retrying", 1, "ConnectError")
    batch = aws.ledger.batches.get(batch_id)
    assert batch is not None and batch.notification.status == "retrying"


def test_a_loopback_receiver_gets_its_on_done_where_configuration_allows_loopback(aws: Aws) -> None:
    hook = WebhookReceiver()
    try:
        _, message = finished(aws, hook.url + "/done")
        assert delivery(aws, DestinationPolicy(allow_loopback=True)).deliver(message).status == "delivered"
        assert len(hook.got) == 1
    finally:
        hook.close()


def test_without_that_configuration_a_loopback_url_is_refused_at_delivery_too(aws: Aws) -> None:
    hook = WebhookReceiver()
    try:
        _, message = finished(aws, hook.url + "/done")  # accepted by the tests' loopback-allowing ingest
        result = delivery(aws, DestinationPolicy()).deliver(message)
        assert (result.status, result.detail) == ("failed", "on-done-url: must be https, not http")
        assert hook.got == []
    finally:
        hook.close()


class _SnsFailingOnce:
    """The stack's SNS, except that the first publish fails as SNS does under load."""

    def __init__(self, sns: object) -> None:
        self._sns = sns
        self.failures_left = 1

    def publish(self, **kwargs: object) -> object:
        if self.failures_left:
            self.failures_left -= 1
            raise RuntimeError("InternalError: SNS 500")
        return self._sns.publish(**kwargs)  # type: ignore[attr-defined]


class _RecordingDoneQueue:
    def __init__(self) -> None:
        self.sent: list[tuple[DoneMessage, int]] = []

    def send(self, message: DoneMessage, delay_seconds: int = 0) -> None:
        self.sent.append((message, delay_seconds))


def test_a_delivery_failing_after_its_claim_hands_itself_back_at_once_not_after_its_lease(aws: Aws) -> None:
    hook = WebhookReceiver()
    try:
        batch_id, message = finished(aws, hook.url + "/done")
        queue = _RecordingDoneQueue()
        sns = _SnsFailingOnce(aws.sns)
        on_done = OnDoneDelivery(
            s3=aws.s3,
            sns=sns,  # type: ignore[arg-type]
            ledger=aws.ledger,
            done_queue=queue,  # type: ignore[arg-type]
            http=webhook_client(DestinationPolicy(allow_loopback=True), timeout_s=5),
            signer=WebhookSigner(WEBHOOK_SECRET),
            topic_arn=aws.topic_arn,
        )
        assert on_done.deliver(message).status == "requeued"
        ((requeued, delay),) = queue.sent
        assert (requeued.attempt, requeued.requeued, delay) == (0, 1, 5)
        batch = aws.ledger.batches.get(batch_id)
        assert batch is not None and batch.notification.results_written
        assert not batch.notification.sns_published and hook.got == []
        # The requeued message claims at once: the failed delivery's lease was given back.
        assert on_done.deliver(requeued).status == "delivered"
        assert len(hook.got) == 1
        # The original message, redelivered by SQS later, finds the finish delivered.
        assert on_done.deliver(message).status == "not_claimed"
        assert len(hook.got) == 1
    finally:
        hook.close()
