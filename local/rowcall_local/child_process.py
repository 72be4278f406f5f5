"""Set-up shared by the runtime's child processes (moto, function instances)."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import NoReturn

SPAWN = multiprocessing.get_context("spawn")
"""Children start from a clean interpreter: nothing of the parent's threads or sockets leaks in."""

FORK = multiprocessing.get_context("forkserver")
"""Function instances: forked from a fork server (itself started clean, as by spawn) that imported
their common packages once (`instance_preload`). Spawned, each of a stack's 11-13 instances imported
boto3, pydantic and Powertools itself, ~0.8 s of CPU apiece: 10 s of every stack's start on this
2-core machine, and the test suite starts some thirty stacks."""

INSTANCE_PRELOAD = ["rowcall_local.instance_preload"]
_PRELOAD_SET = threading.Lock()

_MAIN_LOCK = threading.Lock()
_MISSING = object()


def start_instance(process: BaseProcess) -> None:
    """Start a FORK child (the fork server starts, with its preload, on the first one)."""
    with _PRELOAD_SET:
        FORK.set_forkserver_preload(INSTANCE_PRELOAD)
    start_child(process)


def start_child(process: BaseProcess) -> None:
    """Start a spawned child without re-running the parent's `__main__` in it.

    spawn re-imports the parent's main script in every child (the `rowcall` CLI, pytest, ...);
    these children need none of it, and on 2 cores each copy costs about a second of imports.
    """
    main = sys.modules["__main__"]
    with _MAIN_LOCK:
        saved = {name: main.__dict__.get(name, _MISSING) for name in ("__file__", "__spec__")}
        main.__dict__.pop("__file__", None)
        main.__dict__["__spec__"] = None
        try:
            process.start()
        finally:
            for name, value in saved.items():
                if value is _MISSING:
                    main.__dict__.pop(name, None)
                else:
                    main.__dict__[name] = value


PARENT_POLL_S = 0.5
"""How often a process looks for the one that started it: the bound on how long it outlives it."""


def when_parent_gone(act: Callable[[], None], parent_pid: int | None = None) -> threading.Thread:
    """Call `act` once the process `parent_pid` (default: this one's parent now) is gone.

    A parent killed outright (SIGKILL, a CI time limit, the OOM killer) stops nothing in order, and
    its children are re-parented and keep running: a test run killed this way once left two stacks
    with their function pools running for 50 minutes (issue 18). PR_SET_PDEATHSIG would fire when
    the *thread* that started the child ends, and the pools start replacement instances from
    short-lived threads; the parent's pid, looked at twice a second, has no such trap.
    """
    parent = os.getppid() if parent_pid is None else parent_pid
    first_parent = os.getppid()

    def alive() -> bool:
        if first_parent == parent:
            return os.getppid() == parent
        # A fork server's child (FORK): its parent is the fork server, which exits once `parent`
        # is gone (its pipe from it closes); or `parent` died before this one started.
        return os.getppid() == first_parent and _exists(parent)

    def watch() -> None:
        while alive():
            time.sleep(PARENT_POLL_S)
        act()

    thread = threading.Thread(target=watch, name="exit-with-parent", daemon=True)
    thread.start()
    return thread


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def detach_from_terminal_signals() -> None:
    """Leave Ctrl-C to the parent: it stops its children in order, within bounded time. And end
    with the parent when it is killed without stopping them (nothing is left to report to)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The spawning process's pid as multiprocessing recorded it: right even if it died while this
    # one was starting (then os.getppid() is already init's).
    started_by = multiprocessing.parent_process()
    when_parent_gone(lambda: os._exit(1), started_by.pid if started_by is not None else None)


def exit_now() -> NoReturn:
    """End a child that has nothing left to hand back: its output flushed, no interpreter teardown.

    Tearing down an interpreter that imported boto3, Powertools and pydantic took 0.3-1.3 s per
    process on this machine under load, and a stack stop waits for all of its processes (3 s of
    every e2e test file's teardown, measured): Lambda does not run it either.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0)


def redirect_output(log_path: Path) -> None:
    """Send this process's stdout and stderr (file descriptors too) to `log_path`, appending."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    # Replacing the streams for the life of the process: a context manager would close them.
    sys.stdout = open(1, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
