"""FLORA's official TypeScript SDK, pinned, against the provider emulator and our signature code.

The SDK is installed from the npm registry into a temporary folder once per session; without
node/npm or the registry these tests fail rather than skip, since they are what holds the
emulator to the real provider. The Node side is tests/flora_sdk/conformance.mjs.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rowcall.flora_signature import SIGNATURE_HEADER, TOLERANCE_S, verify_signature
from rowcall_local.provider_emulator import (
    ProviderEmulator,
    ProviderFaults,
    WebhookDelivery,
    WebhookEvent,
    WebhookRunData,
)
from rowcall_local.technique_catalog import Technique, TechniqueField

from .callback_receiver import CallbackReceiver

SDK_PACKAGE = "@flora-ai/flora"
SDK_VERSION = "0.11.0"
SCRIPT = Path(__file__).resolve().parents[1] / "flora_sdk" / "conformance.mjs"
NPM_TIMEOUT_S = 300
NODE_TIMEOUT_S = 120
API_KEY = "sdk-test-provider-key"
# Real secrets are "whsec_" + base64, so '+', '/' and '=' are part of the key bytes too.
SECRET = "whsec_" + base64.b64encode(bytes(range(200, 232))).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
THIRD_SECRET = "whsec_" + base64.b64encode(bytes(range(100, 132))).decode()
TECHNIQUE = "tech-sdk"
RUNS = 23
PAGE_LIMIT = 10


@pytest.fixture(scope="session")
def flora_sdk(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with `@flora-ai/flora` installed by npm, as a user of the SDK would have it."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.fail("node and npm are needed to check the emulator against FLORA's SDK")
    prefix = tmp_path_factory.mktemp("flora-sdk")
    command = [
        npm,
        "install",
        "--prefix",
        str(prefix),
        "--no-audit",
        "--no-fund",
        f"{SDK_PACKAGE}@{SDK_VERSION}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=NPM_TIMEOUT_S, check=False)
    if result.returncode != 0:
        pytest.fail(f"npm install {SDK_PACKAGE}@{SDK_VERSION} failed:\n{result.stdout}\n{result.stderr}")
    return prefix


def run_node(sdk: Path, folder: Path, mode: str, config: dict[str, Any]) -> dict[str, Any]:
    """Runs one mode of conformance.mjs; its config (raw deliveries included) goes in a JSON file."""
    config_file = folder / f"{mode}.json"
    config_file.write_text(json.dumps({**config, "sdk_prefix": str(sdk), "sdk_version": SDK_VERSION}))
    node = shutil.which("node")
    assert node is not None
    result = subprocess.run(
        [node, str(SCRIPT), mode, str(config_file)],
        capture_output=True,
        text=True,
        timeout=NODE_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, f"node {mode} failed:\n{result.stderr}"
    output: dict[str, Any] = json.loads(result.stdout)
    assert output["sdk_version"] == SDK_VERSION
    return output


@pytest.fixture
def receiver() -> Iterator[CallbackReceiver]:
    server = CallbackReceiver()
    yield server
    server.stop()


def test_the_sdk_creates_retrieves_lists_and_unwraps_the_emulators_webhooks(
    flora_sdk: Path, tmp_path: Path, receiver: CallbackReceiver
) -> None:
    faults = ProviderFaults(delay_ms=(0, 300), fail_rate=0.3, seed=5)
    with ProviderEmulator(API_KEY, faults, webhook_secret=SECRET, allow_loopback_callbacks=True) as emulator:
        api = run_node(
            flora_sdk,
            tmp_path,
            "api",
            {
                "base_url": emulator.url,
                "api_key": API_KEY,
                "technique_id": TECHNIQUE,
                "callback_url": receiver.url,
                "runs": RUNS,
                "page_limit": PAGE_LIMIT,
                "key_prefix": "sdk",
            },
        )
        assert api["problems"] == []
        created: list[str] = api["created"]
        assert len(set(created)) == RUNS
        assert api["listed"] == created[::-1]
        stats = emulator.stats()
        # One create refused as a duplicate, one GET of an unknown run, and the list in pages.
        assert (stats["creates"], stats["duplicate_creates"], stats["unique_idempotency_keys"]) == (
            RUNS + 1,
            1,
            RUNS,
        )
        assert (stats["gets"], stats["lists"]) == (RUNS + 1, -(-RUNS // PAGE_LIMIT))

        deliveries = receiver.wait_for(RUNS)
        hooks = run_node(
            flora_sdk,
            tmp_path,
            "webhooks",
            {
                "secret": SECRET,
                "tolerance_s": TOLERANCE_S,
                "deliveries": [
                    {"body_b64": base64.b64encode(d.body).decode(), "headers": d.headers} for d in deliveries
                ],
            },
        )
        assert hooks["problems"] == []
        events = hooks["events"]
        assert sorted(e["data"]["run_id"] for e in events) == sorted(created)
        assert {e["type"] for e in events} == {"run.completed", "run.failed"}
        auth = {"Authorization": f"Bearer {API_KEY}"}
        for event in events:
            run = httpx.get(
                f"{emulator.url}/techniques/{TECHNIQUE}/runs/{event['data']['run_id']}", headers=auth
            )
            assert run.json()["status"] == event["data"]["status"]


def test_signed_vectors_are_judged_alike_by_the_sdk_and_by_rowcall(flora_sdk: Path, tmp_path: Path) -> None:
    event = WebhookEvent(
        id="whd_0123456789abcdef01234567",
        type="run.failed",
        created_at=time.time_ns() // 1_000_000,
        data=WebhookRunData(
            run_id="run_0123456789abcdef0123",
            workspace_id="ws_vectors",
            status="failed",
            error_code="generation_failed",
            error_message='quotes " and unicode é survive',
        ),
    )
    delivery = WebhookDelivery.of("https://hooks.example.com/cb", event)
    now = int(time.time())
    body = delivery.body
    # name: (signing secrets, signed at, body received, secret the receiver holds, verdict)
    cases: dict[str, tuple[list[str], int, bytes, str, bool]] = {
        "valid": ([SECRET], now, body, SECRET, True),
        "wrong_secret": ([SECRET], now, body, OTHER_SECRET, False),
        "secret_without_its_prefix": ([SECRET], now, body, SECRET.removeprefix("whsec_"), False),
        "stale_timestamp": ([SECRET], now - TOLERANCE_S - 120, body, SECRET, False),
        "future_timestamp": ([SECRET], now + TOLERANCE_S + 120, body, SECRET, False),
        "two_v1_one_matches": ([OTHER_SECRET, SECRET], now, body, SECRET, True),
        "two_v1_none_matches": ([OTHER_SECRET, THIRD_SECRET], now, body, SECRET, False),
        "tampered_body": (
            [SECRET],
            now,
            body.replace(b"generation_failed", b"generation_passed"),
            SECRET,
            False,
        ),
    }
    vectors = []
    for name, (signers, signed_at, received, secret, _) in cases.items():
        headers = delivery.signed_headers(signers, signed_at)
        vectors.append(
            {
                "name": name,
                "body_b64": base64.b64encode(received).decode(),
                "headers": headers,
                "secret": secret,
            }
        )
    expected = {name: case[-1] for name, case in cases.items()}

    sdk = run_node(flora_sdk, tmp_path, "vectors", {"vectors": vectors})
    ours = {
        v["name"]: verify_signature(
            v["headers"][SIGNATURE_HEADER], base64.b64decode(v["body_b64"]), [v["secret"]]
        )
        for v in vectors
    }

    assert sdk["problems"] == []
    assert sdk["verdicts"] == expected
    assert ours == expected


CATALOG = (
    Technique(
        technique_id="portrait",
        name="Portrait",
        description="A portrait from a photo",
        inputs=[
            TechniqueField(id="prompt", name="Prompt", type="text"),
            TechniqueField(id="photo", name="Photo", type="imageUrl", description="the subject"),
            TechniqueField(id="style", name="Style", type="text", optional=True),
        ],
        outputs=[TechniqueField(id="output_0", name="Image", type="imageUrl")],
        run_cost=0.25,
    ),
)


def test_the_sdk_retrieves_the_emulators_techniques_as_it_types_them(flora_sdk: Path, tmp_path: Path) -> None:
    faults = ProviderFaults(techniques=CATALOG, run_cost_usd=0.07)
    with ProviderEmulator(API_KEY, faults, webhook_secret=SECRET, allow_loopback_callbacks=True) as emulator:
        answer = run_node(
            flora_sdk,
            tmp_path,
            "techniques",
            {
                "base_url": emulator.url,
                "api_key": API_KEY,
                "technique_ids": ["portrait", "any-open-technique"],
                "missing_id": "missing-portrait",
                "validated_id": "portrait",
                "bad_inputs": [
                    {"id": "prompt", "type": "imageUrl", "value": "https://x.example/a.png"},
                    {"id": "mood", "type": "text", "value": "calm"},
                ],
            },
        )
        stats = emulator.stats()
    assert answer["problems"] == []
    retrieved = answer["retrieved"]
    assert retrieved["portrait"] == CATALOG[0].wire()
    assert (
        retrieved["any-open-technique"]["inputs"] == []
        and retrieved["any-open-technique"]["run_cost"] == 0.07
    )
    assert retrieved["validation_fields"] == {
        "prompt": "must be of type text, not imageUrl",
        "mood": "not an input of technique portrait",
        "photo": "is required",
    }
    assert (stats["technique_gets"], stats["creates"]) == (3, 1)
