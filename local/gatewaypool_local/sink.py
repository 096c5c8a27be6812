"""A pynetdicom Storage SCP that keeps exactly the bytes it received.

Run as ``python -m gatewaypool_local.sink --port P --ae-title T --out-dir D``.

It is the gateway the router's tests trust most: for every instance it writes
``<SOPInstanceUID>.dcm`` holding the dataset bytes exactly as they arrived in
the P-DATA fragments (no file meta, no decode and re-encode), and appends one
JSON line to ``index.jsonl`` with the transfer syntax and StudyInstanceUID.
A test compares those bytes with what it sent.

Options make it misbehave on purpose: ``--fail-after N`` answers
``0xA700`` (out of resources) from the (N+1)-th instance on, ``--status S``
answers ``S`` to every instance (e.g. ``0xB000``, a warning), ``--delay``
sleeps before answering; the router must pass such statuses through and time
out on slow gateways.

Logs name instances by UID only, never by patient attributes.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
import sys
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID, AllTransferSyntaxes, DeflatedExplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt
from pynetdicom.events import EventHandlerType

from gatewaypool_local.synth import dataset_offset

__all__ = [
    "INDEX_NAME",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SUCCESS",
    "SinkConfig",
    "build_ae",
    "instance_file_name",
    "main",
    "parse_args",
]

LOGGER = logging.getLogger("gatewaypool_local.sink")

#: C-STORE statuses the sink returns (PS3.4 B.2.3).
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
_WARNING_STATUSES = frozenset({0x0001, 0xB000, 0xB006, 0xB007})

#: Name of the index file in the output folder: one JSON object per stored
#: instance, written after the instance's file is complete.
INDEX_NAME = "index.jsonl"

_STUDY_INSTANCE_UID = 0x0020000D
_VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
_DEFAULT_MAX_PDU = 1024 * 1024
_UNSAFE_NAME = re.compile(r"[^0-9A-Za-z.]")
_COPY_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class SinkConfig:
    """Everything one sink process is told on its command line.

    Attributes
    ----------
    port : int
        TCP port to listen on.
    ae_title : str
        Our AE title (the called AE title is not checked, as with storescp).
    out_dir : Path
        Where instances and ``index.jsonl`` are written.
    host : str
        Address to bind; loopback by default.
    fail_after : int or None
        Store this many instances, then answer ``0xA700`` to every other.
    status : int or None
        Answer this status to every instance; the data is kept when it is a
        success or warning status and dropped otherwise.
    delay : float
        Seconds to wait before answering each C-STORE (gateway timeouts).
    max_pdu : int
        Our maximum receive PDU size; 0 means unlimited.
    chunked : bool
        Let pynetdicom spool each incoming dataset to a temporary file instead
        of memory (``STORE_RECV_CHUNKED_DATASET``), for multi-GiB instances.
    tls_cert, tls_key : Path or None
        Serve DICOM over TLS with this certificate chain and key (PEM).
    tls_ca : Path or None
        With TLS, require a client certificate this CA bundle verifies.
    """

    port: int
    ae_title: str
    out_dir: Path
    host: str = "127.0.0.1"
    fail_after: int | None = None
    status: int | None = None
    delay: float = 0.0
    max_pdu: int = _DEFAULT_MAX_PDU
    chunked: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None


def instance_file_name(sop_instance_uid: str) -> str:
    """File name the sink gives an instance: ``<SOPInstanceUID>.dcm``.

    Characters other than letters, digits and dots are replaced, so a hostile
    UID cannot name a path outside the output folder.
    """
    return f"{_UNSAFE_NAME.sub('_', sop_instance_uid) or 'unnamed'}.dcm"


def _is_stored_status(status: int) -> bool:
    return status == STATUS_SUCCESS or status in _WARNING_STATUSES


def _study_uid(fp: BinaryIO, transfer_syntax: UID) -> str:
    """Read StudyInstanceUID from the start of an encoded dataset.

    Only the elements up to (0020,000D) are parsed, so this costs the same for
    a 10 kB slice and a 1 GiB multi-frame instance.
    """
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        fp = BytesIO(inflater.decompress(fp.read()))

    def past_study_uid(tag: BaseTag, _vr: str | None, _length: int) -> bool:
        return int(tag) > _STUDY_INSTANCE_UID

    ds = read_dataset(
        fp,
        transfer_syntax.is_implicit_VR,
        transfer_syntax.is_little_endian,
        stop_when=past_study_uid,
    )
    return str(ds.get("StudyInstanceUID", ""))


class _Sink:
    """C-STORE handler state: counts, the index file and its lock."""

    def __init__(self, config: SinkConfig) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._answered = 0
        self._index_path = config.out_dir / INDEX_NAME

    def _decide(self) -> int:
        with self._lock:
            self._answered += 1
            answered = self._answered
        if self._config.status is not None:
            return self._config.status
        if self._config.fail_after is not None and answered > self._config.fail_after:
            return STATUS_OUT_OF_RESOURCES
        return STATUS_SUCCESS

    def on_c_store(self, event: Any) -> int:
        """Store the received dataset bytes and answer the configured status."""
        status = self._decide()
        request = event.request
        sop_instance = str(request.AffectedSOPInstanceUID)
        transfer_syntax = UID(event.context.transfer_syntax)
        if self._config.delay > 0:
            # Tests wait for this line to know an instance is in flight here.
            LOGGER.info("received %s, answering in %g s", sop_instance, self._config.delay)
            time.sleep(self._config.delay)
        if not _is_stored_status(status):
            LOGGER.info("refused %s with status 0x%04X (as configured)", sop_instance, status)
            return status
        final = self._config.out_dir / instance_file_name(sop_instance)
        partial = final.with_suffix(".part")
        try:
            size, study_uid = self._write(event, partial, transfer_syntax)
        except Exception:
            LOGGER.exception("cannot store %s", sop_instance)
            partial.unlink(missing_ok=True)
            return STATUS_CANNOT_UNDERSTAND
        # Rename only when complete: a file named *.dcm is always whole.
        os.replace(partial, final)
        record = {
            "sop_instance_uid": sop_instance,
            "sop_class_uid": str(request.AffectedSOPClassUID),
            "study_uid": study_uid,
            "transfer_syntax": str(transfer_syntax),
            "size": size,
            "calling_ae": str(event.assoc.requestor.ae_title),
            "status": status,
        }
        line = json.dumps(record, sort_keys=True) + "\n"
        with self._lock, self._index_path.open("a", encoding="ascii") as index:
            index.write(line)
        LOGGER.info(
            "stored %s study %s (%s, %d bytes), status 0x%04X",
            sop_instance,
            study_uid,
            transfer_syntax.name,
            size,
            status,
        )
        return status

    def _write(self, event: Any, partial: Path, transfer_syntax: UID) -> tuple[int, str]:
        if self._config.chunked:
            # pynetdicom wrote meta + dataset to a temporary file; copy the
            # dataset part without loading it.
            # dataset part without loading it (pynetdicom deletes the spool
            # file after this handler returns).
            spooled = Path(event.dataset_path)
            offset = dataset_offset(spooled)
            with spooled.open("rb") as src, partial.open("wb") as dst:
                src.seek(offset)
                shutil.copyfileobj(src, dst, _COPY_CHUNK)
                size = dst.tell()
            with spooled.open("rb") as src:
                src.seek(offset)
                study_uid = _study_uid(src, transfer_syntax)
            return size, study_uid
        data: bytes = event.request.DataSet.getvalue()
        partial.write_bytes(data)
        return len(data), _study_uid(BytesIO(data), transfer_syntax)


def _set_nodelay(event: Any) -> None:
    """Disable Nagle on each accepted connection (small C-STORE responses)."""
    sock = event.assoc.dul.socket.socket
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def build_ae(config: SinkConfig) -> tuple[AE, list[EventHandlerType]]:
    """Return the configured AE and its event handlers (not yet serving).

    Every storage SOP class pynetdicom knows is supported with every transfer
    syntax pydicom knows, plus Verification; unknown SOP classes are accepted
    too (pynetdicom's ``UNRESTRICTED_STORAGE_SERVICE``), like ``storescp
    --promiscuous``. That process-wide flag is why the sink is its own
    process.
    """
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    _config.STORE_RECV_CHUNKED_DATASET = config.chunked
    ae = AE(ae_title=config.ae_title)
    ae.maximum_pdu_size = config.max_pdu
    ae.maximum_associations = 64
    ae.network_timeout = 120
    ae.dimse_timeout = 120
    syntaxes = [str(ts) for ts in AllTransferSyntaxes]
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, syntaxes)
    ae.add_supported_context(_VERIFICATION_SOP_CLASS)
    sink = _Sink(config)
    handlers: list[EventHandlerType] = [
        (evt.EVT_C_STORE, sink.on_c_store),
        (evt.EVT_CONN_OPEN, _set_nodelay),
    ]
    return ae, handlers


def _status(text: str) -> int:
    value = int(text, 0)
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"status {text!r} is not a 16-bit value")
    return value


def parse_args(argv: Sequence[str] | None = None) -> SinkConfig:
    """Parse the command line into a :class:`SinkConfig`."""
    parser = argparse.ArgumentParser(
        prog="python -m gatewaypool_local.sink",
        description="Storage SCP that writes each received dataset's exact bytes.",
    )
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument("--ae-title", "-aet", default="SINK", help="our AE title (default SINK)")
    parser.add_argument("--out-dir", "-od", type=Path, required=True, help="output folder")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument(
        "--fail-after", type=int, default=None, help="answer 0xA700 after N stored instances"
    )
    parser.add_argument(
        "--status", type=_status, default=None, help="answer this status (e.g. 0xB000) always"
    )
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait per C-STORE")
    parser.add_argument(
        "--max-pdu",
        "-pdu",
        type=int,
        default=_DEFAULT_MAX_PDU,
        help=f"max receive PDU in bytes, 0 = unlimited (default {_DEFAULT_MAX_PDU})",
    )
    parser.add_argument(
        "--chunked", action="store_true", help="spool datasets to disk while receiving"
    )
    parser.add_argument("--tls-cert", type=Path, help="serve over TLS with this chain (PEM)")
    parser.add_argument("--tls-key", type=Path, help="the key of --tls-cert (PEM)")
    parser.add_argument("--tls-ca", type=Path, help="require client certificates from this CA")
    args = parser.parse_args(argv)
    if (args.tls_cert is None) != (args.tls_key is None):
        parser.error("--tls-cert and --tls-key go together")
    if args.fail_after is not None and args.fail_after < 0:
        parser.error("--fail-after must be >= 0")
    return SinkConfig(
        port=args.port,
        ae_title=args.ae_title,
        out_dir=args.out_dir,
        host=args.host,
        fail_after=args.fail_after,
        status=args.status,
        delay=args.delay,
        max_pdu=args.max_pdu,
        chunked=args.chunked,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
    )


def _ssl_context(config: SinkConfig) -> ssl.SSLContext | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    if config.tls_ca is not None:
        context.load_verify_locations(config.tls_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT, then shut the server down cleanly."""
    config = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # pynetdicom's own INFO/DEBUG lines describe every association and
    # message; warnings are enough in a gateway log.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    config.out_dir.mkdir(parents=True, exist_ok=True)
    ae, handlers = build_ae(config)
    # Block the stop signals before the server threads start, so they inherit
    # the mask and the signals are taken by sigwait() below.
    stop_signals = {signal.SIGTERM, signal.SIGINT}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    server = ae.start_server(
        (config.host, config.port),
        block=False,
        evt_handlers=handlers,
        ssl_context=_ssl_context(config),
    )
    LOGGER.info(
        "listening on %s:%d as %s, writing to %s",
        config.host,
        config.port,
        config.ae_title,
        config.out_dir,
    )
    if server is None:  # only when block=True
        raise RuntimeError("pynetdicom returned no server")
    received = signal.sigwait(stop_signals)
    LOGGER.info("signal %d: shutting down", received)
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
