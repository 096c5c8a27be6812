"""Real DICOM gateways on loopback, and the senders that feed them.

The router is only as trustworthy as the peers it is tested against, so these
are real, independent programs run as processes:

- :class:`StoreSCP` — DCMTK ``storescp`` in bit-preserving mode;
- :class:`Orthanc` — a real PACS, configured in a temporary folder;
- :class:`PynetdicomSink` — :mod:`gatewaypool_local.sink`, which keeps the
  exact received bytes and can answer chosen statuses;
- :class:`DicomRsStoreSCP` — dicom-rs ``dicom-storescp`` (Rust), a third
  network implementation, shared with neither DCMTK nor pynetdicom.

All of them implement :class:`GatewayPeer`: start, stop, crash (``kill``), restart on
the same port, and list what they received with the dataset bytes, so tests
can compare them byte for byte with what was sent. Starting waits for the
peer to answer a C-ECHO (and, for Orthanc, its REST API) with a deadline; no
fixed sleeps. Each process writes its output to a log file in its work dir.

Senders: :func:`storescu` (DCMTK, an independent implementation),
:func:`gatewaypool_local.scu.send_files` (pynetdicom, which reports every
instance's status), :func:`dicom_rs_storescu` (dicom-rs) and :func:`gdcmscu`
(GDCM, C-ECHO and C-STORE).

DCMTK programs (``storescp``, ``storescu``, ``echoscu``, and Orthanc, which
uses DCMTK's network code) are started with ``TCP_NODELAY=1`` in their
environment: without it DCMTK leaves Nagle's algorithm on and each C-STORE
waits for a delayed ACK, about 80 ms per instance on loopback (5 instances:
0.48 s instead of 0.04 s).
"""

from __future__ import annotations

import abc
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Protocol, Self, runtime_checkable

from pydicom.filereader import dcmread

from gatewaypool_local import scu
from gatewaypool_local import sink as sink_module
from gatewaypool_local.synth import dataset_offset

__all__ = [
    "DCMTK_ENV",
    "DICOM_RS_ENV",
    "LOOPBACK",
    "DicomRsStoreResult",
    "DicomRsStoreSCP",
    "GatewayPeer",
    "GdcmScuResult",
    "Orthanc",
    "PeerError",
    "PeerTls",
    "PynetdicomSink",
    "Received",
    "StoreSCP",
    "dicom_rs_program",
    "dicom_rs_storescu",
    "echo",
    "echoscu",
    "free_port",
    "gdcmscu",
    "parse_dicom_rs_storescu",
    "parse_gdcmscu",
    "storescu",
    "wait_until",
]

LOGGER = logging.getLogger("gatewaypool_local.peers")

LOOPBACK = "127.0.0.1"

#: Added to the environment of every DCMTK-based process (see module doc).
DCMTK_ENV: Mapping[str, str] = {"TCP_NODELAY": "1"}

#: Largest receive PDU DCMTK tools accept (``--max-pdu`` range 4096..131072).
DCMTK_MAX_PDU = 131072

_DEFAULT_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 10.0
_POLL_INTERVAL = 0.02
_LOG_TAIL_LINES = 40
_CHUNK = 8 * 1024 * 1024
_AE_TITLE_MAX = 16


class PeerError(RuntimeError):
    """A gateway process could not be started, or exited when it should not."""


