"""The real local stack, started the way users and outside suites start it: `rowcall up`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest

from rowcall_local.batch_api import BatchWatcher, is_notified, is_terminal

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class LocalStack:
    info: dict[str, Any]
    state_dir: Path

    def client(self, service: str) -> Any:
        """A client of the embedded AWS, with the stack's own (not a function's) credentials."""
        return boto3.client(
            service,  # type: ignore[call-overload]
            endpoint_url=self.info["aws_endpoint_url"],
            region_name=self.info["region"],
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    @property
    def s3(self) -> Any:
        return self.client("s3")

    @property
    def sqs(self) -> Any:
        return self.client("sqs")

    @property
    def api(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.info["api_url"],
            timeout=30,
            headers={"Authorization": f"Bearer {self.info['api_token']}"},
        )

    def provider_stats(self) -> dict[str, int]:
        stats: dict[str, int] = httpx.get(self.info["provider_url"] + "/_stats", timeout=10).json()
        return stats

    def technique_stats(self, technique_id: str) -> dict[str, Any]:
        """One technique's runs alone (contract section 5: `GET /_stats?technique_id=T`)."""
        url = self.info["provider_url"] + "/_stats"
        stats: dict[str, Any] = httpx.get(url, params={"technique_id": technique_id}, timeout=10).json()
        return stats

    def batch_for(self, key: str, timeout_s: float = 60) -> dict[str, Any]:
        with self.api as api:
            return BatchWatcher(api, poll_s=0.1).find(key, timeout_s)

    def wait_batch(
        self, batch_id: str, done: Callable[[dict[str, Any]], bool], timeout_s: float
    ) -> dict[str, Any]:
        with self.api as api:
            return BatchWatcher(api, poll_s=0.1).wait(batch_id, done, timeout_s)

    def wait_terminal(self, batch_id: str, timeout_s: float = 180) -> dict[str, Any]:
        return self.wait_batch(batch_id, is_terminal, timeout_s)

    def wait_notified(self, batch_id: str, timeout_s: float = 60) -> dict[str, Any]:
        return self.wait_batch(batch_id, is_notified, timeout_s)


@contextlib.contextmanager
def running_stack(state: Path, *flags: str) -> Iterator[LocalStack]:
    """`rowcall up` in a child process, exactly as a user runs it, until the block ends."""
    log = (state / "up.log").open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROWCALL_", "AWS_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "rowcall_local.cli", "up", "--state-dir", str(state), *flags],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    stack_json = state / "stack.json"
    deadline = time.monotonic() + 300  # the instances may take 150 s to import on a loaded machine
    while not stack_json.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise AssertionError("stack did not start: " + (state / "up.log").read_text()[-3000:])
        time.sleep(0.1)
    try:
        yield LocalStack(json.loads(stack_json.read_text()), state)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
        log.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    with running_stack(tmp_path_factory.mktemp("rowcall-state"), "--provider-delay-ms", "5:60") as started:
        yield started
