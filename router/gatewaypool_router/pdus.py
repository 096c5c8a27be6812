"""DICOM upper-layer framing on blocking sockets: the router's data path.

pynetdicom decodes and encodes association PDUs for us, but its DIMSE layer
assembles a whole data set before anyone sees it. The router must pass
fragments on as they arrive, so reading PDUs, splitting P-DATA-TF into PDVs
and writing PDVs to the next hop is done here, on plain bytes.
"""

from __future__ import annotations

import contextlib
import functools
import io
import select
import socket
import ssl
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

ASSOCIATE_RQ = 0x01
ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
RELEASE_RQ = 0x05
RELEASE_RP = 0x06
ABORT = 0x07

_HEADER = struct.Struct(">BxL")
_PDV_HEADER = struct.Struct(">LBB")

#: Message control header bits (PS3.8 E.2).
MCH_COMMAND = 0x01
MCH_LAST = 0x02
_COMMAND_LAST = MCH_COMMAND | MCH_LAST

#: Abort sources and provider reasons (PS3.8 9.3.8).
ABORT_SOURCE_USER = 0x00
ABORT_SOURCE_PROVIDER = 0x02
REASON_NOT_SPECIFIED = 0x00
REASON_UNRECOGNIZED_PDU = 0x01
REASON_UNEXPECTED_PDU = 0x02
REASON_INVALID_PARAMETER = 0x06

_MSG_MORE = getattr(socket, "MSG_MORE", 0)

RELEASE_RQ_PDU = bytes((RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0))
RELEASE_RP_PDU = bytes((RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0))


class PeerClosedError(ConnectionError):
    """The peer closed the TCP connection (possibly in the middle of a PDU)."""


class ProtocolError(ValueError):
    """The peer sent something that is not a valid DICOM upper-layer PDU.

    ``reason`` is the provider's A-ABORT reason for it (PS3.8 Table 9-26).
    """

    def __init__(self, message: str, *, reason: int | None = None) -> None:
        super().__init__(message)
        self.reason = REASON_INVALID_PARAMETER if reason is None else reason


@dataclass(frozen=True, slots=True)
class Pdu:
    """One PDU as read: its type, its 6-byte header and its variable field."""

    type: int
    header: bytes
    body: bytes

    def raw(self) -> bytes:
        """Return the whole PDU, as pynetdicom's decoders expect it."""
        return self.header + self.body


@dataclass(frozen=True, slots=True)
class Pdv:
    """One presentation data value: a fragment of a command or a data set."""

    context_id: int
    control: int
    data: memoryview

    @property
    def is_command(self) -> bool:
        return bool(self.control & MCH_COMMAND)

    @property
    def is_last(self) -> bool:
        return bool(self.control & MCH_LAST)


def abort_pdu(source: int = ABORT_SOURCE_PROVIDER, reason: int = REASON_NOT_SPECIFIED) -> bytes:
    """Encode an A-ABORT PDU."""
    return bytes((ABORT, 0, 0, 0, 0, 4, 0, 0, source, reason))


class ExactReader(Protocol):
    """Anything whose ``read(n)`` returns n bytes, or fewer only at end of stream."""

    def read(self, size: int, /) -> bytes: ...


def open_reader(sock: socket.socket, *, buffer_size: int) -> io.BufferedReader:
    """A buffered reader on ``sock``: whole PDUs in few system calls."""
    return io.BufferedReader(socket.SocketIO(sock, "rb"), buffer_size=buffer_size)