# --------------------------------------------------------------------------
# Small helpers


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that was free a moment ago (the OS picked it).

    The socket is closed before returning, so another process could take the
    port first; on a test machine that is rare enough.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = _POLL_INTERVAL,
) -> None:
    """Poll ``predicate`` until it is true, or raise :class:`TimeoutError`.

    A condition with a deadline instead of a fixed sleep: fast when the
    condition is met early, and a clear message naming ``what`` when not.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def _tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: a port whose old connections sit in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def echo(
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str = "GWP-ECHO",
    timeout: float = 5.0,
) -> int | None:
    """Send one C-ECHO with pynetdicom; return its status, or None if no answer.

    Used for readiness: a listening socket is not yet a DICOM peer that
    negotiates associations.
    """
    try:
        with scu.open_association(
            host, port, calling_ae=calling_ae, called_ae=called_ae, timeout=timeout
        ) as assoc:
            return scu.verify(assoc)
    except scu.PynetdicomSendError:
        return None


def _dcmtk_env() -> dict[str, str]:
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
        cmd, capture_output=True, text=True, timeout=timeout, env=_dcmtk_env(), check=False
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
        cmd, capture_output=True, text=True, timeout=timeout, env=_dcmtk_env(), check=False
    )


# --------------------------------------------------------------------------
# What a gateway received


@dataclass(frozen=True)
class Received:
    """One instance a gateway holds.

    The dataset bytes are read only when asked for (``dataset``), since a
    gateway may hold gigabytes.

    Attributes
    ----------
    sop_instance_uid : str
        SOPInstanceUID.
    study_uid : str
        StudyInstanceUID.
    transfer_syntax : str
        Transfer syntax the instance was received in.
    path : Path or None
        File holding the dataset from byte ``offset`` on, when the gateway
        keeps one we can read directly.
    offset : int
        Where the dataset starts in ``path`` (after the file meta, if any).
    fetch : callable or None
        Returns the whole Part-10 file when there is no ``path`` (Orthanc,
        over its REST API).
    """

    sop_instance_uid: str
    study_uid: str
    transfer_syntax: str
    path: Path | None = None
    offset: int = 0
    fetch: Callable[[], bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def dataset(self) -> bytes:
        """The exact dataset bytes the gateway holds (no file meta)."""
        if self.path is not None:
            with self.path.open("rb") as fp:
                fp.seek(self.offset)
                return fp.read()
        if self.fetch is None:
            raise PeerError(f"no way to read {self.sop_instance_uid}")
        return _strip_file_meta(self.fetch())

    def dataset_sha256(self) -> str:
        """SHA-256 of :attr:`dataset`, streamed from disk when possible."""
        digest = hashlib.sha256()
        if self.path is None:
            digest.update(self.dataset)
            return digest.hexdigest()
        with self.path.open("rb") as fp:
            fp.seek(self.offset)
            while chunk := fp.read(_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()


def _strip_file_meta(part10: bytes) -> bytes:
    return part10[dataset_offset(part10) :]


# --------------------------------------------------------------------------
# The common interface


@runtime_checkable
class GatewayPeer(Protocol):
    """A DICOM Storage SCP process on loopback that a test can inspect."""

    @property
    def ae_title(self) -> str:
        """AE title the gateway answers to."""
        ...

    @property
    def host(self) -> str:
        """Address it listens on (loopback)."""
        ...

    @property
    def port(self) -> int:
        """DICOM port; the same across restarts."""
        ...

    @property
    def log_path(self) -> Path:
        """File that collects the process's stdout and stderr."""
        ...

    @property
    def bit_preserving(self) -> bool:
        """Whether it keeps every dataset's bytes exactly as received.

        When False (Orthanc) it decodes and re-encodes, which changes some
        datasets (see :class:`Orthanc`): compare bytes only for data it keeps.
        """
        ...

    def is_running(self) -> bool:
        """Whether the process is alive."""
        ...

    def start(self) -> None:
        """Start the process and return once it answers C-ECHO."""
        ...

    def stop(self) -> None:
        """Stop gracefully (SIGTERM), forcefully after a timeout."""
        ...

    def kill(self) -> None:
        """SIGKILL: simulate a crash."""
        ...

    def restart(self) -> None:
        """Stop if running, then start again on the same port."""
        ...

    def received(self) -> list[Received]:
        """Every complete instance held, one per SOPInstanceUID."""
        ...

    def received_count(self) -> int:
        """Number of complete instances held (cheaper than ``received``)."""
        ...

    def wait_for_count(self, n: int, timeout: float = 30.0) -> list[Received]:
        """Wait until at least ``n`` instances are held; return them."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@dataclass(frozen=True)
class PeerTls:
    """DICOM over TLS for a gateway peer: its certificate chain and key (PEM), and
    with `client_ca`, the CA its callers' certificates must verify against."""

    cert: Path
    key: Path
    client_ca: Path | None = None


