"""The router's HTTP endpoint: liveness, readiness, Prometheus metrics, the study record."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Protocol
from urllib.parse import unquote

from prometheus_client import CONTENT_TYPE_LATEST

from gatewaypool.bucketmap import dump_map
from gatewaypool.contract import study_uid_problem
from gatewaypool.studyrecord import StudyEntry, dump_entry
from gatewaypool_router.mapsource import MapHolder

#: ``GET /studies/{StudyInstanceUID}``: the router's record of that study.
STUDIES_PATH = "/studies/"


class Served(Protocol):
    """What the endpoint reports on: a router process, or a supervisor of workers."""

    @property
    def maps(self) -> MapHolder:
        """The map in use, served at ``/map``."""

    @property
    def is_alive(self) -> bool:
        """Whether associations are being accepted."""

    @property
    def ready_version(self) -> int | None:
        """The version of the map in use while ready, else None."""

    def metrics_text(self) -> bytes:
        """The Prometheus exposition of everything this replica counts."""

    def study(self, study_uid: str) -> StudyEntry:
        """This replica's record of `study_uid` (not seen: no gateways)."""


class HealthServer:
    """``/healthz``, ``/readyz``, ``/metrics``, ``/map`` (the map in use), ``/studies/UID``.

    A study not seen is answered 200 with ``"seen": false``, not 404: through
    the API server's pod proxy a 404 would read as a missing pod.
    """

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
                elif path == "/map":
                    current = router.maps.current
                    if current is None:
                        self._send(503, b"no valid bucket map loaded\n")
                    else:
                        body = dump_map(current).encode()
                        self._send(200, body, content_type="application/json")
                elif path.startswith(STUDIES_PATH):
                    self._study(unquote(path[len(STUDIES_PATH) :]))
                else:
                    self._send(404, b"not found\n")

            def _study(self, study_uid: str) -> None:
                problem = study_uid_problem(study_uid)
                if problem is not None:
                    message = f"{study_uid[:80]!r} is not a StudyInstanceUID: {problem}"
                    self._json(400, {"error": message})
                else:
                    self._json(200, dump_entry(router.study(study_uid)))

            def _json(self, code: int, data: object) -> None:
                body = (json.dumps(data, indent=1) + "\n").encode()
                self._send(code, body, content_type="application/json")

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
