"""A stack whose starter is killed outright leaves nothing behind (issue 18: a `make test` stopped by a
time limit left two `rowcall up` stacks with their function pools running for 50 minutes).

`rowcall up` is started the way the e2e fixtures start it (its own session, so no terminal signal
reaches it) by a launcher process; killing the launcher with SIGKILL must end `rowcall up`, moto, the
function instances and the provider emulator; and killing `rowcall up` itself with SIGKILL must end
its children. Nothing here waits a fixed time: each check polls until its deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import ROOT

pytestmark = pytest.mark.e2e

GONE_WITHIN_S = 30.0
"""The children look for their parent twice a second; `rowcall up` then stops in order (bounded)."""

LAUNCHER = textwrap.dedent(
    """
    import subprocess, sys, time
    up = subprocess.Popen(
        [sys.executable, "-m", "rowcall_local.cli", "up", "--state-dir", sys.argv[1]],
        stdout=open(sys.argv[2], "w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    print(up.pid, flush=True)
    time.sleep(3600)
    """
)


def _children(pid: int) -> set[int]:
    """Every process whose parent is `pid` (from /proc: no psutil in the runtime's dependencies)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name in parentheses may hold spaces: the fields after the last ')' are fixed.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.add(int(entry.name))
    return found


def _descendants(pid: int) -> set[int]:
    """Children, their children, ...: the function instances are the children of the fork server
    `rowcall up` starts (child_process.FORK), not of `rowcall up` itself."""
    found: set[int] = set()
    todo = _children(pid)
    while todo:
        child = todo.pop()
        if child not in found:
            found.add(child)
            todo |= _children(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def _wait_until(done: Callable[[], bool], timeout_s: float, what: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(what())
        time.sleep(0.2)


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True


def _ready(state: Path, log: Path, starter: subprocess.Popen[str]) -> dict[str, str]:
    stack_json = state / "stack.json"
    _wait_until(
        lambda: stack_json.exists() or starter.poll() is not None,
        180,
        lambda: "stack did not start: " + log.read_text()[-3000:],
    )
    assert stack_json.exists(), log.read_text()[-3000:]
    info: dict[str, str] = json.loads(stack_json.read_text())
    return info


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, dict[str, str], Path]]:
    """A launcher process, its `rowcall up`, the stack's stack.json; everything killed at the end
    whatever the test did (a failing test must not leave what it tests for)."""
    state, log = tmp_path / "state", tmp_path / "up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROWCALL_", "AWS_"))}
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(state), str(log)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert launcher.stdout is not None
    up = int(launcher.stdout.readline())
    everything: set[int] = {up}
    try:
        info = _ready(state, log, launcher)
        everything |= _descendants(up)
        yield launcher, up, info, log
    finally:
        for pid in everything | _descendants(up):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        launcher.kill()
        launcher.wait(10)


def _stack_processes(up: int) -> set[int]:
    children = _descendants(up)
    # moto, the fork server and at least one instance of each function (seven functions) are up
    # before stack.json is written.
    assert len(children) >= 9, f"`rowcall up` ({up}) has descendants {children}"
    return children


def test_killing_the_process_that_started_rowcall_up_stops_the_whole_stack(
    launched: tuple[subprocess.Popen[str], int, dict[str, str], Path],
) -> None:
    launcher, up, info, log = launched
    children = _stack_processes(up)
    assert _answers(info["aws_endpoint_url"]) and _answers(info["provider_url"])

    launcher.send_signal(signal.SIGKILL)
    launcher.wait(10)

    left = lambda: {p for p in {up, *children} if _alive(p)}  # noqa: E731
    _wait_until(
        lambda: not left(), GONE_WITHIN_S, lambda: f"still running: {left()}; " + log.read_text()[-2000:]
    )
    assert not _answers(info["aws_endpoint_url"]) and not _answers(info["provider_url"])


def test_killing_rowcall_up_itself_ends_moto_and_the_function_instances(
    launched: tuple[subprocess.Popen[str], int, dict[str, str], Path],
) -> None:
    _, up, info, _ = launched
    children = _stack_processes(up)

    os.kill(up, signal.SIGKILL)

    left = lambda: {p for p in children if _alive(p)}  # noqa: E731
    _wait_until(lambda: not left(), GONE_WITHIN_S, lambda: f"children of a dead `rowcall up` alive: {left()}")
    assert not _answers(info["aws_endpoint_url"])  # moto's port closed with its process
    assert not _answers(info["provider_url"])  # the emulator ran inside `rowcall up`