class SocketReader:
    """A socket reader whose buffer the caller can see and drain.

    The fast path moves data set bytes from the sender's socket to a
    gateway's socket inside the kernel (:mod:`gatewaypool_router.splice`).
    That is only correct if no byte of them sits in a user-space buffer
    first, which :class:`io.BufferedReader` cannot promise: it reads ahead
    as far as its buffer goes and does not say how much it holds. This
    reader asks one ``recv`` for at most ``read_ahead`` bytes beyond what
    the call needs (the copying path sets it to a whole PDU, the splicing
    path to a PDU and PDV header), and :attr:`buffered` tells how many bytes
    :meth:`read_some` must hand out before the socket itself may be spliced.

    Parameters
    ----------
    sock : socket.socket
        A connected stream socket; its timeout applies to every read, and
        ``TimeoutError`` passes through to the caller.
    capacity : int
        Size of the buffer, allocated once; a read larger than it gets a
        buffer of its own.
    read_ahead : int
        The most bytes one ``recv`` asks for beyond what the call needs.
    """

    __slots__ = ("_buf", "_end", "_poller", "_sock", "_start", "_view", "deadline", "read_ahead")

    def __init__(self, sock: socket.socket, *, capacity: int, read_ahead: int) -> None:
        self._sock = sock
        self._buf = bytearray(capacity)
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        self._poller: select.poll | None = None
        self.read_ahead = read_ahead
        #: With a time (``time.monotonic()``), reads end in ``TimeoutError``
        #: then, however the peer dribbles its bytes: a bound on a whole
        #: request, where the socket's timeout bounds each receive only.
        self.deadline: float | None = None

    def _bound(self) -> None:
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("deadline passed")
            self._sock.settimeout(left)

    @property
    def buffered(self) -> int:
        """Bytes received from the socket and not yet returned to the caller."""
        return self._end - self._start

    def _fill(self, need: int) -> None:
        """Receive until ``need`` bytes are buffered (need <= capacity), or the peer closes."""
        view = self._view
        capacity = len(view)
        if self._start == self._end:
            self._start = self._end = 0
        elif capacity - self._start < need:
            held = self._end - self._start
            view[:held] = view[self._start : self._end]
            self._start, self._end = 0, held
        while self._end - self._start < need:
            want = max(need - (self._end - self._start), self.read_ahead)
            stop = min(self._end + want, capacity)
            self._bound()
            count = self._sock.recv_into(view[self._end : stop])
            if not count:
                return
            self._end += count

    def read(self, size: int, /) -> bytes:
        """Return exactly ``size`` bytes, or fewer only if the peer closed."""
        if self._end - self._start < size:
            if size > len(self._view):
                return self._read_large(size)
            self._fill(size)
        end = min(self._start + size, self._end)
        data = bytes(self._view[self._start : end])
        self._start = end
        return data

    def _read_large(self, size: int) -> bytes:
        """Read more than the buffer holds straight into a buffer of its own."""
        out = bytearray(size)
        with memoryview(out) as view:
            got = self._end - self._start
            view[:got] = self._view[self._start : self._end]
            self._start = self._end = 0
            while got < size:
                self._bound()
                count = self._sock.recv_into(view[got:], size - got)
                if not count:
                    break
                got += count
        del out[got:]
        return bytes(out)

    def read_some(self, limit: int) -> bytes:
        """Return between 1 and ``limit`` bytes, buffered ones first.

        Raises
        ------
        PeerClosedError
            If the peer closed the connection before sending anything more.
        """
        if self._end == self._start:
            data = self._sock.recv(limit)
            if not data:
                raise PeerClosedError("connection closed mid-PDU")
            return data
        end = min(self._start + limit, self._end)
        data = bytes(self._view[self._start : end])
        self._start = end
        return data

    def take_buffered(self, limit: int) -> bytes:
        """Up to ``limit`` of the bytes already received, without reading the socket."""
        end = min(self._start + limit, self._end)
        data = bytes(self._view[self._start : end])
        self._start = end
        return data

    def push_back(self, data: bytes) -> None:
        """Hold `data` again, as the next bytes to read (the buffer must be empty).

        For bytes a native reader took ahead and did not use.
        """
        assert self._start == self._end, "push_back onto buffered bytes"
        size = len(data)
        self._view[:size] = data
        self._start, self._end = 0, size

    def poll(self) -> bool:
        """Whether bytes wait to be read, without waiting for any.

        Buffered bytes count; otherwise one non-blocking ``recv`` looks at
        the socket (for TLS, a record that holds no application data, such
        as a session ticket, counts as nothing). The socket's timeout is
        restored afterwards.

        Raises
        ------
        PeerClosedError
            If the peer closed the connection and nothing is buffered.
        """
        if self._end > self._start:
            return True
        if self._start == self._end:
            self._start = self._end = 0
        if not isinstance(self._sock, ssl.SSLSocket):
            # One poll(2) answers the usual case, nothing waiting, where the
            # read below costs two timeout changes and a failed recv.
            if self._poller is None:
                self._poller = select.poll()
                self._poller.register(self._sock.fileno(), select.POLLIN)
            if not self._poller.poll(0):
                return False
        timeout = self._sock.gettimeout()
        self._sock.settimeout(0)
        try:
            count = self._sock.recv_into(self._view[self._end :])
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        finally:
            self._sock.settimeout(timeout)
        if not count:
            raise PeerClosedError("connection closed")
        self._end += count
        return True

    def close(self) -> None:
        """Drop what is buffered (the socket is the caller's to close)."""
        self._start = self._end = 0


