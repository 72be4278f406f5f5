"""A runs provider on loopback that answers from a script: for answers the emulator does not give."""

from __future__ import annotations

import http.server
import json
import threading


class ScriptedProvider:
    """Answers requests from a script of (status, headers, body), one per request, in order."""

    def __init__(self) -> None:
        self.script: list[tuple[int, dict[str, str], object]] = []
        # Answers by request path, used before the script: for requests made concurrently.
        self.by_path: dict[str, tuple[int, dict[str, str], object]] = {}
        self.requests: list[dict[str, object]] = []
        provider = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                self._answer(json.loads(body))

            def do_GET(self) -> None:
                self._answer(None)

            def _answer(self, body: object) -> None:
                provider.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "auth": self.headers.get("authorization"),
                        "body": body,
                    }
                )
                answer = provider.by_path.get(self.path.split("?")[0])
                status, headers, payload = answer or provider.script.pop(0)
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()


def error(code: str) -> dict[str, object]:
    return {"error": {"code": code, "message": f"{code} happened"}}
