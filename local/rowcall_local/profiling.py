"""`ROWCALL_PROFILE_DIR`: where the local stack's time goes, profiled inside its own processes.

Off unless the variable names a directory. Then the moto server process profiles each request it
answers on the request's thread (CPU time of that thread, so waiting for the GIL or for a lock is
not counted as work) and writes `moto.pstats` on `POST /_rowcall/profile/dump` and when it stops; read it with
`python -m pstats DIR/moto.pstats` (`sort tottime`, `stats 30`).
"""

from __future__ import annotations

import cProfile
import os
import pstats
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ENV = "ROWCALL_PROFILE_DIR"
DUMP_PATH = "/_rowcall/profile/dump"

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _Collected:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.profiles: list[cProfile.Profile] = []
        self.merged: pstats.Stats | None = None

    def dump(self, path: Path) -> None:
        """Everything profiled so far (each dump adds to the last), in one file."""
        with self.lock:
            profiles, self.profiles = self.profiles, []
            for profile in profiles:
                if self.merged is None:
                    self.merged = pstats.Stats(profile)
                else:
                    self.merged.add(profile)
            if self.merged is not None:
                self.merged.dump_stats(str(path))


_COLLECTED = _Collected()


def directory() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def install_in_moto() -> None:
    """Profile each request moto's server answers (when ROWCALL_PROFILE_DIR is set)."""
    if directory() is None:
        return
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication

    call = DomainDispatcherApplication.__call__

    def __call__(self: Any, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:  # noqa: N807
        if environ.get("PATH_INFO") == DUMP_PATH:
            dump_moto()
            start_response("200 OK", [("Content-Length", "0")])
            return []
        profile = cProfile.Profile(time.thread_time)
        profile.enable()
        try:
            return list(call(self, environ, start_response))
        finally:
            profile.disable()
            with _COLLECTED.lock:
                _COLLECTED.profiles.append(profile)

    setattr(DomainDispatcherApplication, "__call__", __call__)  # noqa: B010 - moto's WSGI entry


def dump_moto() -> None:
    found = directory()
    if found is not None:
        found.mkdir(parents=True, exist_ok=True)
        _COLLECTED.dump(found / "moto.pstats")


class InvocationProfile:
    """Inside a function instance: each invocation profiled (wall time of the handler's thread, so
    time spent waiting on AWS or the provider shows where it waits), written every 20 invocations
    and at the end to `DIR/<function>-<pid>.pstats`."""

    def __init__(self, function_id: str, directory: Path) -> None:
        self._path = directory / f"{function_id}-{os.getpid()}.pstats"
        self._profile = cProfile.Profile()
        self._count = 0

    def __enter__(self) -> InvocationProfile:
        self._profile.enable()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._profile.disable()
        self._count += 1
        if self._count % 20 == 0:
            self.dump()

    def dump(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._profile.dump_stats(str(self._path))
