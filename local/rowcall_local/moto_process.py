"""moto's server in a child process of its own, so AWS emulation runs on another core."""

from __future__ import annotations

import logging
import time
from multiprocessing.connection import Connection
from pathlib import Path

from rowcall_local.child_process import SPAWN, detach_from_terminal_signals, redirect_output

log = logging.getLogger(__name__)


def _speed_up_sqs() -> None:
    """moto's SQS recounts every queued message through a slow clock; give it a fast one.

    Measured (facts.md): 2,000-deep batch sends drop from ~320 ms to ~17 ms.
    """
    import moto.sqs.models as sqs_models

    slow = sqs_models.unix_time_millis

    def unix_time_millis(dt: object = None) -> float:
        if dt is None:
            return time.time() * 1000.0
        return float(slow(dt))

    sqs_models.unix_time_millis = unix_time_millis


def _serve(conn: Connection, log_path: str) -> None:
    detach_from_terminal_signals()
    redirect_output(Path(log_path))
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    _speed_up_sqs()
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    conn.send(server.get_host_and_port()[1])
    try:
        conn.recv()  # a stop request, or EOF when the parent is gone
    except EOFError:
        pass
    server.stop()


class MotoProcess:
    """Starts and stops one moto server process on 127.0.0.1."""

    def __init__(self, log_path: Path) -> None:
        self._log_path = log_path
        self._conn, child_conn = SPAWN.Pipe()
        self._process = SPAWN.Process(
            target=_serve, args=(child_conn, str(log_path)), name="moto", daemon=True
        )
        self._child_conn = child_conn
        self.url = ""

    def start(self, timeout_s: float = 60.0) -> str:
        """Start the server; returns its endpoint URL."""
        self._process.start()
        self._child_conn.close()
        if not self._conn.poll(timeout_s):
            self.stop()
            raise RuntimeError(f"moto did not start within {timeout_s}s; see {self._log_path}")
        port = int(self._conn.recv())
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    def stop(self, timeout_s: float = 5.0) -> None:
        if self._process.pid is None:
            return
        try:
            self._conn.send(None)
        except (BrokenPipeError, OSError):
            pass
        self._process.join(timeout_s)
        if self._process.is_alive():
            log.warning("moto did not stop within %ss; killing it", timeout_s)
            self._process.kill()
            self._process.join(timeout_s)
        self._conn.close()
