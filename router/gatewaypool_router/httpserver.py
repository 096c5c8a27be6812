"""The router's HTTP endpoint: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

if TYPE_CHECKING:
    from gatewaypool_router.server import Router


class HealthServer:
    """``/healthz`` (the acceptor runs), ``/readyz`` (a map is loaded), ``/metrics``."""

    def __init__(self, router: Router, *, bind: str, port: int) -> None:
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
                    bucket_map = router.maps.current
                    if bucket_map is not None and router.is_alive:
                        self._send(200, f"ok map version {bucket_map.version}\n".encode())
                    else:
                        self._send(503, b"no valid bucket map loaded\n")
                elif path == "/metrics":
                    body = generate_latest(router.metrics.registry)
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