class _ProcessGateway(abc.ABC):
    """Process management shared by the three gateways."""

    #: Short name, used for the log file and messages.
    kind = "gateway"
    #: See :attr:`GatewayPeer.bit_preserving`.
    _BIT_PRESERVING = True

    def __init__(
        self,
        work_dir: Path | str,
        *,
        ae_title: str,
        port: int | None = None,
        host: str = LOOPBACK,
        start_timeout: float = _DEFAULT_START_TIMEOUT,
    ) -> None:
        if not 0 < len(ae_title) <= _AE_TITLE_MAX:
            raise ValueError(f"AE title {ae_title!r} must be 1..{_AE_TITLE_MAX} characters")
        self._work_dir = Path(work_dir).resolve()
        self._work_dir.mkdir(parents=True, exist_ok=True)
        self._ae_title = ae_title
        self._host = host
        self._port = port if port is not None else free_port(host)
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- identity -----------------------------------------------------------

    @property
    def ae_title(self) -> str:
        """AE title the gateway answers to."""
        return self._ae_title

    @property
    def host(self) -> str:
        """Address it listens on."""
        return self._host

    @property
    def port(self) -> int:
        """DICOM port; kept across restarts."""
        return self._port

    @property
    def bit_preserving(self) -> bool:
        """Whether it keeps every dataset's bytes exactly as received."""
        return self._BIT_PRESERVING

    @property
    def work_dir(self) -> Path:
        """Folder holding the gateway's files and log."""
        return self._work_dir

    @property
    def log_path(self) -> Path:
        """The process's stdout and stderr, appended across restarts."""
        return self._work_dir / f"{self.kind}.log"

    @property
    def pid(self) -> int | None:
        """Process id while running."""
        return self._process.pid if self._process is not None else None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._ae_title}@{self._host}:{self._port})"

    # -- subclass hooks ------------------------------------------------------

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The command line to start the process."""

    def _environment(self) -> dict[str, str]:
        return _dcmtk_env()

    def _prepare(self) -> None:  # noqa: B027 - optional hook
        """Create folders and files the process needs before it starts."""

    def _is_ready(self) -> bool:
        if not _tcp_open(self._host, self._port):
            return False
        return echo(self._host, self._port, called_ae=self._ae_title, timeout=2.0) == 0

    @abc.abstractmethod
    def received(self) -> list[Received]:
        """Every complete instance held, one per SOPInstanceUID."""

    @abc.abstractmethod
    def received_count(self) -> int:
        """Number of complete instances held."""

    # -- lifecycle -------------------------------------------------------------

    def is_running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the process; return when it answers, raise if it does not."""
        if self.is_running():
            raise PeerError(f"{self!r} is already running")
        executable = self._command()[0]
        if shutil.which(executable) is None:
            raise PeerError(
                f"{executable} not found: install it (./dev.sh installs dcmtk and orthanc)"
            )
        if not _port_free(self._host, self._port):
            # Checked first: readiness is a C-ECHO on the port, which another
            # process listening there would answer.
            raise PeerError(f"{self!r}: port {self._port} is in use")
        self._prepare()
        self._log = self.log_path.open("ab")
        self._log.write(f"=== {time.strftime('%H:%M:%S')} starting {self!r}\n".encode())
        self._log.flush()
        began = time.monotonic()
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self._work_dir,
            env=self._environment(),
            start_new_session=True,
        )
        try:
            wait_until(
                self._ready_or_dead,
                timeout=self._start_timeout,
                what=f"{self!r} ready (log: {self.log_path})",
            )
        except TimeoutError as exc:
            self.kill()
            raise PeerError(f"{exc}\n{self.log_tail()}") from exc
        if not self.is_running():
            code = self._process.returncode
            self._close_log()
            raise PeerError(f"{self!r} exited with code {code} while starting\n{self.log_tail()}")
        LOGGER.info("%r ready in %.2f s", self, time.monotonic() - began)

    def _ready_or_dead(self) -> bool:
        return not self.is_running() or self._is_ready()

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                LOGGER.warning("%r ignored SIGTERM; killing it", self)
                process.kill()
                process.wait()
        self._close_log()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no cleanup, partial files stay."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self._close_log()

    def restart(self) -> None:
        """Stop (if running) and start again on the same port."""
        self.stop()
        self.start()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last lines of {self.log_path} ---\n{tail}"

    def wait_for_count(self, n: int, timeout: float = 30.0) -> list[Received]:
        """Poll until at least ``n`` instances are held; return them all."""
        try:
            wait_until(
                lambda: self.received_count() >= n,
                timeout=timeout,
                what=f"{self!r} holding {n} instances (has {self.received_count()})",
            )
        except TimeoutError as exc:
            raise TimeoutError(
                f"{self!r}: {self.received_count()} of {n} instances after {timeout:g} s "
                f"(log: {self.log_path})"
            ) from exc
        return self.received()

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


