"""Schedule -> function, as an EventBridge rule does it: one invocation per period, never two
at once (the template keeps the safety net at one concurrent execution)."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rowcall_local.function_pool import Invocation, PoolStopped
from rowcall_local.template_wiring import ScheduleTrigger

log = logging.getLogger(__name__)


def scheduled_event(rule_arn: str, region: str, account: str) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": account,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [rule_arn],
        "detail": {},
    }


class ScheduleSource:
    def __init__(
        self,
        trigger: ScheduleTrigger,
        invoke: Callable[[str, Any], Invocation],
        *,
        every_s: float,
        region: str,
        account: str,
    ) -> None:
        self.trigger = trigger
        self._invoke = invoke
        self._every_s = every_s
        self._rule_arn = f"arn:aws:events:{region}:{account}:rule/{trigger.function_id}{trigger.event_name}"
        self._region = region
        self._account = account
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"schedule-{trigger.function_id}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        self._stop.set()

    def join(self, deadline: float) -> None:
        self._thread.join(max(0.0, deadline - time.monotonic()))

    def _loop(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                result = self._invoke(
                    self.trigger.function_id, scheduled_event(self._rule_arn, self._region, self._account)
                )
            except PoolStopped:
                return
            if not result.ok:
                log.warning("%s: scheduled invocation failed", self.trigger.function_id)
