"""The router as a real process on loopback, for the demo, benchmarks and tests.

Tests never import the router into their own process: they start the
``gatewaypool router`` command exactly as a Deployment would, wait for its
``/readyz``, read its ``/metrics`` and its JSON log lines.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from gatewaypool_local.peers.process import LOOPBACK, ManagedProcess, free_port, wait_until


class RouterProcess(ManagedProcess):
    """``gatewaypool router`` in a subprocess, logging JSON to ``<work_dir>/router.log``."""

    kind = "router"

    def __init__(
        self,
        work_dir: Path,
        *,
        gateways: Sequence[str] = (),
        map_file: Path | None = None,
        ae_title: str = "GATEWAYPOOL",
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        workers: int | None = 1,
    ) -> None:
        """Prepare (not start) a router.

        Parameters
        ----------
        workers
            ``--workers``: 1 (one process, as most tests and the demo want,
            whatever the machine's cores), more for a supervisor and its
            workers, or None for the router's own default (the CPUs it may use).
        """
        super().__init__(work_dir, start_timeout=20.0, stop_timeout=30.0)
        self.ae_title = ae_title
        self.host = LOOPBACK
        self.port = free_port()
        self.http_port = free_port()
        self._gateways = list(gateways)
        # It runs in its work folder: a relative path would be read from there.
        self._map_file = map_file.resolve() if map_file is not None else None
        self._extra = list(extra_args)
        self._env = env
        self.workers = workers
        self._ready_path = "/readyz"

    def __repr__(self) -> str:
        return f"RouterProcess({self.ae_title}@{self.host}:{self.port})"

    def _command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "gatewaypool.cli",
            "router",
            "--bind",
            LOOPBACK,
            "--port",
            str(self.port),
            "--http-bind",
            LOOPBACK,
            "--http-port",
            str(self.http_port),
            "--aet",
            self.ae_title,
            "--log-format",
            "json",
        ]
        if self.workers is not None:
            cmd += ["--workers", str(self.workers)]
        if self._map_file is not None:
            cmd += ["--map", str(self._map_file)]
        for gateway in self._gateways:
            cmd += ["--gateway", gateway]
        return cmd + self._extra

    def start(self, *, timeout: float | None = None, wait_ready: bool = True) -> None:
        """Start and wait until ``/readyz`` (or with ``wait_ready=False``, ``/healthz``) is 200."""
        self._ready_path = "/readyz" if wait_ready else "/healthz"
        super().start(timeout=timeout)

    def _environment(self) -> dict[str, str]:
        return dict(os.environ if self._env is None else self._env)

    def _listens_on(self) -> Sequence[tuple[str, int]]:
        return [(self.host, self.port), (LOOPBACK, self.http_port)]

    def _is_ready(self) -> bool:
        return self.http_status(self._ready_path) == 200

    def ready(self) -> bool:
        return self.http_status("/readyz") == 200

    def http_status(self, path: str) -> int | None:
        try:
            with urllib.request.urlopen(
                f"http://{LOOPBACK}:{self.http_port}{path}", timeout=2
            ) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except OSError:
            return None

    def http_text(self, path: str) -> str:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.http_port}{path}", timeout=5) as r:
            return str(r.read().decode())

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Scrape ``/metrics``: {(sample name, sorted labels): value}."""
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(self.http_text("/metrics")):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        """One sample's value (0 when the labelled series does not exist yet)."""
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)

    def log_records(self) -> list[dict[str, Any]]:
        """Every JSON log line written so far."""
        records = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return records

    def events(self, name: str) -> list[dict[str, Any]]:
        return [record for record in self.log_records() if record.get("event") == name]

    def wait_events(
        self, name: str, count: int = 1, *, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """The `name` log lines once there are at least `count`.

        The router logs how an association ended after it answered the
        sender (an A-RELEASE-RP goes out first), so a sender that has
        finished may be a moment ahead of the line.
        """
        wait_until(
            lambda: len(self.events(name)) >= count,
            timeout=timeout,
            what=f"{count} {name} log line(s)",
        )
        return self.events(name)

    def peak_rss_bytes(self) -> int:
        """VmHWM of the live process: its peak resident memory so far."""
        if self.pid is None:
            return 0
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        return 0
