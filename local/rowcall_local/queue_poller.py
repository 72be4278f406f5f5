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
WAIT_TIME_S = 1  # long poll; also bounds how long stopping takes


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
        """Wait until `deadline` (time.monotonic()) for the poll loop and busy handlers to end."""
        if self._thread.is_alive():
            self._thread.join(max(0.0, deadline - time.monotonic()))
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
            if not messages:
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
