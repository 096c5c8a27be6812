"""DIMSE command sets: read the sender's requests, write the router's answers.

Command sets are small and always implicit VR little endian; pydicom and
pynetdicom's codec decode and encode them. Only data sets stream.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from io import BytesIO

from pydicom.dataset import Dataset
from pynetdicom.dsutils import decode, encode

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
NO_DATA_SET = 0x0101
DATA_SET_PRESENT = 0x0000

_ERROR_COMMENT_LIMIT = 64


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


def _decode(raw: bytes) -> Dataset:
    try:
        dataset = decode(BytesIO(raw), True, True)
        dataset.CommandField  # noqa: B018 - force the lazy parse to surface errors here
    except Exception as exc:  # pydicom raises several types on garbage
        raise CommandError(f"undecodable command set: {exc}") from exc
    return dataset


def parse_request(raw: bytes) -> Command:
    """Decode a request command set (C-STORE-RQ, C-ECHO-RQ, or anything else)."""
    dataset = _decode(raw)
    try:
        return Command(
            field=int(dataset.CommandField),
            message_id=int(dataset.MessageID),
            has_data_set=int(dataset.CommandDataSetType) != NO_DATA_SET,
            sop_class_uid=str(dataset.get("AffectedSOPClassUID", "")),
            sop_instance_uid=str(dataset.get("AffectedSOPInstanceUID", "")),
        )
    except Exception as exc:  # pydicom parses lazily: a bad element raises on access
        raise CommandError(f"command set lacks a required element: {exc}") from exc


def parse_response(raw: bytes) -> tuple[int, Response]:
    """Decode a gateway's response command set: (command field, response)."""
    dataset = _decode(raw)
    try:
        return int(dataset.CommandField), Response(
            message_id=int(dataset.MessageIDBeingRespondedTo),
            status=int(dataset.Status),
            error_comment=str(dataset.get("ErrorComment", "")),
        )
    except Exception as exc:  # pydicom parses lazily: a bad element raises on access
        raise CommandError(f"response lacks a required element: {exc}") from exc


def _encode(dataset: Dataset) -> bytes:
    body = encode(dataset, True, True)
    if body is None:
        raise CommandError("command set could not be encoded")
    return struct.pack("<HHLL", 0x0000, 0x0000, 4, len(body)) + body


def store_response(*, request: Command, status: int, error_comment: str | None = None) -> bytes:
    """Encode the router's own C-STORE-RSP for ``request``."""
    dataset = Dataset()
    dataset.AffectedSOPClassUID = request.sop_class_uid
    dataset.CommandField = C_STORE_RSP
    dataset.MessageIDBeingRespondedTo = request.message_id
    dataset.CommandDataSetType = NO_DATA_SET
    dataset.Status = status
    if request.sop_instance_uid:
        dataset.AffectedSOPInstanceUID = request.sop_instance_uid
    if error_comment:
        # LO: at most 64 characters, no backslash.
        dataset.ErrorComment = error_comment.replace("\\", "/")[:_ERROR_COMMENT_LIMIT]
    return _encode(dataset)


def echo_response(*, request: Command, status: int = 0x0000) -> bytes:
    """Encode the C-ECHO-RSP: the router itself answers Verification."""
    dataset = Dataset()
    dataset.AffectedSOPClassUID = request.sop_class_uid or "1.2.840.10008.1.1"
    dataset.CommandField = C_ECHO_RSP
    dataset.MessageIDBeingRespondedTo = request.message_id
    dataset.CommandDataSetType = NO_DATA_SET
    dataset.Status = status
    return _encode(dataset)