def read_pdu(rfile: ExactReader, *, max_body: int) -> Pdu:
    """Read one PDU from a buffered socket file.

    Parameters
    ----------
    rfile : ExactReader
        From :func:`open_reader`, or a :class:`SocketReader`: its reads
        return exactly the bytes asked for unless the peer closed the
        connection.
    max_body : int
        The largest variable field accepted; a larger length is a protocol
        error (a peer ignoring our maximum PDU length, or garbage).
    """
    header = rfile.read(6)
    if len(header) < 6:
        raise PeerClosedError("connection closed" if not header else "connection closed mid-PDU")
    pdu_type, length = _HEADER.unpack(header)
    if pdu_type < ASSOCIATE_RQ or pdu_type > ABORT:
        raise ProtocolError(f"unknown PDU type 0x{pdu_type:02X}", reason=REASON_UNRECOGNIZED_PDU)
    if length > max_body:
        raise ProtocolError(f"PDU length {length} exceeds the limit {max_body}")
    body = rfile.read(length)
    if len(body) < length:
        raise PeerClosedError("connection closed mid-PDU")
    return Pdu(pdu_type, header, body)


def iter_pdvs(body: bytes) -> Iterator[Pdv]:
    """Split a P-DATA-TF variable field into its PDVs (at least one)."""
    view = memoryview(body)
    offset = 0
    end = len(body)
    if end < 6:
        raise ProtocolError("P-DATA-TF without a presentation data value")
    while offset < end:
        if end - offset < 6:
            raise ProtocolError("truncated PDV header")
        item_length, context_id, control = _PDV_HEADER.unpack_from(view, offset)
        if item_length < 2 or offset + 4 + item_length > end:
            raise ProtocolError(f"PDV length {item_length} does not fit its PDU")
        yield Pdv(context_id, control, view[offset + 6 : offset + 4 + item_length])
        offset += 4 + item_length


def sole_command(body: bytes) -> bytes | None:
    """The command set a P-DATA-TF carries whole in its only PDV, else None.

    What a response nearly always is: read here without the general
    split of :func:`iter_pdvs`, which handles every other shape.
    """
    if len(body) < 6:
        return None
    item_length, _, control = _PDV_HEADER.unpack_from(body)
    if item_length + 4 != len(body) or control & _COMMAND_LAST != _COMMAND_LAST:
        return None
    return body[6:]


def check_pdv_header(item_length: int, room: int) -> None:
    """Refuse a PDV whose item length is impossible or overruns its PDU.

    ``room`` is what is left of the P-DATA-TF variable field after the
    4-byte item length field. The same rule as :func:`iter_pdvs`, for the
    streaming reader, which sees PDV headers one at a time.
    """
    if item_length < 2 or item_length > room:
        raise ProtocolError(f"PDV length {item_length} does not fit its PDU")


def piece_lengths(length: int, *, max_body: int) -> list[int]:
    """How a PDV of ``length`` data bytes is split for a peer's maximum PDU.

    Each piece travels in its own P-DATA-TF with one PDV, whose 6 bytes of
    PDV header count against the peer's maximum PDU length (PS3.8 9.3.5).
    ``max_body`` 0 means the peer set no limit. An empty PDV stays one empty
    piece, so its control bits (the "last" bit above all) still travel.
    """
    room = length if max_body == 0 else max(max_body - 6, 1)
    if length <= room:
        return [length]
    full, rest = divmod(length, room)
    return [room] * full + ([rest] if rest else [])


def pdv_header(context_id: int, control: int, length: int) -> bytes:
    """The 12 bytes before ``length`` data bytes: P-DATA-TF header and PDV header."""
    return _HEADER.pack(P_DATA_TF, length + 6) + _PDV_HEADER.pack(length + 2, context_id, control)


