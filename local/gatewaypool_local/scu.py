"""pynetdicom as a sender, without the race that loses its C-STORE responses.

pynetdicom 3.0.4 (the newest release) can lose the response to a C-STORE it
sent, and then waits ``dimse_timeout`` and aborts the association. Its
association thread runs a reactor that takes every complete incoming DIMSE
message off the queue and serves it as a request; ``send_c_store`` pauses
that reactor before sending, so that the response is left for it::

    reactor thread                     send_c_store (caller's thread)
    --------------                     ------------------------------
    _is_paused = True
    checkpoint.wait()   # still set
                                       checkpoint.clear()
                                       while not _is_paused: sleep   # True: go
                                       send the request ...
    _is_paused = False
    get_msg()   # takes the C-STORE-RSP, "Received unexpected C-STORE
                # service message", drops it
                                       get_msg(block=True)   # waits 30 s

The pause is only observed, never confirmed: once the reactor has passed
its ``wait()`` it can still reach ``get_msg()``, and it does whenever it is
held off the GIL for as long as the peer takes to answer. A peer that answers
within a millisecond -- DCMTK ``storescp --ignore``, or the router in front of
a fast gateway -- and a few sending threads in one process make that a
matter of minutes (issue 7 of this project: 1 run in 3 of 2000 instances over
four threads lost one response, straight to ``storescp`` as through the
router).

:func:`open_association` replaces the association's checkpoint with
:class:`ReactorGate`, whose pause waits until the reactor is really blocked
in ``wait()``; :func:`store` takes that pause before each ``send_c_store``.
Nothing else in pynetdicom changes: its reactor still runs between
operations (release and abort from the peer are still noticed), and
``send_c_store``'s own pause then finds the reactor already paused.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config

__all__ = [
    "PynetdicomSendError",
    "ReactorGate",
    "SendResult",
    "open_association",
    "send_files",
    "store",
    "verify",
]

_VERIFICATION = "1.2.840.10008.1.1"
#: How long a pause may wait for the reactor to reach its checkpoint; it
#: loops every millisecond, so only an association being torn down is slower.
_PAUSE_TIMEOUT = 5.0


class PynetdicomSendError(RuntimeError):
    """No association could be established with the peer."""


class ReactorGate:
    """A drop-in for the ``threading.Event`` pynetdicom's reactor waits on.

    It has the ``set``/``clear``/``is_set``/``wait`` of an Event, and one
    thing more: :meth:`pause` returns only once the reactor is blocked in
    :meth:`wait`, so it cannot take a message off the queue until
    :meth:`set`.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._open = True
        self._waiting = False

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def clear(self) -> None:
        with self._cond:
            self._open = False

    def wait(self, timeout: float | None = None) -> bool:
        with self._cond:
            if self._open:
                return True
            self._waiting = True
            self._cond.notify_all()
            try:
                return self._cond.wait_for(lambda: self._open, timeout)
            finally:
                self._waiting = False

    def pause(self, *, timeout: float = _PAUSE_TIMEOUT) -> bool:
        """Close the gate and wait until the reactor waits at it.

        Returns False if the reactor did not arrive within `timeout` (its
        association is ending); the gate stays closed either way.
        """
        with self._cond:
            self._open = False
            return self._cond.wait_for(lambda: self._waiting, timeout)


@dataclass(frozen=True)
class SendResult:
    """Outcome of one C-STORE sent by :func:`send_files`.

    Attributes
    ----------
    path : Path
        The file sent.
    sop_instance_uid : str
        Its SOPInstanceUID (from the file meta).
    status : int or None
        The C-STORE response status, or None when there was none: the
        association was rejected or aborted, the peer timed out, or it did not
        accept the file's SOP class with the file's transfer syntax.
    """

    path: Path
    sop_instance_uid: str
    status: int | None


@contextmanager
def open_association(
    host: str,
    port: int,
    *,
    contexts: Iterable[tuple[str, str]] = (),
    calling_ae: str = "GWP-SCU",
    called_ae: str = "ANY-SCP",
    max_pdu: int = 1024 * 1024,
    timeout: float = 60.0,
    tls: ssl.SSLContext | None = None,
) -> Iterator[Any]:
    """A pynetdicom association whose reactor :func:`store` can pause safely.

    `contexts` are (SOP class, transfer syntax) pairs; Verification is always
    proposed. With `tls`, the association runs over TLS with that client
    context (its host name check, if on, is against `host`). The association
    is released (or aborted, if the peer does not answer the release) on
    leaving the block.

    Raises
    ------
    PynetdicomSendError
        If the association was not established.
    """
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    ae.add_requested_context(_VERIFICATION)
    for sop_class, transfer_syntax in contexts:
        ae.add_requested_context(sop_class, transfer_syntax)
    assoc = ae.associate(
        host,
        port,
        ae_title=called_ae,
        max_pdu=max_pdu,
        tls_args=(tls, host) if tls is not None else None,
    )
    if not assoc.is_established:
        raise PynetdicomSendError(f"no association with {called_ae} at {host}:{port}")
    # The reactor reads the attribute on every loop, so the swap takes effect
    # at its next checkpoint; the gate starts open, as the Event it replaces.
    assoc._reactor_checkpoint = cast(threading.Event, ReactorGate())
    sock = assoc.dul.socket.socket if assoc.dul.socket else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        yield assoc
    finally:
        if assoc.is_established:
            _pause(assoc)  # release() has the same unconfirmed pause
            assoc.release()


