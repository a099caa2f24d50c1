"""
An OTLP/HTTP collector on loopback for C{--tracing}: it answers every
export 200 and drops it, so that the bench measures what tracing costs
ccserver (its spans made, batched, encoded and sent) and nothing else.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        self.server.exports += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Collector:
    """
    The collector, listening on a free loopback port from its start until
    L{stop}.
    """

    def __init__(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.exports = 0  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1/traces"

    @property
    def exports(self) -> int:
        count: int = self._server.exports  # type: ignore[attr-defined]
        return count

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
