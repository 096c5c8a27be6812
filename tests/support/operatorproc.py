"""The operator as a real process against a Kubernetes API (tests, demos).

Like :mod:`gatewaypool_local.routerproc` for the router: ``gatewaypool
operator`` is started as its Deployment would start it, pointed at a
kubeconfig, and is ready when kopf's liveness endpoint answers.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from gatewaypool_local.peers import free_port, wait_until


class OperatorProcess:
    """``gatewaypool operator`` in a subprocess, logging JSON to a file."""

    def __init__(
        self,
        log_path: Path,
        *,
        kubeconfig: Path,
        extra_args: Sequence[str] = (),
        router_image: str = "gatewaypool:test",
        command: Sequence[str] | None = None,
    ) -> None:
        self.log_path = log_path
        self.liveness_port = free_port()
        self.metrics_port = free_port()
        self._kubeconfig = kubeconfig
        self._extra = list(extra_args)
        self._router_image = router_image
        self._command = list(command) if command else [sys.executable, "-m", "gatewaypool.cli"]
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 30.0) -> None:
        """Start and wait until kopf's liveness endpoint answers."""
        env = dict(
            os.environ,
            KUBECONFIG=str(self._kubeconfig),
            GATEWAYPOOL_IMAGE=self._router_image,
        )
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [
                    *self._command,
                    "operator",
                    "--liveness",
                    f"http://127.0.0.1:{self.liveness_port}/healthz",
                    "--log-format",
                    "json",
                    "--metrics",
                    f"127.0.0.1:{self.metrics_port}",
                    *self._extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        wait_until(self._alive, timeout=timeout, what="operator liveness")

    def _alive(self) -> bool:
        if self._proc is not None and self._proc.poll() is not None:
            raise RuntimeError(f"operator exited:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1
            ) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self, *, timeout: float = 30.0) -> None:
        """SIGTERM and wait (kopf leaves its peering record on the way out)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the operator's /metrics (0 when the series does not exist yet)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return 0.0

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def count(self, text: str) -> int:
        """How often ``text`` occurs in the log so far."""
        return self.log_text().count(text)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
