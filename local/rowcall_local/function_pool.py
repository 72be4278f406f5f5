"""Execution environments: a pool of child processes per function, invoked one event at a time."""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import queue
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rowcall_local.child_process import FORK, start_instance
from rowcall_local.function_runtime import InstanceSpec, serve

log = logging.getLogger(__name__)

# Imports of ~13 instances at once: past 60 s on this 2-core machine at load ~40 (each took 8-9 s).
_READY_TIMEOUT_S = 180.0
_KILL_GRACE_S = 1.0  # past the function's own timeout, before its instance is killed


class PoolStopped(Exception):
    """The pool is stopping; nothing more is invoked."""


class InstanceLost(Exception):
    """An instance died or overran its timeout (and was killed)."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


@dataclass(frozen=True)
class InvocationError:
    type: str
    message: str
    traceback: str

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> InvocationError:
        trace = payload.get("stackTrace") or []
        return cls(
            type=str(payload.get("errorType", "Unknown")),
            message=str(payload.get("errorMessage", "")),
            traceback="".join(trace) if isinstance(trace, list) else str(trace),
        )


class DurationMeter:
    """Invocations of one function and their billed duration, as Lambda bills them: each
    handler's duration rounded up to the next millisecond. An instance that died or timed out
    is billed up to the function's timeout (what Lambda bills for a timeout)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.invocations = 0
        self.billed_ms = 0

    def add(self, duration_ms: float) -> None:
        with self._lock:
            self.invocations += 1
            self.billed_ms += max(1, math.ceil(duration_ms))

    def reset(self) -> None:
        with self._lock:
            self.invocations = 0
            self.billed_ms = 0

    def read(self) -> tuple[int, int]:
        with self._lock:
            return self.invocations, self.billed_ms


@dataclass(frozen=True)
class Invocation:
    """What one invocation returned: a JSON payload, or an error."""

    function_id: str
    request_id: str
    payload: Any = None
    error: InvocationError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class _Instance:
    """One execution environment: a child process serving one invocation at a time."""

    def __init__(self, spec: InstanceSpec) -> None:
        self.spec = spec
        self._conn, child_conn = FORK.Pipe()
        self._process = FORK.Process(
            target=serve, args=(child_conn, spec), name=f"fn-{spec.function_id}", daemon=True
        )
        start_instance(self._process)
        child_conn.close()

    def wait_ready(self, timeout_s: float) -> None:
        if not self._conn.poll(timeout_s):
            raise TimeoutError(f"{self.spec.function_id}: instance not ready within {timeout_s}s")
        _, init_error = self._conn.recv()
        if init_error is not None:
            error = InvocationError.from_payload(init_error)
            log.error(
                "%s: init failed (retried on each invoke): %s: %s",
                self.spec.function_id,
                error.type,
                error.message,
            )

    def invoke(self, request_id: str, event: Any) -> tuple[str, Any, float]:
        """Send one event; returns ("ok", payload) or ("error", Lambda error payload), and the
        handler's duration in ms.

        Raises InstanceLost when the instance died or timed out; it must be replaced then.
        """
        try:
            self._conn.send((request_id, event))
            answered = self._conn.poll(self.spec.timeout_s + _KILL_GRACE_S)
            if answered:
                status, payload, duration_ms = self._conn.recv()
                return status, payload, duration_ms
        except (EOFError, OSError) as exc:
            self.kill()
            raise InstanceLost(
                "Runtime.ExitError", f"Runtime exited (exit code {self._process.exitcode})"
            ) from exc
        self.kill()
        raise InstanceLost("Sandbox.Timedout", f"Task timed out after {self.spec.timeout_s}.00 seconds")

    def ask_to_stop(self) -> None:
        """The child exits after its current invocation, if any."""
        with contextlib.suppress(OSError):
            self._conn.send(None)

    def join_or_kill(self, timeout_s: float) -> None:
        self._process.join(timeout_s)
        self.kill()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process.is_alive() else None

    def crash(self) -> None:
        """SIGKILL the process mid-invocation, as a crash would; the waiting invoke sees it die."""
        if self._process.is_alive():
            self._process.kill()

    def kill(self) -> None:
        if self._process.is_alive():
            self._process.kill()
            self._process.join(5)
        self._conn.close()


