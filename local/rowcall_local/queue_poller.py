"""Long-polls one SQS queue and hands each received batch to a handler, a bounded number at once."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import MessageTypeDef

log = logging.getLogger(__name__)

BatchHandler = Callable[[Sequence["MessageTypeDef"]], None]
# Lambda's pollers long-poll for 20 s (the SQS maximum): an idle queue costs 3 receives a minute
# per poller, not 60 (bench/cost_model.py prices the same). A receive returns as soon as a message
# arrives, so this is no latency. Stopping does not wait for it (see `join`).
WAIT_TIME_S = 20


class QueuePoller:
    """What Lambda's pollers do for a queue: receive, hand over, never more than `concurrency` busy."""

    def __init__(
        self,
        name: str,
        sqs: SQSClient,
        queue_url: str,
        max_messages: int,
        concurrency: int,
        handle: BatchHandler,
    ) -> None:
        self.name = name
        self._sqs = sqs
        self._queue_url = queue_url
        self._max_messages = max(1, min(max_messages, 10))  # ReceiveMessage's own limit
        self._slots = threading.Semaphore(concurrency)
        self._handle = handle
        self._stop = threading.Event()
        self._executor = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix=name)
        self._busy: set[concurrent.futures.Future[None]] = set()
        self._thread = threading.Thread(target=self._loop, name=f"poll-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        self._stop.set()

    def join(self, deadline: float) -> None:
        """Wait until `deadline` (time.monotonic()) for busy handlers to end. The poll loop is not
        waited for: it may sit in a long poll for up to WAIT_TIME_S, ends when it returns (or when
        the embedded AWS it asks is gone) and hands nothing over once stopping."""
        concurrent.futures.wait(list(self._busy), timeout=max(0.0, deadline - time.monotonic()))
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._slots.acquire(timeout=0.2):
                continue
            try:
                messages = self._sqs.receive_message(
                    QueueUrl=self._queue_url,
                    MaxNumberOfMessages=self._max_messages,
                    WaitTimeSeconds=WAIT_TIME_S,
                    AttributeNames=["All"],
                    MessageAttributeNames=["All"],
                ).get("Messages", [])
            except Exception as exc:
                self._slots.release()
                if not self._stop.is_set():
                    log.warning("%s: receive failed: %s", self.name, exc)
                    self._stop.wait(1.0)
                continue
            if not messages or self._stop.is_set():
                # Received while stopping: left to come back after their visibility timeout,
                # as Lambda leaves a batch it did not process.
                self._slots.release()
                continue
            future = self._executor.submit(self._run, messages)
            self._busy.add(future)
            future.add_done_callback(self._busy.discard)

    def _run(self, messages: Sequence[MessageTypeDef]) -> None:
        try:
            self._handle(messages)
        except Exception:
            log.exception("%s: handling a batch failed", self.name)
        finally:
            self._slots.release()