# --------------------------------------------------------------------------
# DCMTK storescp


class StoreSCP(_ProcessGateway):
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
        start_timeout: float = _DEFAULT_START_TIMEOUT,
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
        return _tcp_open(self._host, self._port)  # DCMTK listens once TLS is set up

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


# --------------------------------------------------------------------------
# Orthanc


class Orthanc(_ProcessGateway):
    """Orthanc with its configuration, storage and index in ``work_dir``.

    The DICOM server accepts every transfer syntax and unknown SOP classes,
    does not check the called AE title, and offers 128 kB PDUs; the REST API
    on ``http_port`` refuses non-loopback clients and needs no login.
    Storage compression is off, so the stored attachment is the DICOM file.
    Orthanc 1.10 has no option to bind to loopback only: both ports listen on
    all interfaces, which is why remote REST access is refused.

    Orthanc is not bit-preserving: it decodes each received dataset and
    serializes it again with DCMTK. Measured with Orthanc 1.10.1:

    - sequences and items of undefined length are stored with explicit
      lengths (a different byte stream, the same dataset);
    - a deflated dataset is inflated and deflated again at another
      compression level (same content once inflated, other bytes);
    - everything else tried came through byte for byte: explicit and implicit
      VR little endian, explicit VR big endian, RLE Lossless, explicit-length
      sequences (Enhanced CT functional groups), group length elements,
      private and UN elements, trailing padding, and a 1 GiB multi-frame
      instance.

    So compare bytes through Orthanc only for data without undefined lengths
    and not deflated, which includes everything :mod:`gatewaypool_local.synth`
    writes in its default transfer syntax. ``storescp --bit-preserving`` and
    the sink keep all of the above byte for byte.
    """

    kind = "orthanc"
    _BIT_PRESERVING = False

    def __init__(
        self,
        work_dir: Path | str,
        *,
        ae_title: str = "ORTHANC",
        port: int | None = None,
        http_port: int | None = None,
        host: str = LOOPBACK,
        executable: str | None = None,
        extra_config: Mapping[str, Any] | None = None,
        start_timeout: float = _DEFAULT_START_TIMEOUT,
    ) -> None:
        super().__init__(
            work_dir, ae_title=ae_title, port=port, host=host, start_timeout=start_timeout
        )
        self._http_port = http_port if http_port is not None else free_port(host)
        self._executable = executable or shutil.which("Orthanc") or "/usr/sbin/Orthanc"
        self._extra_config = dict(extra_config or {})
        # Never through an HTTP proxy from the environment: it is loopback.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def http_port(self) -> int:
        """Port of the REST API."""
        return self._http_port

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://{self.host}:{self._http_port}"

    @property
    def config_path(self) -> Path:
        """The generated configuration file."""
        return self.work_dir / "config.json"

    def config(self) -> dict[str, Any]:
        """The configuration Orthanc is started with."""
        config: dict[str, Any] = {
            "Name": f"gatewaypool-{self.ae_title}",
            "StorageDirectory": str(self.work_dir / "storage"),
            "IndexDirectory": str(self.work_dir / "index"),
            "StorageCompression": False,
            "MaximumStorageSize": 0,
            "MaximumPatientCount": 0,
            "LuaScripts": [],
            "Plugins": [],
            "ConcurrentJobs": 1,
            "SaveJobs": False,
            "HttpServerEnabled": True,
            "HttpPort": self._http_port,
            "HttpDescribeErrors": True,
            "HttpCompressionEnabled": False,
            "HttpThreadsCount": 8,
            "OrthancExplorerEnabled": False,
            "WebDavEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "SslEnabled": False,
            "DicomServerEnabled": True,
            "DicomAet": self.ae_title,
            "DicomPort": self.port,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomModalities": {},
            "OrthancPeers": {},
            "AcceptedTransferSyntaxes": ["1.2.840.10008.1.*"],
            "UnknownSopClassAccepted": True,
            "DicomScpTimeout": 60,
            "DicomThreadsCount": 4,
            "MaximumPduLength": DCMTK_MAX_PDU,
            "StorageAccessOnFind": "Never",
            "OverwriteInstances": True,
            "DeidentifyLogs": True,
        }
        config.update(self._extra_config)
        return config

    def _prepare(self) -> None:
        self.config_path.write_text(json.dumps(self.config(), indent=2))

    def _command(self) -> list[str]:
        return [self._executable, str(self.config_path)]

    def _is_ready(self) -> bool:
        try:
            self.rest("/system")
        except (OSError, PeerError):
            return False
        return super()._is_ready()

    def rest_bytes(self, path: str, *, timeout: float = 60.0) -> bytes:
        """GET ``path`` from the REST API and return the body."""
        try:
            with self._opener.open(self.url + path, timeout=timeout) as response:
                body: bytes = response.read()
                return body
        except urllib.error.HTTPError as exc:
            raise PeerError(f"{self!r}: GET {path} -> HTTP {exc.code}") from exc

    def rest(self, path: str, *, timeout: float = 60.0) -> Any:
        """GET ``path`` from the REST API and decode the JSON answer."""
        return json.loads(self.rest_bytes(path, timeout=timeout))

    def received_count(self) -> int:
        """``CountInstances`` from ``/statistics``."""
        return int(self.rest("/statistics")["CountInstances"])

    def storage_path(self, file_uuid: str) -> Path:
        """Where Orthanc's filesystem storage keeps attachment ``file_uuid``.

        ``<StorageDirectory>/<uuid[0:2]>/<uuid[2:4]>/<uuid>``; with storage
        compression off (as configured here) that file is the DICOM file.
        """
        return self.work_dir / "storage" / file_uuid[0:2] / file_uuid[2:4] / file_uuid

    def received(self) -> list[Received]:
        """All instances, with study UIDs and transfer syntaxes.

        Three bulk requests (studies, series, instances) plus one metadata
        request per instance for its transfer syntax. The bytes are read from
        Orthanc's storage file when it is where :meth:`storage_path` says
        (so a 1 GiB instance is hashed without loading it), else fetched from
        ``/instances/{id}/file`` when asked for.
        """
        studies = {
            study["ID"]: study["MainDicomTags"].get("StudyInstanceUID", "")
            for study in self.rest("/studies?expand")
        }
        series_study = {
            series["ID"]: studies.get(series["ParentStudy"], "")
            for series in self.rest("/series?expand")
        }
        result: list[Received] = []
        for instance in self.rest("/instances?expand"):
            orthanc_id = instance["ID"]
            metadata = self.rest(f"/instances/{orthanc_id}/metadata?expand")
            stored = self.storage_path(instance.get("FileUuid", "none"))
            on_disk = stored.is_file() and stored.stat().st_size == instance.get("FileSize")
            result.append(
                Received(
                    sop_instance_uid=instance["MainDicomTags"].get("SOPInstanceUID", ""),
                    study_uid=series_study.get(instance["ParentSeries"], ""),
                    transfer_syntax=metadata.get("TransferSyntax", ""),
                    path=stored if on_disk else None,
                    offset=dataset_offset(stored) if on_disk else 0,
                    fetch=None if on_disk else self._fetcher(orthanc_id),
                )
            )
        return result

    def _fetcher(self, orthanc_id: str) -> Callable[[], bytes]:
        def fetch() -> bytes:
            return self.rest_bytes(f"/instances/{orthanc_id}/file")

        return fetch