class FunctionPool:
    """N execution environments of one function; `invoke` waits for an idle one."""

    def __init__(self, spec: InstanceSpec, size: int, *, crash_once_after_s: float | None = None) -> None:
        self.spec = spec
        self.size = size
        # Test-only: the first invocation still running this long is killed (a crash half way).
        self._crash_after_s = crash_once_after_s
        self._idle: queue.Queue[_Instance] = queue.Queue()
        self._all: set[_Instance] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.meter = DurationMeter()

    def start(self) -> None:
        """Spawn the instances; `wait_ready` then waits for their init."""
        with self._lock:
            self._all.update(_Instance(self.spec) for _ in range(self.size))

    def wait_ready(self, timeout_s: float = _READY_TIMEOUT_S) -> None:
        for instance in list(self._all):
            instance.wait_ready(timeout_s)
            self._idle.put(instance)

    def invoke(self, event: Any) -> Invocation:
        request_id = str(uuid.uuid4())
        instance = self._take_idle()
        crash: threading.Timer | None = None
        if self._crash_after_s is not None:
            crash = threading.Timer(self._crash_after_s, instance.crash)
            crash.daemon = True
            self._crash_after_s = None
            crash.start()
            log.warning(
                "%s: this invocation will be killed after %.1fs (test switch)",
                self.spec.function_id,
                crash.interval,
            )
        started = time.monotonic()
        try:
            status, payload, duration_ms = instance.invoke(request_id, event)
        except InstanceLost as lost:
            self.meter.add(min((time.monotonic() - started) * 1000, self.spec.timeout_s * 1000))
            self._replace(instance)
            if crash is not None:
                crash.cancel()
            error = InvocationError(type=lost.error_type, message=lost.message, traceback="")
            return Invocation(self.spec.function_id, request_id, error=error)
        if crash is not None:
            crash.cancel()
        self.meter.add(duration_ms)
        self._idle.put(instance)
        if status == "ok":
            return Invocation(self.spec.function_id, request_id, payload=payload)
        return Invocation(self.spec.function_id, request_id, error=InvocationError.from_payload(payload))

    def _take_idle(self) -> _Instance:
        while not self._stopped.is_set():
            try:
                return self._idle.get(timeout=0.2)
            except queue.Empty:
                continue
        raise PoolStopped(self.spec.function_id)

    def _replace(self, dead: _Instance) -> None:
        """Start a new instance in the background; the caller gets its error without waiting."""
        with self._lock:
            self._all.discard(dead)
            if self._stopped.is_set():
                return
            fresh = _Instance(self.spec)
            self._all.add(fresh)

        def ready() -> None:
            try:
                fresh.wait_ready(_READY_TIMEOUT_S)
            except (TimeoutError, EOFError, OSError) as exc:
                log.error("%s: replacement instance failed: %s", self.spec.function_id, exc)
                self._replace(fresh)
                return
            self._idle.put(fresh)

        threading.Thread(target=ready, name=f"replace-{self.spec.function_id}", daemon=True).start()

    def live_pids(self) -> set[int]:
        """Process ids of the instances alive now (replacements included once started)."""
        with self._lock:
            return {pid for pid in (i.pid for i in self._all) if pid is not None}

    def request_stop(self) -> None:
        """From now on `invoke` raises PoolStopped instead of waiting for an instance."""
        self._stopped.set()

    def stop(self, deadline: float) -> None:
        """Stop every instance by `deadline` (time.monotonic()); busy ones are killed then."""
        self.request_stop()
        with self._lock:
            instances = list(self._all)
            self._all.clear()
        for instance in instances:
            instance.ask_to_stop()
        for instance in instances:
            instance.join_or_kill(max(0.0, deadline - time.monotonic()))


@dataclass(frozen=True)
class InvocationSpan:
    """One invocation as the runtime saw it, wall-clock (time.time()) seconds: what a benchmark needs
    to split a latency into hops (bench/on_done_hops.py)."""

    function_id: str
    started_at: float
    ended_at: float
    sent_at: tuple[float, ...] = ()
    """SQS's SentTimestamp of each record of the event (an SQS-triggered invocation), in seconds."""


def _sent_at(event: Any) -> tuple[float, ...]:
    records = event.get("Records") if isinstance(event, dict) else None
    if not isinstance(records, list):
        return ()
    sent = (r.get("attributes", {}).get("SentTimestamp") for r in records if isinstance(r, dict))
    return tuple(int(t) / 1000 for t in sent if isinstance(t, str) and t.isdigit())


class FunctionRuntime:
    """All functions' pools; `invoke(function_id, event)` is how event sources call a function."""

    def __init__(self, pools: Mapping[str, FunctionPool]) -> None:
        self.pools = dict(pools)
        self._spans: collections.deque[InvocationSpan] | None = None

    def trace(self, keep: int = 100_000) -> None:
        """From now on, remember the last `keep` invocations' spans (off unless asked: benchmarks)."""
        self._spans = collections.deque(maxlen=keep)

    def spans(self) -> list[InvocationSpan]:
        return list(self._spans or ())

    def start(self) -> None:
        for pool in self.pools.values():
            pool.start()
        for pool in self.pools.values():
            pool.wait_ready()

    def invoke(self, function_id: str, event: Any) -> Invocation:
        started = time.time()
        result = self.pools[function_id].invoke(event)
        if self._spans is not None:
            self._spans.append(InvocationSpan(function_id, started, time.time(), _sent_at(event)))
        if result.error is not None:
            log.error(
                "%s %s failed: %s: %s\n%s",
                function_id,
                result.request_id,
                result.error.type,
                result.error.message,
                result.error.traceback.rstrip(),
            )
        return result

    def usage(self) -> dict[str, dict[str, int]]:
        """Per function: invocations, billed milliseconds and memory size, since the last reset."""
        usage = {}
        for function_id, pool in self.pools.items():
            invocations, billed_ms = pool.meter.read()
            usage[function_id] = {
                "invocations": invocations,
                "billed_ms": billed_ms,
                "memory_mb": pool.spec.memory_mb,
            }
        return usage

    def reset_usage(self) -> None:
        for pool in self.pools.values():
            pool.meter.reset()

    def stop(self, timeout_s: float = 3.0) -> None:
        deadline = time.monotonic() + timeout_s
        for pool in self.pools.values():
            pool.request_stop()
        for pool in self.pools.values():
            pool.stop(deadline)
