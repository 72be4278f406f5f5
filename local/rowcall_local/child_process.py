"""Set-up shared by the runtime's child processes (moto, function instances)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import os
import signal
import sys
from pathlib import Path

SPAWN = multiprocessing.get_context("spawn")
"""Children start from a clean interpreter: nothing of the parent's threads or sockets leaks in."""


def detach_from_terminal_signals() -> None:
    """Leave Ctrl-C to the parent: it stops its children in order, within bounded time."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def redirect_output(log_path: Path) -> None:
    """Send this process's stdout and stderr (file descriptors too) to `log_path`, appending."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
