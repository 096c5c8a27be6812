"""DICOM upper-layer PDUs built byte by byte, for tests that must see exactly
what the router answers, or send it exactly what no real peer would.

pynetdicom as a requestor cannot always report a rejection: when the
A-ASSOCIATE-RJ and the close arrive before its association thread has looked
at the connection, it records an abort and no reason (seen once in about 20
runs of a rejection test). A test that asserts the reject reason therefore
speaks the protocol itself: :func:`association_rq` encodes the request with
pynetdicom's PDU codec, :func:`request_association` sends it on a plain socket
and decodes what comes back.
"""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
)
from pynetdicom.presentation import PresentationContext, build_context

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
ASSOCIATE_RQ = 0x01
ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
RELEASE_RQ = 0x05
RELEASE_RP = 0x06
ABORT = 0x07
RELEASE_RQ_PDU = bytes((RELEASE_RQ, 0, 0, 0, 0, 4, 0, 0, 0, 0))
#: Message control header bits (PS3.8 E.2).
MCH_COMMAND = 0x01
MCH_LAST = 0x02
#: DIMSE command fields and the "no data set" marker (PS3.7 E.1).
C_STORE_RQ = 0x0001
C_ECHO_RQ = 0x0030
NO_DATA_SET = 0x0101


def context(
    context_id: int, abstract: str, transfers: Sequence[str] | None = None
) -> PresentationContext:
    """A proposed presentation context (pynetdicom's default syntaxes if none)."""
    built = build_context(abstract, list(transfers) if transfers is not None else None)
    built.context_id = context_id
    return built


def max_length(value: int) -> MaximumLengthNotification:
    item = MaximumLengthNotification()
    item.maximum_length_received = value
    return item


def association_rq(
    *,
    contexts: list[PresentationContext] | None = None,
    max_pdu: int = 32768,
    extra: Sequence[object] = (),
    calling: str = "MODALITY",
    called: str = "GATEWAYPOOL",
) -> bytes:
    """An encoded A-ASSOCIATE-RQ PDU (CT Image Storage by default)."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID(APPLICATION_CONTEXT)
    primitive.calling_ae_title = calling
    primitive.called_ae_title = called
    primitive.presentation_context_definition_list = (
        contexts
        if contexts is not None
        else [context(1, CT_IMAGE_STORAGE, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])]
    )
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = UID("1.2.826.0.1.3680043.9.3811.3.0.4")
    primitive.user_information = [max_length(max_pdu), class_uid, *extra]  # type: ignore[list-item]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


@dataclass(frozen=True)
class Reply:
    """The first PDU the acceptor answered with."""

    pdu_type: int
    body: bytes

    @property
    def reject_reason(self) -> tuple[int, int, int]:
        """(result, source, reason/diag.) of an A-ASSOCIATE-RJ (PS3.8 9.3.4)."""
        assert self.pdu_type == ASSOCIATE_RJ, f"PDU type 0x{self.pdu_type:02X}, not A-ASSOCIATE-RJ"
        _, result, source, reason = struct.unpack(">BBBB", self.body[:4])
        return result, source, reason


def pdv(context_id: int, control: int, data: bytes, *, item_length: int | None = None) -> bytes:
    """One presentation data value item; ``item_length`` overrides the true one."""
    length = len(data) + 2 if item_length is None else item_length
    return struct.pack(">LBB", length, context_id, control) + data


def pdu(pdu_type: int, body: bytes, *, length: int | None = None) -> bytes:
    """Any PDU: type, reserved byte, 4-byte length (``length`` overrides it), body."""
    return struct.pack(">BBL", pdu_type, 0, len(body) if length is None else length) + body


def p_data_tf(*pdvs: bytes) -> bytes:
    """A P-DATA-TF carrying encoded PDVs (see :func:`pdv`)."""
    return pdu(P_DATA_TF, b"".join(pdvs))


def _element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHL", 0x0000, element, len(value)) + value


def command_set(elements: dict[int, bytes | int]) -> bytes:
    """A group 0000 command set, implicit VR little endian, group length first.

    Values are bytes (UIDs, padded to even length here) or ints (US, 2 bytes).
    """
    body = b"".join(
        _element(tag, value if isinstance(value, bytes) else struct.pack("<H", value))
        for tag, value in sorted(elements.items())
    )
    return _element(0x0000, struct.pack("<L", len(body))) + body


def c_store_rq(
    *, message_id: int, sop_class: str, sop_instance: str, data_set: bool = True
) -> dict[int, bytes | int]:
    """The elements of a C-STORE-RQ (pass them to :func:`command_set`)."""
    return {
        0x0002: sop_class.encode(),
        0x0100: C_STORE_RQ,
        0x0110: message_id,
        0x0700: 0x0000,  # priority: medium
        0x0800: NO_DATA_SET if not data_set else 0x0000,
        0x1000: sop_instance.encode(),
    }


def c_echo_rq(*, message_id: int) -> dict[int, bytes | int]:
    """The elements of a C-ECHO-RQ."""
    return {
        0x0002: VERIFICATION.encode(),
        0x0100: C_ECHO_RQ,
        0x0110: message_id,
        0x0800: NO_DATA_SET,
    }


def command_elements(raw: bytes) -> dict[int, bytes]:
    """{element: value} of a group 0000 command set; stops at the first inconsistency."""
    elements: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= len(raw):
        _group, element, length = struct.unpack_from("<HHL", raw, offset)
        offset += 8
        if offset + length > len(raw):
            break
        elements[element] = raw[offset : offset + length]
        offset += length
    return elements


def split_pdus(stream: bytes) -> tuple[list[Reply], bytes]:
    """Whole PDUs at the start of ``stream``, and the bytes of an unfinished one."""
    replies: list[Reply] = []
    offset = 0
    while len(stream) - offset >= 6:
        pdu_type, _, length = struct.unpack_from(">BBL", stream, offset)
        if len(stream) - offset - 6 < length:
            break
        replies.append(Reply(pdu_type, stream[offset + 6 : offset + 6 + length]))
        offset += 6 + length
    return replies, stream[offset:]


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def read_pdu(sock: socket.socket) -> Reply:
    """Read one whole PDU (type, reserved, 4-byte length, body)."""
    pdu_type, _, length = struct.unpack(">BBL", _read_exactly(sock, 6))
    return Reply(pdu_type, _read_exactly(sock, length))


def request_association(
    host: str,
    port: int,
    *,
    calling: str,
    called: str,
    timeout: float = 10.0,
    tls: ssl.SSLContext | None = None,
) -> Reply:
    """Send an A-ASSOCIATE-RQ and return the answer; a release follows an accept.

    With `tls`, over a TLS connection made with that client context.
    """
    with socket.create_connection((host, port), timeout=timeout) as plain:
        sock = plain if tls is None else tls.wrap_socket(plain, server_hostname=host)
        sock.sendall(association_rq(calling=calling, called=called))
        reply = read_pdu(sock)
        if reply.pdu_type == ASSOCIATE_AC:
            sock.sendall(RELEASE_RQ_PDU)
            read_pdu(sock)  # A-RELEASE-RP
        return reply
