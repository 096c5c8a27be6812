"""DIMSE command sets: read the sender's requests, write the router's answers.

Command sets are small and always implicit VR little endian. Reading them
is on every instance's path, so it is a flat parse of our own; writing them
(only for the router's own answers) goes through pynetdicom's codec.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pynetdicom.dsutils import encode

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
NO_DATA_SET = 0x0101
DATA_SET_PRESENT = 0x0000

_ERROR_COMMENT_LIMIT = 64
_UID_VALUE = re.compile(r"[0-9.]{1,64}")
_ELEMENT = struct.Struct("<HHL")


class CommandError(ValueError):
    """A command set that cannot be decoded or lacks required elements."""


@dataclass(frozen=True, slots=True)
class Command:
    """The fields of a request command the router acts on."""

    field: int
    message_id: int
    has_data_set: bool
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True, slots=True)
class Response:
    """The fields of a C-STORE response the router reports on."""

    message_id: int
    status: int
    error_comment: str


def _elements(raw: bytes) -> dict[int, bytes]:
    """Split an implicit VR little endian command set into {tag: value}.

    Command sets are a flat list of group 0000 elements with defined
    lengths, so a few lines of our own replace a general pydicom decode,
    which cost more than everything else the router does per instance.
    """
    elements: dict[int, bytes] = {}
    offset = 0
    end = len(raw)
    while offset < end:
        if end - offset < 8:
            raise CommandError(f"command set truncated at byte {offset}")
        group, element, length = _ELEMENT.unpack_from(raw, offset)
        offset += 8
        if length == 0xFFFFFFFF or offset + length > end:
            raise CommandError(f"element ({group:04X},{element:04X}) runs past the command set")
        if group != 0x0000:
            raise CommandError(f"element ({group:04X},{element:04X}) outside group 0000")
        elements[element] = raw[offset : offset + length]
        offset += length
    return elements


def _us(elements: dict[int, bytes], element: int, name: str, *, what: str) -> int:
    value = elements.get(element)
    if value is None:
        raise CommandError(f"{what} lacks a required element: {name}")
    if len(value) != 2:
        raise CommandError(f"{what} lacks a required element: {name} has length {len(value)}")
    return int.from_bytes(value, "little")


def _text(elements: dict[int, bytes], element: int) -> str:
    return elements.get(element, b"").decode("ascii", "replace").rstrip("\0 ")


def parse_request(raw: bytes) -> Command:
    """Decode a request command set (C-STORE-RQ, C-ECHO-RQ, or anything else)."""
    elements = _elements(raw)
    return Command(
        field=_us(elements, 0x0100, "CommandField", what="command set"),
        message_id=_us(elements, 0x0110, "MessageID", what="command set"),
        has_data_set=_us(elements, 0x0800, "CommandDataSetType", what="command set") != NO_DATA_SET,
        sop_class_uid=_text(elements, 0x0002),
        sop_instance_uid=_text(elements, 0x1000),
    )


def parse_response(raw: bytes) -> tuple[int, Response]:
    """Decode a gateway's response command set: (command field, response)."""
    elements = _elements(raw)
    return _us(elements, 0x0100, "CommandField", what="response"), Response(
        message_id=_us(elements, 0x0120, "MessageIDBeingRespondedTo", what="response"),
        status=_us(elements, 0x0900, "Status", what="response"),
        error_comment=_text(elements, 0x0902),
    )


def is_uid(value: str) -> bool:
    """Whether ``value`` can be a UID on the wire: 1 to 64 digits and dots.

    Lenient on purpose (leading zeros and empty components pass): it keeps
    out what no peer can use, not what a strict validator would flag.
    """
    return _UID_VALUE.fullmatch(value) is not None


def _uid_or_none(value: str) -> str | None:
    """``value`` if it can be written back as a UI element, else None.

    A request's UIDs are echoed in our responses; one that is no UID at all
    (a hostile or garbled command set) is left out rather than failing the
    encoding: the Affected SOP Class and Instance UIDs of a response are
    optional (PS3.7 9.3.1.2, 9.3.5.2).
    """
    return value if is_uid(value) else None


def _encode(dataset: Dataset) -> bytes:
    body = encode(dataset, True, True)
    if body is None:
        raise CommandError("command set could not be encoded")
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


def store_response(
    *,
    request: Command,
    status: int,
    error_comment: str | None = None,
    offending: Sequence[int] = (),
) -> bytes:
    """Encode the router's own C-STORE-RSP for ``request``.

    ``offending``: the tags for Offending Element (0000,0901), where the
    status has one (PS3.4 Table B.2-1).
    """
    dataset = Dataset()
    sop_class = _uid_or_none(request.sop_class_uid)
    if sop_class:
        dataset.AffectedSOPClassUID = sop_class
    dataset.CommandField = C_STORE_RSP
    dataset.MessageIDBeingRespondedTo = request.message_id
    dataset.CommandDataSetType = NO_DATA_SET
    dataset.Status = status
    sop_instance = _uid_or_none(request.sop_instance_uid)
    if sop_instance:
        dataset.AffectedSOPInstanceUID = sop_instance
    if offending:
        dataset.OffendingElement = list(offending)
    if error_comment:
        # LO: at most 64 characters, no backslash.
        dataset.ErrorComment = error_comment.replace("\\", "/")[:_ERROR_COMMENT_LIMIT]
    return _encode(dataset)


def echo_response(*, request: Command, status: int = 0x0000) -> bytes:
    """Encode the C-ECHO-RSP: the router itself answers Verification."""
    dataset = Dataset()
    dataset.AffectedSOPClassUID = _uid_or_none(request.sop_class_uid) or "1.2.840.10008.1.1"
    dataset.CommandField = C_ECHO_RSP
    dataset.MessageIDBeingRespondedTo = request.message_id
    dataset.CommandDataSetType = NO_DATA_SET
    dataset.Status = status
    return _encode(dataset)