# --------------------------------------------------------------------------
# pynetdicom sink


class PynetdicomSink(_ProcessGateway):
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
        start_timeout: float = _DEFAULT_START_TIMEOUT,
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
        return _tcp_open(self._host, self._port)  # pynetdicom listens once TLS is set up

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
        package_root = str(Path(__file__).resolve().parent.parent)
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


# --------------------------------------------------------------------------
# dicom-rs and GDCM: network code shared with neither DCMTK nor pynetdicom

#: Folder holding the dicom-rs programs (``./dev.sh`` builds them there from
#: crates.io); without it they are looked up on ``PATH``.
DICOM_RS_ENV = "GATEWAYPOOL_DICOM_RS"


def dicom_rs_program(name: str) -> str:
    """The path of dicom-rs program ``name`` (``dicom-storescp``, ``dicom-storescu``)."""
    folder = os.environ.get(DICOM_RS_ENV)
    return str(Path(folder) / name) if folder else name


class DicomRsStoreSCP(StoreSCP):
    """dicom-rs ``dicom-storescp`` (Rust) with its defaults, as a site runs it.

    It accepts the storage SOP classes of its own table (``promiscuous``:
    any), in every transfer syntax dicom-rs knows (``uncompressed_only``:
    the native ones only), and writes each instance to
    ``<work_dir>/received/<SOP Instance UID>.dcm`` once it has all of it.
    It listens on every address (it has no option to choose one); tests
    reach it on loopback. Files still open are left out, as for
    :class:`StoreSCP`.
    """

    kind = "dicom-storescp"
    #: It parses each data set and writes it anew: byte-identical for the
    #: tests' data, but not a promise.
    _BIT_PRESERVING = False

    def __init__(
        self,
        work_dir: Path | str,
        *,
        ae_title: str = "DICOMRS",
        port: int | None = None,
        uncompressed_only: bool = False,
        promiscuous: bool = False,
        start_timeout: float = _DEFAULT_START_TIMEOUT,
    ) -> None:
        super().__init__(work_dir, ae_title=ae_title, port=port, start_timeout=start_timeout)
        self._flags = [
            *(["--uncompressed-only"] if uncompressed_only else []),
            *(["--promiscuous"] if promiscuous else []),
        ]

    def _command(self) -> list[str]:
        return [
            dicom_rs_program("dicom-storescp"),
            # Its own AE title, despite the option's name.
            "--calling-ae-title",
            self.ae_title,
            "-p",
            str(self.port),
            "-o",
            str(self.out_dir),
            *self._flags,
        ]

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)


