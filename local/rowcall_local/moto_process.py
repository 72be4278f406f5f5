"""moto's server in a child process of its own, so AWS emulation runs on another core."""

from __future__ import annotations

import contextlib
import logging
import os
from multiprocessing.connection import Connection
from pathlib import Path

from rowcall_local import aws_faults, iam_enforcement, moto_fidelity, profiling, request_meter
from rowcall_local.child_process import (
    SPAWN,
    detach_from_terminal_signals,
    exit_now,
    redirect_output,
    start_child,
)

log = logging.getLogger(__name__)


def _serve(
    conn: Connection, log_path: str, fault_rate: float = 0.0, fault_seed: int = 0, enforce_iam: bool = False
) -> None:
    detach_from_terminal_signals()
    redirect_output(Path(log_path))
    # moto's request recorder writes to its working directory unless told otherwise.
    os.environ.setdefault("MOTO_RECORDER_FILEPATH", str(Path(log_path).with_name("moto_recording.jsonl")))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    moto_fidelity.apply_all()
    if enforce_iam:
        iam_enforcement.install()
    aws_faults.install(fault_rate, fault_seed)
    # Outermost: every request is counted, faulted ones included; the profile sees all of them.
    request_meter.install()
    profiling.install_in_moto()
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    conn.send(server.get_host_and_port()[1])
    with contextlib.suppress(EOFError):  # EOF: the parent is gone
        conn.recv()
    profiling.dump_moto()
    # No server.stop(): it waits out werkzeug's 0.5 s poll, and the stack is going; the port closes
    # with the process.
    exit_now()


class MotoProcess:
    """Starts and stops one moto server process on 127.0.0.1."""

    def __init__(
        self, log_path: Path, fault_rate: float = 0.0, fault_seed: int = 0, enforce_iam: bool = False
    ) -> None:
        """`fault_rate`: fraction of the functions' requests answered with AWS's errors under load
        (aws_faults.py); deterministic for one `fault_seed`. `enforce_iam`: requests not signed with
        the runtime's own key are authorized against moto's IAM (iam_enforcement.py)."""
        self._log_path = log_path
        self._conn, child_conn = SPAWN.Pipe()
        self._process = SPAWN.Process(
            target=_serve,
            args=(child_conn, str(log_path), fault_rate, fault_seed, enforce_iam),
            name="moto",
            daemon=True,
        )
        self._child_conn = child_conn
        self.url = ""

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def start(self, timeout_s: float = 60.0) -> str:
        """Start the server; returns its endpoint URL."""
        start_child(self._process)
        self._child_conn.close()
        try:
            if not self._conn.poll(timeout_s):
                raise EOFError
            port = int(self._conn.recv())
        except EOFError:
            self.stop()
            raise RuntimeError(f"moto did not start within {timeout_s}s; see {self._log_path}") from None
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._process.pid is None:
            return
        with contextlib.suppress(BrokenPipeError, OSError):
            self._conn.send(None)
        self._process.join(timeout_s)
        if self._process.is_alive():
            log.warning("moto did not stop within %ss; killing it", timeout_s)
            self._process.kill()
            self._process.join(timeout_s)
        self._conn.close()
