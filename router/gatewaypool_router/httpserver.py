"""The router's HTTP endpoint: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol

from prometheus_client import CONTENT_TYPE_LATEST


class Served(Protocol):
    """What the endpoint reports on: a router process, or a supervisor of workers."""

    @property
    def is_alive(self) -> bool:
        """Whether associations are being accepted."""

    @property
    def ready_version(self) -> int | None:
        """The version of the map in use while ready, else None."""

    def metrics_text(self) -> bytes:
        """The Prometheus exposition of everything this replica counts."""


class HealthServer:
    """``/healthz`` (the acceptor runs), ``/readyz`` (a map is loaded), ``/metrics``."""

    def __init__(self, router: Served, *, bind: str, port: int) -> None:
        self._router = router
        handler = self._handler_class()
        self._server = ThreadingHTTPServer((bind, port), handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        # A short poll interval keeps shutdown() prompt: it waits for one poll.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="http", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        router = self._router

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    alive = router.is_alive
                    self._send(200 if alive else 503, b"ok\n" if alive else b"acceptor down\n")
                elif path == "/readyz":
                    version = router.ready_version
                    if version is not None:
                        self._send(200, f"ok map version {version}\n".encode())
                    else:
                        self._send(503, b"no valid bucket map loaded\n")
                elif path == "/metrics":
                    body = router.metrics_text()
                    self._send(200, body, content_type=CONTENT_TYPE_LATEST)
                else:
                    self._send(404, b"not found\n")

            def _send(
                self, code: int, body: bytes, *, content_type: str = "text/plain; charset=utf-8"
            ) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                """Probes every few seconds are not worth a log line."""

        return Handler