#: A command element as ``dicom-storescu --verbose`` prints a response:
#: ``(0000,0900) Status   US (1,  2 bytes): 0``.
_DICOM_RS_ELEMENT = re.compile(r"^\(0000,([0-9A-Fa-f]{4})\) \w+\s+(\w\w) \([^)]*\): (.*)$")


@dataclass(frozen=True)
class DicomRsStoreResult:
    """What ``dicom-storescu`` was answered, read from its verbose output.

    Attributes
    ----------
    returncode : int
        Its exit code (0 even when it skipped a file it could not send).
    store_statuses : dict[str, int]
        Each C-STORE response's status by Affected SOP Instance UID.
    output : str
        Everything it printed, for a failing test's message.
    """

    returncode: int
    store_statuses: dict[str, int]
    output: str = field(repr=False)


def parse_dicom_rs_storescu(output: str) -> dict[str, int]:
    """Each C-STORE response's status by SOP Instance UID, from ``dicom-storescu -v``."""
    statuses: dict[str, int] = {}
    status: int | None = None
    for line in output.splitlines():
        match = _DICOM_RS_ELEMENT.match(line.strip())
        if match is None:
            continue
        element, value = int(match.group(1), 16), match.group(3).strip()
        if element == 0x0900:
            status = int(value)
        elif element == 0x1000 and status is not None:
            statuses[value.strip('"')] = status
            status = None
    return statuses


def dicom_rs_storescu(
    host: str,
    port: int,
    files: Iterable[Path | str],
    *,
    calling_ae: str = "DICOMRS-SCU",
    called_ae: str = "ANY-SCP",
    timeout: float = 120.0,
) -> DicomRsStoreResult:
    """Send ``files`` with dicom-rs ``dicom-storescu`` on one association.

    It proposes each file's SOP class in the file's transfer syntax and, for
    those it can decode, in the uncompressed ones too; it sends each file as
    it is, or converted to what the acceptor chose. A file no accepted
    context fits is skipped ("No matching presentation contexts"): this
    build has no JPEG-LS or JPEG 2000 decoder, so such a file goes only
    where its own transfer syntax is accepted.
    """
    cmd = [
        dicom_rs_program("dicom-storescu"),
        "--verbose",
        "--calling-ae-title",
        calling_ae,
        "--called-ae-title",
        called_ae,
        f"{host}:{port}",
        *(str(f) for f in files),
    ]
    env = {**os.environ, "NO_COLOR": "1"}
    done = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
    )
    output = done.stdout + done.stderr
    return DicomRsStoreResult(
        returncode=done.returncode, store_statuses=parse_dicom_rs_storescu(output), output=output
    )


