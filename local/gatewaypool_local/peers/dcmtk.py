"""DCMTK: ``storescp`` as a gateway, ``storescu`` and ``echoscu`` as senders.

DCMTK programs (and Orthanc, which uses DCMTK's network code) are started
with ``TCP_NODELAY=1`` in their environment (:data:`DCMTK_ENV`): without it
DCMTK leaves Nagle's algorithm on and each C-STORE waits for a delayed ACK,
about 80 ms per instance on loopback (5 instances: 0.48 s instead of 0.04 s).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pydicom.filereader import dcmread

from gatewaypool_local.peers.gateway import GatewayProcess, PeerTls, Received
from gatewaypool_local.peers.process import DEFAULT_START_TIMEOUT, LOOPBACK, tcp_open
from gatewaypool_local.synth import dataset_offset

#: Added to the environment of every DCMTK-based process (see module doc).
DCMTK_ENV: Mapping[str, str] = {"TCP_NODELAY": "1"}

#: Largest receive PDU DCMTK tools accept (``--max-pdu`` range 4096..131072).
DCMTK_MAX_PDU = 131072


def dcmtk_env() -> dict[str, str]:
    """This process's environment with :data:`DCMTK_ENV` added."""
    env = dict(os.environ)
    env.update(DCMTK_ENV)
    return env


def echoscu(
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str = "ECHOSCU",
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    """Run DCMTK ``echoscu`` once; output captured, return code not checked."""
    cmd = ["echoscu", "-aet", calling_ae, "-aec", called_ae, host, str(port)]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=dcmtk_env(), check=False
    )


def storescu(
    host: str,
    port: int,
    files: Iterable[Path | str],
    *,
    calling_ae: str = "STORESCU",
    called_ae: str = "ANY-SCP",
    extra_args: Sequence[str] = (),
    timeout: float = 600.0,
) -> subprocess.CompletedProcess[str]:
    """Send ``files`` with DCMTK ``storescu``, on one association.

    Proposes only the SOP classes the files need (``--required``) and offers
    DCMTK's largest receive PDU. Output is captured; the return code is not
    checked (a test may expect a failure).

    Notes
    -----
    ``storescu`` decodes each file and re-encodes it for the network; it does
    not send file bytes verbatim:

    - uncompressed files go in the transfer syntax negotiated first, explicit
      VR little endian by default: an implicit VR or big endian file arrives
      converted (pass ``-xi`` / ``-xb`` to keep it);
    - compressed transfer syntaxes are proposed only when asked for
      (``-xr`` for RLE, ``-xd`` for deflated, ``-xs`` for JPEG lossless...);
    - sequences and items are re-encoded with explicit lengths.

    Explicit VR little endian files with explicit lengths (what
    :mod:`gatewaypool_local.synth` writes) pass unchanged. For verbatim
    sending of anything else use :func:`gatewaypool_local.scu.send_files`.
    """
    cmd = [
        "storescu",
        "--required",
        "--max-pdu",
        str(DCMTK_MAX_PDU),
        "-aet",
        calling_ae,
        "-aec",
        called_ae,
        *extra_args,
        host,
        str(port),
        *(str(f) for f in files),
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=dcmtk_env(), check=False
    )


class StoreSCP(GatewayProcess):
    """DCMTK ``storescp`` writing every instance exactly as received.

    Flags: ``--bit-preserving`` (the dataset is streamed to the file as it
    arrives, never decoded and re-encoded), ``--accept-all`` (every transfer
    syntax DCMTK knows) and ``--promiscuous`` (unknown SOP classes too),
    ``--max-pdu`` (`max_pdu`, default 131072, DCMTK's largest),
    ``--disable-host-lookup``, files named ``<modality>.<SOP UID>.dcm`` in
    ``<work_dir>/received``. Single process by default: one association at
    a time, the others wait; with `fork`, ``--fork`` serves each association
    in a child process, as a production gateway serves concurrent senders.

    Because the file is written while the data arrives, a file may be
    incomplete; :meth:`received` leaves out any file the process or its
    children still have open (read from ``/proc/<pid>/fd``). After :meth:`kill`, a file being
    received stays truncated, as with a real crash.
    """

    kind = "storescp"

    def __init__(
        self,
        work_dir: Path | str,
        *,
        ae_title: str = "STORESCP",
        port: int | None = None,
        host: str = LOOPBACK,
        extra_args: Sequence[str] = (),
        max_pdu: int = DCMTK_MAX_PDU,
        fork: bool = False,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        tls: PeerTls | None = None,
    ) -> None:
        super().__init__(
            work_dir, ae_title=ae_title, port=port, host=host, start_timeout=start_timeout
        )
        self._extra_args = list(extra_args)
        self._tls = tls
        if tls is not None:
            # DCMTK's default profile is BCP 195 (non-downgrading); without a
            # client CA, callers need no certificate.
            self._extra_args += ["+tls", str(tls.key), str(tls.cert)]
            if tls.client_ca is not None:
                self._extra_args += ["+cf", str(tls.client_ca)]
            else:
                self._extra_args.append("--ignore-peer-cert")
        self._max_pdu = max_pdu
        self._fork = fork

    @property
    def out_dir(self) -> Path:
        """Where received files are written."""
        return self.work_dir / "received"

    def _prepare(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)

    def _is_ready(self) -> bool:
        if self._tls is None:
            return super()._is_ready()
        return tcp_open(self._host, self._port)  # DCMTK listens once TLS is set up

    def _environment(self) -> dict[str, str]:
        return dcmtk_env()

    def _command(self) -> list[str]:
        return [
            "storescp",
            "--verbose",
            "--aetitle",
            self.ae_title,
            "--output-directory",
            str(self.out_dir),
            "--bit-preserving",
            "--accept-all",
            "--promiscuous",
            "--max-pdu",
            str(self._max_pdu),
            "--disable-host-lookup",
            "--filename-extension",
            ".dcm",
            *(["--fork"] if self._fork else []),
            *self._extra_args,
            str(self.port),
        ]

    def _open_files(self) -> set[str]:
        """Paths the storescp process has open right now."""
        pid = self.pid
        if pid is None or not self.is_running():
            return set()
        opened: set[str] = set()
        for process in [pid, *(_children(pid) if self._fork else [])]:
            try:
                entries = list(Path(f"/proc/{process}/fd").iterdir())
            except OSError:
                continue
            for entry in entries:
                try:
                    opened.add(os.readlink(entry))
                except OSError:
                    continue
        return opened

    def _complete_files(self) -> list[Path]:
        # List first, then look at open files: a file listed and not open
        # afterwards is complete (storescp never reopens a finished file).
        listed = sorted(self.out_dir.glob("*.dcm"))
        opened = self._open_files()
        return [p for p in listed if str(p) not in opened]

    def received_count(self) -> int:
        """Number of complete files in the output folder."""
        return len(self._complete_files())

    def received(self) -> list[Received]:
        """Complete files, read back (file meta stripped for the bytes)."""
        result: list[Received] = []
        for path in self._complete_files():
            ds = dcmread(
                path,
                stop_before_pixels=True,
                specific_tags=["StudyInstanceUID", "SOPInstanceUID"],
            )
            result.append(
                Received(
                    sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
                    study_uid=str(ds.get("StudyInstanceUID", "")),
                    transfer_syntax=str(ds.file_meta.TransferSyntaxUID),
                    path=path,
                    offset=dataset_offset(path),
                )
            )
        return result


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (storescp --fork serves each association in one)."""
    found: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(pid):
            found.append(int(stat.parent.name))
    return found
