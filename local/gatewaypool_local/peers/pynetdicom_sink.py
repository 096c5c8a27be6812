"""The pynetdicom sink (:mod:`gatewaypool_local.sink`) as a gateway process.

It keeps the exact bytes it receives and can answer chosen statuses.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from gatewaypool_local import sink as sink_module
from gatewaypool_local.peers.gateway import GatewayProcess, PeerTls, Received
from gatewaypool_local.peers.process import DEFAULT_START_TIMEOUT, LOOPBACK, tcp_open


class PynetdicomSink(GatewayProcess):
    """:mod:`gatewaypool_local.sink` as a process.

    Parameters
    ----------
    fail_after, status, delay, max_pdu, chunked
        Passed to the sink (see :class:`gatewaypool_local.sink.SinkConfig`).
    """

    kind = "sink"

    def __init__(
        self,
        work_dir: Path | str,
        *,
        ae_title: str = "SINK",
        port: int | None = None,
        host: str = LOOPBACK,
        fail_after: int | None = None,
        status: int | None = None,
        delay: float = 0.0,
        max_pdu: int | None = None,
        chunked: bool = False,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        tls: PeerTls | None = None,
    ) -> None:
        super().__init__(
            work_dir, ae_title=ae_title, port=port, host=host, start_timeout=start_timeout
        )
        self._tls = tls
        self._options: list[str] = []
        if tls is not None:
            self._options += ["--tls-cert", str(tls.cert), "--tls-key", str(tls.key)]
            if tls.client_ca is not None:
                self._options += ["--tls-ca", str(tls.client_ca)]
        if fail_after is not None:
            self._options += ["--fail-after", str(fail_after)]
        if status is not None:
            self._options += ["--status", f"0x{status:04X}"]
        if delay:
            self._options += ["--delay", str(delay)]
        if max_pdu is not None:
            self._options += ["--max-pdu", str(max_pdu)]
        if chunked:
            self._options.append("--chunked")

    @property
    def out_dir(self) -> Path:
        """Where instances and the index are written."""
        return self.work_dir / "received"

    @property
    def index_path(self) -> Path:
        """One JSON line per stored instance."""
        return self.out_dir / sink_module.INDEX_NAME

    def _prepare(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.work_dir / "tmp").mkdir(exist_ok=True)

    def _is_ready(self) -> bool:
        if self._tls is None:
            return super()._is_ready()
        return tcp_open(self._host, self._port)  # pynetdicom listens once TLS is set up

    def _command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "gatewaypool_local.sink",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--ae-title",
            self.ae_title,
            "--out-dir",
            str(self.out_dir),
            *self._options,
        ]

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        # The package may not be installed where the interpreter looks.
        package_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_root, env.get("PYTHONPATH", "")) if p
        )
        # --chunked spools here, next to the output, not in the shared /tmp.
        env["TMPDIR"] = str(self.work_dir / "tmp")
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def index_records(self) -> list[dict[str, Any]]:
        """Every index line, in order (duplicates included)."""
        try:
            text = self.index_path.read_text(encoding="ascii")
        except FileNotFoundError:
            return []
        # A line is written whole by one write(); a torn last line can only
        # come from a crash, and is skipped.
        records: list[dict[str, Any]] = []
        for line in text.splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def _latest(self) -> dict[str, dict[str, Any]]:
        return {r["sop_instance_uid"]: r for r in self.index_records()}

    def received_count(self) -> int:
        """Distinct SOP instances in the index."""
        return len(self._latest())

    def received(self) -> list[Received]:
        """One per SOP instance (the latest store wins, as on disk)."""
        result: list[Received] = []
        for sop, record in self._latest().items():
            result.append(
                Received(
                    sop_instance_uid=sop,
                    study_uid=record["study_uid"],
                    transfer_syntax=record["transfer_syntax"],
                    path=self.out_dir / sink_module.instance_file_name(sop),
                    offset=0,
                )
            )
        return result
