"""What every gateway peer is: a DICOM Storage SCP process a test can inspect.

:class:`GatewayPeer` is the interface the tests and the demo use: start,
stop, crash (``kill``), restart on the same port, and list what it received
with the dataset bytes (:class:`Received`), so a test can compare them byte
for byte with what was sent. :class:`GatewayProcess` implements it once on
top of :class:`~gatewaypool_local.peers.process.ManagedProcess`: starting
waits for the peer to answer a C-ECHO (:func:`echo`), as a listening socket
is not yet a DICOM peer that negotiates associations.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from gatewaypool.bucketmap import Gateway as MapGateway
from gatewaypool_local import scu
from gatewaypool_local.peers.process import (
    DEFAULT_START_TIMEOUT,
    LOOPBACK,
    ManagedProcess,
    PeerError,
    free_port,
    tcp_open,
    wait_until,
)
from gatewaypool_local.synth import dataset_offset

_CHUNK = 8 * 1024 * 1024
_AE_TITLE_MAX = 16


def map_gateways(peers: Sequence[GatewayPeer]) -> list[MapGateway]:
    """`peers` as a router started with one ``--gateway`` each, in order, names them:
    ``gw-0``, ``gw-1``, … (its map is ``balanced_map`` of these)."""
    return [
        MapGateway(name=f"gw-{i}", host=peer.host, port=peer.port, ae_title=peer.ae_title)
        for i, peer in enumerate(peers)
    ]


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

    def stop(self) -> int | None:
        """Stop gracefully (SIGTERM), forcefully after a timeout; the exit code."""
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


class GatewayProcess(ManagedProcess):
    """A gateway as a process: its AE title and DICOM port, ready once it answers C-ECHO."""

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
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        if not 0 < len(ae_title) <= _AE_TITLE_MAX:
            raise ValueError(f"AE title {ae_title!r} must be 1..{_AE_TITLE_MAX} characters")
        super().__init__(work_dir, start_timeout=start_timeout)
        self._ae_title = ae_title
        self._host = host
        self._port = port if port is not None else free_port(host)

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

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._ae_title}@{self._host}:{self._port})"

    def _listens_on(self) -> Sequence[tuple[str, int]]:
        return [(self._host, self._port)]

    def _is_ready(self) -> bool:
        if not tcp_open(self._host, self._port):
            return False
        return echo(self._host, self._port, called_ae=self._ae_title, timeout=2.0) == 0

    @abc.abstractmethod
    def received(self) -> list[Received]:
        """Every complete instance held, one per SOPInstanceUID."""

    @abc.abstractmethod
    def received_count(self) -> int:
        """Number of complete instances held."""

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
