"""How a routed instance's data set reaches its gateway: copied, or spliced.

Once the StudyInstanceUID has gone by and the gateway is known, every later
fragment of the data set follows as soon as it arrives.

The copying path (``--forwarding copy``, and every TLS leg) reads each
P-DATA-TF whole and sends its PDVs on (:meth:`Forwarder.forward`).

The splicing path (``--forwarding splice``, the default where Linux allows
it) does not read a P-DATA-TF of the instance in progress whole: its PDV
headers are read, the data is read in small pieces only while the scanner
must look at it (before the StudyInstanceUID, element headers, the last
byte), and every run of bytes the scanner would skip unseen moves from the
sender's socket to the gateway's in the kernel
(:class:`~gatewaypool_router.splice.Splicer`), behind PDU and PDV headers
written from here (:meth:`Forwarder.next_pdu`). Never on a TLS leg:
bytes spliced in the kernel would be ciphertext on one side and bypass TLS
on the other, so an association from the TLS port, or with
``--gateway-tls-ca``, copies (:func:`splicer_for`).

With the native hot path (``GATEWAYPOOL_HOT_PATH``, see
:mod:`gatewaypool_router.scanner`), the splicing path's loops run in Rust
with the GIL released: the routed rest of a PDV (``_native.stream_rest``
for :meth:`Forwarder._splice_rest`), then a routed instance's later PDUs
from their header on and the gateway's response
(``_native.stream_pdus``, :meth:`Forwarder._stream_pdus_natively`). They
move the same bytes and stop where the Python loops would decide
something, handing back the header read; the Python loops stay, as the
fallback and the specification.

The association decides (what an instance is, where it goes, what the
sender is answered); this module only moves its bytes, and hands back to
the association (:class:`Association`) what it must decide on.
"""

from __future__ import annotations

import functools
import os
import socket
import struct
from dataclasses import dataclass, field
from typing import Protocol

from gatewaypool.bucketmap import Gateway
from gatewaypool_router import dimse, pdus
from gatewaypool_router.config import RouterConfig
from gatewaypool_router.negotiation import AcceptedContext
from gatewaypool_router.progress import Progress
from gatewaypool_router.scanner import IMPLEMENTATIONS, Scanner
from gatewaypool_router.splice import Splicer
from gatewaypool_router.splice import available as splice_available
from gatewaypool_router.spool.store import SpoolWriter
from gatewaypool_router.statuses import OFFENDING, Status
from gatewaypool_router.tls import ReloadingContext
from gatewaypool_router.upstream import GatewayError, Upstream

#: While the scanner must see the bytes, the splicing path reads this much
#: at a time: a CT header's remainder in one read, and little read ahead of a
#: value the kernel could have moved instead.
_SCAN_CHUNK = 4096
#: Runs of skippable bytes shorter than this are read and written instead:
#: two splices cost more than copying a few hundred bytes.
_MIN_SPLICE = 1024
#: Bytes read at a time from a sender whose instance already failed.
_DISCARD_CHUNK = 256 * 1024
#: A P-DATA-TF header and the first PDV header: what the splicing path reads
#: ahead, so that no data set byte lands in the reader's buffer unasked.
HEADERS_AHEAD = 12
_PDU_HEADER = struct.Struct(">BxL")
_PDV_HEADER = struct.Struct(">LBB")

if "native" in IMPLEMENTATIONS:
    from gatewaypool_router._native import Scanner as _NativeScan
    from gatewaypool_router._native import stream_pdus as _native_stream_pdus
    from gatewaypool_router._native import stream_rest as _native_stream_rest