def _pause(assoc: Any) -> None:
    gate = assoc._reactor_checkpoint
    if isinstance(gate, ReactorGate):
        gate.pause()


def store(assoc: Any, dataset: Any) -> Any:
    """``assoc.send_c_store(dataset)`` with the reactor truly paused first."""
    _pause(assoc)
    return assoc.send_c_store(dataset)


def verify(assoc: Any) -> int | None:
    """Send one C-ECHO with the reactor truly paused; its status or None."""
    _pause(assoc)
    rsp = assoc.send_c_echo()
    status = rsp.get("Status") if rsp else None
    return int(status) if status is not None else None


def send_files(
    host: str,
    port: int,
    files: Iterable[Path | str],
    *,
    calling_ae: str = "GWP-SCU",
    called_ae: str = "ANY-SCP",
    max_pdu: int = 1024 * 1024,
    timeout: float = 60.0,
    chunked: bool = True,
) -> list[SendResult]:
    """Send Part-10 files on one pynetdicom association.

    Each (SOP class, transfer syntax) pair among the files gets its own
    presentation context. With `chunked` (the default), each file's dataset
    bytes are sent exactly as they are in the file (pynetdicom's
    ``STORE_SEND_CHUNKED_DATASET``: read in chunks, never decoded). That flag
    is process-wide in pynetdicom; it is set for the duration of this call
    and restored after, so senders in one process must agree on it (run
    senders of the other kind in another process, see :func:`main`).
    Without `chunked`, pynetdicom reads each file whole and encodes the
    dataset again, as most pynetdicom applications send.

    Returns
    -------
    list of SendResult
        One per file, in order, with the status the peer answered.

    Raises
    ------
    PynetdicomSendError
        If no association could be established at all.
    """
    paths = [Path(f) for f in files]
    metas = [read_file_meta_info(p) for p in paths]
    pairs = sorted({(str(m.MediaStorageSOPClassUID), str(m.TransferSyntaxUID)) for m in metas})
    if len(pairs) > 127:
        raise ValueError(f"{len(pairs)} (SOP class, transfer syntax) pairs; at most 127 fit")
    results: list[SendResult] = []
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = chunked
    try:
        with open_association(
            host,
            port,
            contexts=pairs,
            calling_ae=calling_ae,
            called_ae=called_ae,
            max_pdu=max_pdu,
            timeout=timeout,
        ) as assoc:
            for path, meta in zip(paths, metas, strict=True):
                results.append(_send_one(assoc, path, str(meta.MediaStorageSOPInstanceUID)))
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
    return results


def _send_one(assoc: Any, path: Path, sop_instance: str) -> SendResult:
    status: int | None = None
    if assoc.is_established:
        try:
            rsp = store(assoc, path)
        except ValueError:
            pass  # no accepted context for this file's SOP class and syntax
        else:
            value = rsp.get("Status") if rsp else None
            status = int(value) if value is not None else None
    return SendResult(path=path, sop_instance_uid=sop_instance, status=status)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m gatewaypool_local.scu HOST PORT FILE...``: one sender process.

    Prints one JSON line per file (``{"path", "sop", "status"}``) and exits 0
    if every status was success. Options: ``--called-ae``, ``--calling-ae``,
    ``--max-pdu`` (what we accept; the peer's maximum decides what we send),
    ``--whole`` (decode and re-encode instead of sending file bytes).
    """
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m gatewaypool_local.scu")
    parser.add_argument("host")
    parser.add_argument("port", type=int)
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--called-ae", default="ANY-SCP")
    parser.add_argument("--calling-ae", default="GWP-SCU")
    parser.add_argument("--max-pdu", type=int, default=1024 * 1024)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--whole", action="store_true")
    args = parser.parse_args(argv)
    started = time.monotonic()
    results = send_files(
        args.host,
        args.port,
        args.files,
        calling_ae=args.calling_ae,
        called_ae=args.called_ae,
        max_pdu=args.max_pdu,
        timeout=args.timeout,
        chunked=not args.whole,
    )
    for result in results:
        print(
            json.dumps(
                {"path": str(result.path), "sop": result.sop_instance_uid, "status": result.status}
            )
        )
    print(json.dumps({"seconds": round(time.monotonic() - started, 3)}))
    return 0 if all(r.status == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