@functools.lru_cache(maxsize=256)
def piece_headers(
    context_id: int, control: int, length: int, *, max_body: int
) -> tuple[tuple[bytes, int], ...]:
    """Headers and data lengths of the P-DATA-TF PDUs that carry one PDV.

    Only the final piece keeps the "last" bit of ``control``; the command
    bit stays on every piece. Cached: a sender's PDUs are nearly all of one
    length, so the same headers serve every instance.
    """
    pieces = piece_lengths(length, max_body=max_body)
    final = len(pieces) - 1
    return tuple(
        (pdv_header(context_id, control if index == final else control & ~MCH_LAST, piece), piece)
        for index, piece in enumerate(pieces)
    )


def pdv_frames(
    context_id: int, control: int, data: memoryview, *, max_body: int
) -> list[bytes | memoryview]:
    """Encode one PDV as P-DATA-TF PDUs no longer than the peer accepts.

    The PDV is split into pieces when the peer's maximum PDU length is
    smaller than the fragment; only the final piece keeps the "last" bit.
    Returns buffers for ``socket.sendmsg`` so the data is never copied.
    ``max_body`` 0 means the peer set no limit.
    """
    room = len(data) if max_body == 0 else max(max_body - 6, 1)
    frames: list[bytes | memoryview] = []
    if len(data) <= room:
        frames.append(_HEADER.pack(P_DATA_TF, len(data) + 6))
        frames.append(_PDV_HEADER.pack(len(data) + 2, context_id, control))
        frames.append(data)
        return frames
    for start in range(0, len(data), room):
        piece = data[start : start + room]
        piece_control = control if start + room >= len(data) else control & ~MCH_LAST
        frames.append(_HEADER.pack(P_DATA_TF, len(piece) + 6))
        frames.append(_PDV_HEADER.pack(len(piece) + 2, context_id, piece_control))
        frames.append(piece)
    return frames


def send_buffers(
    sock: socket.socket, buffers: list[bytes | memoryview], *, more: bool = False
) -> None:
    """Write every buffer, in order, without joining them first.

    ``more`` tells the kernel that more of the same PDU follows at once
    (``MSG_MORE``), so a 12-byte header written here and the data spliced
    right after it leave in one segment instead of two.
    """
    if isinstance(sock, ssl.SSLSocket):
        # TLS has no sendmsg(): one write, so the buffers go out in few records.
        sock.sendall(b"".join(buffers))
        return
    flags = _MSG_MORE if more else 0
    total = sum(map(len, buffers))
    if not total:
        return
    if len(buffers) <= 512:
        # Nearly always the socket takes it all at once: one call, no bookkeeping.
        sent = sock.sendmsg(buffers, [], flags)
        if sent == total:
            return
    else:
        sent = 0
    pending: list[bytes | memoryview] = [b for b in buffers if len(b)]
    while True:
        while sent:
            first = pending[0]
            if sent >= len(first):
                sent -= len(first)
                pending.pop(0)
            else:
                pending[0] = memoryview(first)[sent:]
                sent = 0
        if not pending:
            return
        sent = sock.sendmsg(pending[:512], [], flags)


def drain_and_close(sock: socket.socket, *, timeout: float) -> None:
    """Close after an A-ABORT so that the peer reads it (PS3.8 Sta13).

    Closing a socket with unread bytes in its receive buffer sends a TCP
    reset, which can make the peer's kernel drop the A-ABORT before the
    peer read it: it sees "connection reset" instead of the abort and its
    reason. So: end our side (FIN after the A-ABORT), read and drop what
    the peer still sends until it closes too or ``timeout`` passes (the
    ARTIM timer's part), then close.
    """
    deadline = time.monotonic() + timeout
    with contextlib.suppress(OSError):
        # On a TLS socket this ends TLS without close_notify and drains raw bytes.
        sock.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(65536):
                break
    sock.close()


def tune_socket(sock: socket.socket) -> None:
    """TCP_NODELAY and keep-alive on every socket of ours.

    DICOM's request/response rhythm against Nagle's algorithm and delayed
    ACKs costs about 40 ms per instance.
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
