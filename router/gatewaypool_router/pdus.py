"""DICOM upper-layer framing on blocking sockets: the router's data path.

pynetdicom decodes and encodes association PDUs for us, but its DIMSE layer
assembles a whole data set before anyone sees it. The router must pass
fragments on as they arrive, so reading PDUs, splitting P-DATA-TF into PDVs
and writing PDVs to the next hop is done here, on plain bytes.
"""

from __future__ import annotations

import io
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

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

#: Abort sources and provider reasons (PS3.8 9.3.8).
ABORT_SOURCE_USER = 0x00
ABORT_SOURCE_PROVIDER = 0x02
REASON_NOT_SPECIFIED = 0x00
REASON_UNRECOGNIZED_PDU = 0x01
REASON_UNEXPECTED_PDU = 0x02
REASON_INVALID_PARAMETER = 0x06

RELEASE_RQ_PDU = bytes((RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0))
RELEASE_RP_PDU = bytes((RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0))


class PeerClosedError(ConnectionError):
    """The peer closed the TCP connection (possibly in the middle of a PDU)."""


class ProtocolError(ValueError):
    """The peer sent something that is not a valid DICOM upper-layer PDU."""


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


def open_reader(sock: socket.socket, *, buffer_size: int) -> io.BufferedReader:
    """A buffered reader on ``sock``: whole PDUs in few system calls."""
    return io.BufferedReader(socket.SocketIO(sock, "rb"), buffer_size=buffer_size)


def read_pdu(rfile: io.BufferedReader, *, max_body: int) -> Pdu:
    """Read one PDU from a buffered socket file.

    Parameters
    ----------
    rfile : io.BufferedReader
        From :func:`open_reader`: its buffered reads return exactly the
        bytes asked for unless the peer closed the connection.
    max_body : int
        The largest variable field accepted; a larger length is a protocol
        error (a peer ignoring our maximum PDU length, or garbage).
    """
    header = rfile.read(6)
    if len(header) < 6:
        raise PeerClosedError("connection closed" if not header else "connection closed mid-PDU")
    pdu_type, length = _HEADER.unpack(header)
    if pdu_type < ASSOCIATE_RQ or pdu_type > ABORT:
        raise ProtocolError(f"unknown PDU type 0x{pdu_type:02X}")
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


def send_buffers(sock: socket.socket, buffers: list[bytes | memoryview]) -> None:
    """Write every buffer, in order, without joining them first."""
    pending: list[bytes | memoryview] = [b for b in buffers if len(b)]
    while pending:
        sent = sock.sendmsg(pending[:512])
        while sent:
            first = pending[0]
            if sent >= len(first):
                sent -= len(first)
                pending.pop(0)
            else:
                pending[0] = memoryview(first)[sent:]
                sent = 0


def tune_socket(sock: socket.socket) -> None:
    """TCP_NODELAY and keep-alive on every socket of ours.

    DICOM's request/response rhythm against Nagle's algorithm and delayed
    ACKs costs about 40 ms per instance.
    """
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
