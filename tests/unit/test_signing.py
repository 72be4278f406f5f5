"""Our Standard Webhooks signatures agree with the reference library in both directions."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from standardwebhooks import Webhook

from rowcall.signing import WebhookSigner

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = b'{"type":"batch.completed","data":{"batch_id":"b_1"}}'


def test_what_we_sign_the_reference_library_verifies() -> None:
    headers = WebhookSigner(SECRET).headers("msg_b_1_1", int(time.time()), BODY)
    assert Webhook(SECRET).verify(BODY, headers)["type"] == "batch.completed"


def test_what_the_reference_library_signs_we_verify_and_tampering_fails() -> None:
    now = datetime.now(tz=UTC)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(SECRET).sign("msg_1", now, BODY.decode()),
    }
    signer = WebhookSigner(SECRET)
    assert signer.verify(headers, BODY)
    assert not signer.verify({**headers, "webhook-id": "msg_2"}, BODY)
    assert not signer.verify(headers, BODY + b" ")
    assert not signer.verify(headers, BODY, now=now.timestamp() + 301)
