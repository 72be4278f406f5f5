"""`--crash-after-write FUNCTION:TEXT` (test only): kill a function's instance right after a
DynamoDB write whose request names TEXT succeeded, once per stack.

A crash at a point in a function's conversation with AWS, not at a moment: `--crash-once` kills
whatever is running after N seconds, which cannot aim at a window of a few milliseconds such as
the one between a worker taking slots and sending its creates. Installed in the instance process
(botocore's own event hooks, among the handlers every session starts with, before the handler's
clients exist), so the handler's code is the code deployed; the marker file makes it once across
instances.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from botocore.handlers import BUILTIN_HANDLERS

WRITES = ("PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem")
_FLAG = "rowcall_crash_point"


def install(text: str, marker: Path) -> None:
    def before(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        body = params.get("body") or b""
        if isinstance(body, bytes):
            body = body.decode("utf-8", "replace")
        context[_FLAG] = text in str(body)

    def after(http_response: Any, context: dict[str, Any], **_: Any) -> None:
        if not context.get(_FLAG) or http_response.status_code != 200:
            return
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return  # crashed once already
        os.kill(os.getpid(), signal.SIGKILL)

    for operation in WRITES:
        BUILTIN_HANDLERS.append((f"before-call.dynamodb.{operation}", before))
        BUILTIN_HANDLERS.append((f"after-call.dynamodb.{operation}", after))
