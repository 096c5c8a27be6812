"""A Storage SCU that speaks the upper layer itself, one step at a time.

For tests that must pause between instances on one association, see every
context's negotiation result, or read exactly what the router answers
(pynetdicom 3.0.4's sender can lose a fast response).
Built on :mod:`support.rawdicom`'s PDU helpers.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from pydicom.filereader import dcmread
from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.presentation import PresentationContext

from gatewaypool_local.synth import dataset_bytes
from support import rawdicom


class AssociationRefusedError(Exception):
    """The router answered the A-ASSOCIATE-RQ with something other than an AC."""

    def __init__(self, reply: rawdicom.Reply) -> None:
        super().__init__(f"PDU 0x{reply.pdu_type:02X} instead of A-ASSOCIATE-AC")
        self.reply = reply


@dataclass(frozen=True)
class StoreResult:
    """A C-STORE-RSP as read: status, and the command elements for the rest."""

    status: int
    elements: dict[int, bytes] = field(repr=False)

    @property
    def offending_element(self) -> bytes | None:
        return self.elements.get(0x0901)

    @property
    def error_comment(self) -> str:
        return self.elements.get(0x0902, b"").decode("ascii", "replace").rstrip("\0 ")


class RawScu:
    """One association to `host:port`, driven by the test."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        contexts: Sequence[PresentationContext],
        calling: str = "MODALITY",
        called: str = "GATEWAYPOOL",
        extra: Sequence[object] = (),
        timeout: float = 30.0,
    ) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._message_id = 0
        self._sock.sendall(
            rawdicom.association_rq(
                contexts=list(contexts), calling=calling, called=called, extra=extra
            )
        )
        reply = rawdicom.read_pdu(self._sock)
        if reply.pdu_type != rawdicom.ASSOCIATE_AC:
            self._sock.close()
            raise AssociationRefusedError(reply)
        ac = A_ASSOCIATE_AC()
        ac.decode(struct.pack(">BBL", rawdicom.ASSOCIATE_AC, 0, len(reply.body)) + reply.body)
        primitive = ac.to_primitive()
        #: context ID -> (result, transfer syntax accepted or "")
        self.results: dict[int, tuple[int, str]] = {
            int(cx.context_id or 0): (
                int(cx.result or 0),
                str(cx.transfer_syntax[0]) if cx.transfer_syntax and cx.result == 0 else "",
            )
            for cx in primitive.presentation_context_definition_results_list
        }

    def accepted(self, context_id: int) -> str | None:
        """The transfer syntax accepted for `context_id`, None if refused."""
        result, syntax = self.results.get(context_id, (-1, ""))
        return syntax if result == 0 else None

    def store_file(
        self, context_id: int, path: Path, *, sop_class: str | None = None
    ) -> StoreResult:
        """Send the data set of a Part-10 file as it is (its transfer syntax must match)."""
        meta = dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        return self.store(
            context_id,
            sop_class=sop_class or str(meta.file_meta.MediaStorageSOPClassUID),
            sop_instance=str(meta.file_meta.MediaStorageSOPInstanceUID),
            data=dataset_bytes(path),
        )

    def store(
        self, context_id: int, *, sop_class: str, sop_instance: str, data: bytes
    ) -> StoreResult:
        self._message_id += 1
        command = rawdicom.command_set(
            rawdicom.c_store_rq(
                message_id=self._message_id, sop_class=sop_class, sop_instance=sop_instance
            )
        )
        last = rawdicom.MCH_LAST
        self._sock.sendall(
            rawdicom.p_data_tf(rawdicom.pdv(context_id, rawdicom.MCH_COMMAND | last, command))
        )
        step = 16000
        for start in range(0, max(len(data), 1), step):
            piece = data[start : start + step]
            control = last if start + step >= len(data) else 0
            self._sock.sendall(rawdicom.p_data_tf(rawdicom.pdv(context_id, control, piece)))
        return self._response()

    def echo(self, context_id: int) -> int:
        self._message_id += 1
        command = rawdicom.command_set(rawdicom.c_echo_rq(message_id=self._message_id))
        self._sock.sendall(
            rawdicom.p_data_tf(
                rawdicom.pdv(context_id, rawdicom.MCH_COMMAND | rawdicom.MCH_LAST, command)
            )
        )
        return self._response().status

    def _response(self) -> StoreResult:
        command = b""
        while True:
            reply = rawdicom.read_pdu(self._sock)
            if reply.pdu_type != rawdicom.P_DATA_TF:
                raise ConnectionError(f"PDU 0x{reply.pdu_type:02X} instead of a response")
            offset = 0
            while offset < len(reply.body):
                length, _cid, control = struct.unpack_from(">LBB", reply.body, offset)
                command += reply.body[offset + 6 : offset + 4 + length]
                offset += 4 + length
                if control & rawdicom.MCH_LAST:
                    elements = rawdicom.command_elements(command)
                    return StoreResult(
                        status=struct.unpack("<H", elements[0x0900])[0], elements=elements
                    )

    def release(self) -> None:
        self._sock.sendall(rawdicom.RELEASE_RQ_PDU)
        reply = rawdicom.read_pdu(self._sock)
        if reply.pdu_type != rawdicom.RELEASE_RP:
            raise ConnectionError(f"PDU 0x{reply.pdu_type:02X} instead of A-RELEASE-RP")
        self._sock.close()

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._sock.close()
