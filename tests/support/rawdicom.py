"""DICOM upper-layer PDUs built byte by byte, for tests that must see exactly
what the router answers.

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
ASSOCIATE_AC = 0x02
ASSOCIATE_RJ = 0x03
ABORT = 0x07


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
            sock.sendall(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
            read_pdu(sock)  # A-RELEASE-RP
        return reply