#: PDU types (PS3.8 9.3.1) as ``gdcmscu --debug`` names what it received.
_PDU_NAMES = {
    2: "A-ASSOCIATE-AC",
    3: "A-ASSOCIATE-RJ",
    4: "P-DATA-TF",
    6: "A-RELEASE-RP",
    7: "A-ABORT",
}
_GDCM_PDU = re.compile(r"^PDU code: (\d+)$", re.MULTILINE)
#: One command element of a message dump: ``(0000,0900) ?? (US) 0  # 2,1 Status``.
_GDCM_ELEMENT = re.compile(r"^\(0000,([0-9a-f]{4})\) \?\? \((\w\w)\) (.*?)\s+#")
_C_STORE_RSP = 0x8001
_C_ECHO_RSP = 0x8030


@dataclass(frozen=True)
class GdcmScuResult:
    """What ``gdcmscu`` received, read from its debug output.

    GDCM 3.0.21 (Debian 12) ``gdcmscu`` ends every run with SIGABRT
    ("ProtocolStream as nullptr is invalid") once its connection is closed,
    after a release as after a refusal, whatever the peer: its exit code
    says nothing. What it received says it all: the PDUs, and every
    response's status.

    Attributes
    ----------
    pdus : tuple[str, ...]
        The PDUs it received, in order (``A-ASSOCIATE-AC``, ``P-DATA-TF``,
        ``A-RELEASE-RP``, ``A-ASSOCIATE-RJ``, ``A-ABORT``).
    store_statuses : dict[str, int]
        Each C-STORE response's status by Affected SOP Instance UID.
    echo_status : int or None
        The C-ECHO response's status, if one came.
    output : str
        Everything it printed, for a failing test's message.
    """

    pdus: tuple[str, ...]
    store_statuses: dict[str, int]
    echo_status: int | None
    output: str = field(repr=False)

    @property
    def released(self) -> bool:
        """The association was established and released by both sides."""
        return self.pdus[:1] == ("A-ASSOCIATE-AC",) and self.pdus[-1:] == ("A-RELEASE-RP",)


def _gdcm_responses(output: str) -> list[dict[int, str]]:
    """The command sets ``gdcmscu --debug`` printed (each response is printed twice)."""
    commands: list[dict[int, str]] = []
    current: dict[int, str] = {}
    for line in output.splitlines():
        match = _GDCM_ELEMENT.match(line)
        if match is not None:
            value = match.group(3).strip()
            current[int(match.group(1), 16)] = value.strip("[]") if value.startswith("[") else value
            continue
        if current:
            commands.append(current)
            current = {}
    if current:
        commands.append(current)
    return commands


def parse_gdcmscu(output: str) -> GdcmScuResult:
    """Read ``gdcmscu --debug`` output: the PDUs and responses it received."""
    stores: dict[str, int] = {}
    echo_status: int | None = None
    for command in _gdcm_responses(output):
        field_value = int(command.get(0x0100, "0"))
        status = command.get(0x0900)
        if status is None:
            continue
        if field_value == _C_STORE_RSP:
            stores[command.get(0x1000, "")] = int(status)
        elif field_value == _C_ECHO_RSP:
            echo_status = int(status)
    pdus = tuple(_PDU_NAMES.get(int(code), f"type {code}") for code in _GDCM_PDU.findall(output))
    return GdcmScuResult(pdus=pdus, store_statuses=stores, echo_status=echo_status, output=output)


def gdcmscu(
    host: str,
    port: int,
    *,
    called_ae: str,
    calling_ae: str = "GDCMSCU",
    files: Sequence[Path | str] = (),
    timeout: float = 120.0,
) -> GdcmScuResult:
    """Run GDCM ``gdcmscu`` once: C-ECHO without ``files``, C-STORE of them on one association.

    For C-STORE it proposes one context per SOP class and transfer syntax
    of the files, each in the file's own transfer syntax only (it never
    converts, so it cannot fall back to another), and sends each file as it
    is. It does not look at which contexts were accepted: a file whose
    context was refused is sent anyway, and the peer aborts.
    """
    mode = ["--store", *(arg for f in files for arg in ("-i", str(f)))] if files else ["--echo"]
    cmd = [
        "gdcmscu",
        "--debug",
        *mode,
        "--aetitle",
        calling_ae,
        "--call",
        called_ae,
        "-H",
        host,
        "-p",
        str(port),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    return parse_gdcmscu(done.stdout + done.stderr)