# What _native.stream_rest returns first (router/native/src/lib.rs).
_STREAMED = 0
_MALFORMED = 1
_SENDER_TIMED_OUT = 2
_SENDER_CLOSED = 3
_SENDER_FAILED = 4
_GATEWAY_TIMED_OUT = 5
_GATEWAY_FAILED = 6
_GATEWAY_TIMED_OUT_PIPE = 7
_GATEWAY_FAILED_PIPE = 8
_SENDER_CLOSED_BETWEEN_PDUS = 9
# What the native stream waits for (its on_wait's first argument).
_WAIT_SENDER = 0
_WAIT_GATEWAY_SEND = 1
# Where _native.stream_pdus paused (Streamed.pause).
_PAUSED_AT_DATA_SET_END = 0
_PAUSED_AT_PDU = 1
_PAUSED_AT_PDV = 2


@functools.cache
def _can_splice() -> bool:
    return splice_available()


def splicer_for(
    config: RouterConfig, *, secure: bool, gateway_tls: ReloadingContext | None
) -> Splicer | None:
    """A splicer for one association, or None where it must copy.

    The pipe is the association's own, so threads never share one. Bytes
    spliced in the kernel would bypass TLS: a TLS leg on either side copies.
    With a spool every instance's bytes are also written to its file, so
    they pass through the router's memory: it copies too.
    """
    if (
        config.forwarding == "copy"
        or secure
        or gateway_tls is not None
        or config.spool_dir is not None
        or not _can_splice()
    ):
        return None
    return Splicer()


@dataclass(slots=True)
class Instance:
    """The C-STORE in progress (senders get one operation at a time)."""

    context: AcceptedContext
    command: dimse.Command
    raw_command: bytes
    scanner: Scanner
    started: float
    # Views into the PDU bodies read (immutable bytes): buffering copies nothing.
    pending: list[memoryview] = field(default_factory=list)
    pending_bytes: int = 0
    upstream: Upstream | None = None
    gateway: Gateway | None = None
    failure: Status | None = None
    reason: str = ""
    #: Offending Element (0000,0901) of the failure, if it has one.
    offending: tuple[int, ...] = ()
    size: int = 0
    bucket: int = -1
    #: The version of the map it was routed by, and whether it was held (bucket closing).
    map_version: int | None = None
    held: bool = False
    #: With a spool: the instance's file, a copy while it goes to its gateway.
    spool: SpoolWriter | None = None
    #: The instance goes to the spool (its file), not to a gateway.
    spooled: bool = False
    #: Its gateway may hold it although it failed it (a timeout, an abort):
    #: sending it from the spool counts as a resend.
    maybe_delivered: bool = False

    @property
    def routed(self) -> bool:
        """Whether its destination is known: a gateway, or the spool."""
        return self.upstream is not None or self.spooled

    def fail(
        self, status: Status, reason: str, *, offending: tuple[int, ...] | None = None
    ) -> None:
        """The instance fails with `status` (the first failure stands); drop what is buffered."""
        if self.failure is None:
            self.failure = status
            self.reason = reason
            if offending is None:
                offending = OFFENDING.get(status, ())
                broke_at = self.scanner.offending
                if status is Status.DATASET_MALFORMED and broke_at is not None:
                    offending = (broke_at,)
            self.offending = offending
        self.pending.clear()
        self.pending_bytes = 0


class Association(Protocol):
    """What a :class:`Forwarder` hands back to its association."""

    @property
    def instance(self) -> Instance | None:
        """The C-STORE whose data set is in progress, if any."""
        ...

    def on_pdv(self, pdv: pdus.Pdv) -> None:
        """A whole PDV that is not the streamed data set's (a command, another context)."""
        ...

    def on_data(self, instance: Instance, pdv: pdus.Pdv) -> None:
        """Data set bytes read here, to scan and route (or drop, once failed)."""
        ...

    def gateway_failed(self, instance: Instance, exc: GatewayError) -> None:
        """Sending to the instance's gateway failed: fail the instance."""
        ...

    def data_set_sent(self, instance: Instance) -> None:
        """The data set's last byte went to the gateway: answer the sender."""
        ...


class Forwarder:
    """Moves one association's data sets to their gateways.

    Parameters
    ----------
    association
        Told what the forwarder read but must not decide on.
    sock, reader
        The sender's socket and the reader over it; with a `splicer`, the
        reader must read no further ahead than :data:`HEADERS_AHEAD`.
    splicer
        The association's pipe (:func:`splicer_for`), or None to copy.
    max_pdu
        ``--max-pdu``: the longest PDU taken from the sender.
    """

    def __init__(
        self,
        association: Association,
        *,
        sock: socket.socket,
        reader: pdus.SocketReader,
        splicer: Splicer | None,
        progress: Progress,
        max_pdu: int,
    ) -> None:
        self._association = association
        self._sock = sock
        self._reader = reader
        self._splicer = splicer
        self._progress = progress
        self._max_pdu = max_pdu
        #: Where the native stream's counts start: (instance size, forwarded bytes).
        self._base = (0, 0)
        # The native stream needs the native splicer's pipe (and its scan).
        self._native = splicer is not None and splicer.native

    @property
    def splicing(self) -> bool:
        return self._splicer is not None

    def close(self) -> None:
        if self._splicer is not None:
            self._splicer.close()

    def next_pdu(self) -> pdus.Pdu | None:
        """The sender's next PDU; None when the splicing path streamed a P-DATA-TF itself."""
        if self._splicer is None:
            return pdus.read_pdu(self._reader, max_body=self._max_pdu)
        return self._read_or_stream()

    def forward(self, instance: Instance, data: memoryview, *, last: bool, complete: bool) -> None:
        """Send `data`, the next fragment of the instance's data set, to its gateway.

        `last` ends the data set, and `complete` says whether the scan found
        it whole: an incomplete one is never finished at the gateway.
        """
        upstream = instance.upstream
        assert upstream is not None
        if last and not complete:
            # Aborting makes the gateway drop the partial instance it holds.
            upstream.abort()
            instance.upstream = None
            instance.fail(Status.DATASET_MALFORMED, instance.scanner.detail or "truncated")
            return
        progress = self._progress
        progress.wait("gateway", "send")
        try:
            upstream.send_pdv(instance.context.context_id, pdus.MCH_LAST if last else 0, data)
        except GatewayError as exc:
            self._association.gateway_failed(instance, exc)
            return
        progress.wrote("data set fragment to gateway", len(data))
        progress.forwarded_bytes += len(data)

    # -- the splicing path -------------------------------------------------

    def _read_or_stream(self) -> pdus.Pdu | None:
        """Read the next PDU, or stream it if it carries the instance in progress.

        Returns the PDU to handle as the copying path does, or None when a
        P-DATA-TF was handled here, PDV by PDV, without reading it whole.
        With the native hot path, a routed instance's PDUs are streamed in
        Rust from their header on (:meth:`_stream_pdus_natively`).
        """
        instance = self._association.instance
        if (
            self._native
            and instance is not None
            and instance.failure is None
            and instance.upstream is not None
            and isinstance(instance.scanner, _NativeScan)
        ):
            return self._stream_pdus_natively(instance, instance.scanner)
        header = self._reader.read(6)
        if len(header) < 6:
            raise pdus.PeerClosedError(
                "connection closed" if not header else "connection closed mid-PDU"
            )
        return self._on_pdu_header(header)

    def _on_pdu_header(self, header: bytes) -> pdus.Pdu | None:
        """Go on from a PDU header read: stream a P-DATA-TF, or read the PDU whole."""
        reader = self._reader
        pdu_type, length = _PDU_HEADER.unpack(header)
        if pdu_type < pdus.ASSOCIATE_RQ or pdu_type > pdus.ABORT:
            raise pdus.ProtocolError(
                f"unknown PDU type 0x{pdu_type:02X}", reason=pdus.REASON_UNRECOGNIZED_PDU
            )
        if length > self._max_pdu:
            raise pdus.ProtocolError(f"PDU length {length} exceeds the limit {self._max_pdu}")
        instance = self._association.instance
        if (
            pdu_type != pdus.P_DATA_TF
            or instance is None
            or instance.failure is not None
            or instance.scanner.deflated
        ):
            body = reader.read(length)
            if len(body) < length:
                raise pdus.PeerClosedError("connection closed mid-PDU")
            return pdus.Pdu(pdu_type, header, body)
        self._progress.read("P-DATA-TF", length)
        self._stream_pdu(length)
        return None

    def _stream_pdu(self, length: int) -> None:
        """Handle a P-DATA-TF of ``length`` bytes PDV by PDV, as it arrives."""
        if length < 6:
            raise pdus.ProtocolError("P-DATA-TF without a presentation data value")
        self._stream_pdvs(length)

    def _stream_pdvs(self, left: int, head: bytes | None = None) -> None:
        """Handle the last ``left`` bytes of a P-DATA-TF PDV by PDV.

        ``head``: the next PDV's header, if it was read already (by the
        native stream, which left that PDV to Python).
        """
        reader = self._reader
        while left:
            if head is None:
                if left < 6:
                    raise pdus.ProtocolError("truncated PDV header")
                head = reader.read(6)
                if len(head) < 6:
                    raise pdus.PeerClosedError("connection closed mid-PDU")
            item_length, context_id, control = _PDV_HEADER.unpack(head)
            head = None
            pdus.check_pdv_header(item_length, left - 4)
            size = item_length - 2
            left -= 6 + size
            instance = self._association.instance
            if (
                control & pdus.MCH_COMMAND
                or instance is None
                or instance.context.context_id != context_id
                or instance.failure is not None
                or instance.scanner.deflated
            ):
                data = reader.read(size)
                if len(data) < size:
                    raise pdus.PeerClosedError("connection closed mid-PDU")
                self._association.on_pdv(pdus.Pdv(context_id, control, memoryview(data)))
            else:
                self._stream_data(instance, context_id, control, size)

    def _stream_pdus_natively(self, instance: Instance, scanner: _NativeScan) -> pdus.Pdu | None:
        """:meth:`_read_or_stream` and :meth:`_stream_pdu` for a routed instance, in Rust.

        From the next PDU header on, every P-DATA-TF that carries only the
        instance's data set goes to its gateway in one call with the GIL
        released, until the data set's last PDV is out or a PDU or PDV
        needs deciding here; Python goes on from that header with its own
        checks. Progress as in :meth:`_stream_rest_natively`.
        """
        upstream = instance.upstream
        splicer = self._splicer
        assert upstream is not None and splicer is not None
        progress = self._progress
        reader = self._reader
        link = self._native_link(upstream, splicer)
        prefix = reader.take_buffered(reader.buffered) if reader.buffered else b""
        self._base = (instance.size, progress.forwarded_bytes)
        context_id = instance.context.context_id
        upstream.pdu_open = True  # until told otherwise: an abort then resets
        streamed = _native_stream_pdus(
            scanner,
            link,
            context_id,
            self._max_pdu,
            prefix,
            # The response too, in the same call, unless Python holds some of it.
            None if upstream.has_pending() else upstream.response_max_body,
            self._native_wait,
        )
        if streamed.unread:
            reader.push_back(streamed.unread)
        taken, forwarded = streamed.taken, streamed.forwarded
        self._count_native(instance, taken, forwarded)
        code = streamed.code
        upstream.pdu_open = streamed.gateway_pdu_open
        if code == _STREAMED:
            if streamed.pause == _PAUSED_AT_PDU:
                return self._on_pdu_header(streamed.header)
            if streamed.pause == _PAUSED_AT_PDV:
                head = streamed.header or None
                self._stream_pdvs(streamed.pdu_left + (6 if head else 0), head)
                return None
            assert streamed.pause == _PAUSED_AT_DATA_SET_END
            upstream.read_natively(
                streamed.response_code,
                streamed.response,
                streamed.response_unread,
                streamed.response_errno,
            )
            self._association.data_set_sent(instance)
        elif code == _MALFORMED:
            upstream.abort()  # its PDU still open: the connection is reset
            upstream.pdu_open = False
            instance.upstream = None
            instance.fail(Status.DATASET_MALFORMED, scanner.detail or "truncated")
            self._association.data_set_sent(instance)
        else:
            self._stream_failed(instance, code, streamed.errno)
            if streamed.pdv_left:
                self._drop(instance, context_id, streamed.control, streamed.pdv_left)
            elif streamed.control & pdus.MCH_LAST:
                self._association.data_set_sent(instance)  # failed on the final byte
        if streamed.pdu_left:
            self._stream_pdvs(streamed.pdu_left)
        return None

    def _stream_failed(self, instance: Instance, code: int, errno: int) -> None:
        """After a native stream stopped on a failure: raise the sender's, or fail the instance.

        A gateway's failure closes or aborts its association as
        :meth:`Upstream.send` and :meth:`Upstream.splice_from` do.
        """
        upstream = instance.upstream
        splicer = self._splicer
        assert upstream is not None and splicer is not None
        if code == _SENDER_TIMED_OUT:
            raise TimeoutError("timed out")
        if code == _SENDER_CLOSED:
            raise pdus.PeerClosedError("connection closed mid-PDU")
        if code == _SENDER_CLOSED_BETWEEN_PDUS:
            raise pdus.PeerClosedError("connection closed")
        if code == _SENDER_FAILED:
            raise OSError(errno, os.strerror(errno))
        if code in (_GATEWAY_TIMED_OUT_PIPE, _GATEWAY_FAILED_PIPE):
            splicer.close()
        if code in (_GATEWAY_TIMED_OUT, _GATEWAY_TIMED_OUT_PIPE):
            upstream.abort()
            exc = GatewayError(Status.GATEWAY_TIMEOUT, "gateway stopped reading")
        else:
            upstream.close()
            exc = GatewayError(
                Status.GATEWAY_ABORTED, f"send failed: {OSError(errno, os.strerror(errno))}"
            )
        self._association.gateway_failed(instance, exc)

    def _stream_data(self, instance: Instance, context_id: int, control: int, size: int) -> None:
        """Take one data set PDV of ``size`` bytes from the sender, piece by piece.

        Until the instance is routed (or failed) its bytes are read in small
        pieces and go through :meth:`Association.on_data` as the copying
        path's PDVs do; what is left once the gateway is known goes to
        :meth:`_splice_rest`; after a failure the rest is read and dropped.
        """
        reader = self._reader
        if not size:
            self._association.on_data(instance, pdus.Pdv(context_id, control, memoryview(b"")))
            return
        left = size
        while left and instance.failure is None and instance.upstream is None:
            chunk = reader.read_some(min(left, _SCAN_CHUNK))
            left -= len(chunk)
            piece_control = control if not left else control & ~pdus.MCH_LAST
            self._association.on_data(
                instance, pdus.Pdv(context_id, piece_control, memoryview(chunk))
            )
        if left and instance.failure is None:
            scanner = instance.scanner
            if self._native and isinstance(scanner, _NativeScan):
                left = self._stream_rest_natively(instance, scanner, context_id, control, left)
            else:
                left = self._splice_rest(instance, context_id, control, left)
        self._drop(instance, context_id, control, left)

    def _drop(self, instance: Instance, context_id: int, control: int, left: int) -> None:
        """Take the last ``left`` bytes of a data set PDV through :meth:`Association.on_data`.

        After a failure they are read and dropped (in large pieces); the
        PDV's last piece keeps its control bits, so a last PDV still ends
        the instance and gets it answered.
        """
        reader = self._reader
        while left:
            limit = _DISCARD_CHUNK if instance.failure is not None else _SCAN_CHUNK
            chunk = reader.read_some(min(left, limit))
            left -= len(chunk)
            piece_control = control if not left else control & ~pdus.MCH_LAST
            self._association.on_data(
                instance, pdus.Pdv(context_id, piece_control, memoryview(chunk))
            )

    def _splice_rest(self, instance: Instance, context_id: int, control: int, size: int) -> int:
        """Forward the last ``size`` bytes of a PDV to the instance's gateway.

        The PDV is re-framed for the gateway's maximum PDU; each piece's
        12 header bytes are written from here, then its bytes follow: runs
        the scanner would skip are spliced, the rest is read, scanned and
        written. The final byte of the data set is always read, so that the
        scan can judge the data set complete before the gateway has it all:
        a truncated instance is aborted at the gateway, never stored.

        Returns
        -------
        int
            Bytes of the PDV still to be taken from the sender: 0, unless the
            gateway failed on the way.
        """
        upstream = instance.upstream
        splicer = self._splicer
        assert upstream is not None and splicer is not None
        scanner = instance.scanner
        reader = self._reader
        progress = self._progress
        last = bool(control & pdus.MCH_LAST)
        pieces = pdus.piece_headers(context_id, control, size, max_body=upstream.peer_max_pdu)
        final_index = len(pieces) - 1
        start = instance.size  # every byte taken from the sender is counted there
        try:
            for index, (header, piece) in enumerate(pieces):
                final = last and index == final_index
                progress.wait("gateway", "send")
                upstream.pdu_open = True
                upstream.send([header], more=True)
                todo = piece
                while todo:
                    room = todo - 1 if final else todo
                    run = min(scanner.skippable, room) if not reader.buffered else 0
                    if run >= _MIN_SPLICE:
                        self._splice_run(instance, upstream, splicer, run, more=run < todo)
                        todo -= run
                        continue
                    taken = self._scan_run(instance, upstream, todo, final=final)
                    if taken is None:
                        break  # the final piece: nothing follows
                    todo -= taken
                upstream.pdu_open = False
        except GatewayError as exc:
            progress.received_bytes = instance.size
            self._association.gateway_failed(instance, exc)
        left = size - (instance.size - start)
        if left:
            return left  # failed: the caller drops the rest, then answers
        if last:
            self._association.data_set_sent(instance)
        return 0

    def _count_native(self, instance: Instance, taken: int, forwarded: int) -> None:
        """Bring progress up to date with what a native call read and forwarded."""
        progress = self._progress
        instance.size += taken
        progress.received_bytes = instance.size
        progress.forwarded_bytes += forwarded
        if taken:
            progress.read("P-DATA-TF", taken)
        if forwarded:
            progress.wrote("data set fragment to gateway", forwarded)

    def _native_link(
        self, upstream: Upstream, splicer: Splicer
    ) -> tuple[int, int, int, int, int, int, float | None, float | None]:
        """What a native call moves bytes between: the sender's socket, the gateway's,
        the splice pipe, the gateway's max PDU and both sockets' timeouts."""
        gateway_fd, gateway_timeout = upstream.stream_target()
        pipe_read, pipe_write, capacity = splicer.pipe()
        return (
            self._sock.fileno(),
            gateway_fd,
            pipe_read,
            pipe_write,
            capacity,
            upstream.peer_max_pdu,
            self._sock.gettimeout(),
            gateway_timeout,
        )

    def _stream_rest_natively(
        self, instance: Instance, scanner: _NativeScan, context_id: int, control: int, size: int
    ) -> int:
        """:meth:`_splice_rest` in Rust, with the GIL released: the same bytes, the same errors.

        Progress is brought up to date once the call returns, and before
        each wait in it (:meth:`_native_wait`), so the stall log still says
        whom the association waits on and what it moved.
        """
        upstream = instance.upstream
        splicer = self._splicer
        assert upstream is not None and splicer is not None
        progress = self._progress
        link = self._native_link(upstream, splicer)
        reader = self._reader
        prefix = reader.take_buffered(size) if reader.buffered else b""
        self._base = (instance.size, progress.forwarded_bytes)
        upstream.pdu_open = True
        code, taken, forwarded, errno = _native_stream_rest(
            scanner,
            link,
            context_id,
            control,
            size,
            prefix,
            self._native_wait,
        )
        self._count_native(instance, taken, forwarded)
        if code in (_STREAMED, _MALFORMED):
            if code == _MALFORMED:
                # The PDU is still open (its final byte unsent): the
                # connection is reset, which no gateway takes for an instance.
                upstream.abort()
                instance.upstream = None
                instance.fail(Status.DATASET_MALFORMED, instance.scanner.detail or "truncated")
            upstream.pdu_open = False
            if control & pdus.MCH_LAST:
                self._association.data_set_sent(instance)
            return 0
        self._stream_failed(instance, code, errno)
        left = size - taken
        if not left and control & pdus.MCH_LAST:
            self._association.data_set_sent(instance)  # failed on the final byte
        return left

    def _native_wait(self, what: int, taken: int, forwarded: int) -> None:
        """Before the native stream waits: progress as of then, and whom it waits on.

        ``what``: 0 the sender's data, 1 room at the gateway, 2 the
        gateway's C-STORE-RSP (``_native.stream_pdus``).
        """
        progress = self._progress
        size, forwarded_before = self._base
        if taken:
            progress.read("P-DATA-TF", taken)
            progress.received_bytes = size + taken
        if forwarded:
            progress.wrote("data set fragment to gateway", forwarded)
            progress.forwarded_bytes = forwarded_before + forwarded
        if what == _WAIT_SENDER:
            progress.wait("sender", "data set fragment")
        elif what == _WAIT_GATEWAY_SEND:
            progress.wait("gateway", "send")
        else:
            progress.wait("gateway", "C-STORE-RSP")

    def _splice_run(
        self, instance: Instance, upstream: Upstream, splicer: Splicer, run: int, *, more: bool
    ) -> None:
        """Splice `run` bytes the scanner may skip from the sender to the gateway."""
        progress = self._progress
        progress.wait("sender", "data set fragment")
        try:
            upstream.splice_from(splicer, self._sock, run, more=more, on_wait=self._splice_wait)
        except GatewayError as exc:
            instance.size += exc.consumed
            raise
        instance.scanner.skip(run)
        instance.size += run
        progress.read("P-DATA-TF", run)
        progress.wrote("data set fragment to gateway", run)
        progress.received_bytes = instance.size
        progress.forwarded_bytes += run

    def _scan_run(
        self, instance: Instance, upstream: Upstream, todo: int, *, final: bool
    ) -> int | None:
        """Read, scan and send on up to `todo` bytes of a piece; return how many.

        None when they end the data set (`final`) and the scan finds it
        malformed: the instance has failed, and the gateway's association is
        aborted, which makes the gateway drop the partial instance it holds.
        """
        progress = self._progress
        scanner = instance.scanner
        progress.wait("sender", "data set fragment")
        chunk = self._reader.read_some(min(todo, _SCAN_CHUNK))
        count = len(chunk)
        instance.size += count
        progress.read("P-DATA-TF", count)
        progress.received_bytes = instance.size
        scanner.feed(chunk)
        if final and count == todo and not scanner.finish():
            upstream.abort()
            instance.upstream = None
            instance.fail(Status.DATASET_MALFORMED, scanner.detail or "truncated")
            return None
        progress.wait("gateway", "send")
        upstream.send([chunk], more=count < todo)
        progress.wrote("data set fragment to gateway", count)
        progress.forwarded_bytes += count
        return count

    def _splice_wait(self, on_gateway: bool) -> None:
        if on_gateway:
            self._progress.wait("gateway", "send")
        else:
            self._progress.wait("sender", "data set fragment")
