"""DIMSE command sets, checked against pynetdicom's own encoder and decoder.

The router answers senders with command sets it encodes itself and reads
the requests senders encode with their own toolkits; pynetdicom stands in
for both ends here, so a field in the wrong place or a wrong group length
shows up as a decode mismatch.
"""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from pydicom.dataset import Dataset
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ, C_STORE_RSP, DIMSEMessage
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.dsutils import decode, encode

from gatewaypool_router import dimse
from gatewaypool_router.dimse import Command, CommandError

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
INSTANCE_UID = "1.2.826.0.1.3680043.8.498.12345678901234567890"


def command_bytes(message: DIMSEMessage, *, max_pdu: int = 16) -> bytes:
    """The command set as a sender puts it on the wire, from its command PDVs.

    A small ``max_pdu`` splits it into many fragments, as a sender with a
    tiny maximum PDU length would.
    """
    command = b""
    data_set = b""
    fragments = list(message.encode_msg(1, max_pdu))
    for p_data in fragments:
        for context_id, value in p_data.presentation_data_value_list:
            assert context_id == 1
            if value[0] & 0x01:
                command += value[1:]
            else:
                data_set += value[1:]
    assert len(fragments) > 1
    return command


def store_request_bytes(
    *, message_id: int = 7, sop_instance_uid: str = INSTANCE_UID, with_data: bool = True
) -> bytes:
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = CT_IMAGE_STORAGE
    primitive.AffectedSOPInstanceUID = sop_instance_uid
    primitive.Priority = 0x0002
    if with_data:
        primitive.DataSet = BytesIO(b"\x08\x00\x16\x00" + b"\x00" * 64)
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return command_bytes(message)


def decode_command(raw: bytes) -> Dataset:
    return decode(BytesIO(raw), True, True)


def assert_group_length_right(raw: bytes) -> None:
    group, element, length = struct.unpack_from("<HHL", raw, 0)
    assert (group, element, length) == (0x0000, 0x0000, 4)
    (value,) = struct.unpack_from("<L", raw, 8)
    assert value == len(raw) - 12
    assert decode_command(raw).CommandGroupLength == len(raw) - 12


def store_request(**changes: object) -> Command:
    fields: dict[str, object] = {
        "field": dimse.C_STORE_RQ,
        "message_id": 42,
        "has_data_set": True,
        "sop_class_uid": CT_IMAGE_STORAGE,
        "sop_instance_uid": INSTANCE_UID,
    }
    fields.update(changes)
    return Command(**fields)  # type: ignore[arg-type]


# --- responses we write ------------------------------------------------------


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA701, 0xC211, 0xFFFF])
def test_store_response_round_trip(status: int) -> None:
    raw = dimse.store_response(request=store_request(message_id=42), status=status)
    decoded = decode_command(raw)
    assert decoded.CommandField == 0x8001
    assert decoded.MessageIDBeingRespondedTo == 42
    assert decoded.Status == status
    assert decoded.AffectedSOPClassUID == CT_IMAGE_STORAGE
    assert decoded.AffectedSOPInstanceUID == INSTANCE_UID
    assert decoded.CommandDataSetType == 0x0101
    assert "ErrorComment" not in decoded
    assert_group_length_right(raw)


def test_store_response_without_instance_uid_omits_it() -> None:
    raw = dimse.store_response(request=store_request(sop_instance_uid=""), status=0xC214)
    decoded = decode_command(raw)
    assert "AffectedSOPInstanceUID" not in decoded
    assert decoded.Status == 0xC214
    assert_group_length_right(raw)


@pytest.mark.parametrize("uid", ["1.2\ufffd3", "1.2.abc", "1.2 3", "1" * 65])
def test_store_response_leaves_out_uids_that_are_none(uid: str) -> None:
    # Found by the PDU fuzzer: a non-ASCII UID failed the encoding and crashed the association.
    request = store_request(sop_class_uid=uid, sop_instance_uid=uid)
    decoded = decode_command(dimse.store_response(request=request, status=0xC210))
    assert "AffectedSOPClassUID" not in decoded
    assert "AffectedSOPInstanceUID" not in decoded
    assert decoded.Status == 0xC210
    echo = Command(dimse.C_ECHO_RQ, 3, False, uid, "")
    assert decode_command(dimse.echo_response(request=echo)).AffectedSOPClassUID == VERIFICATION


@pytest.mark.parametrize("message_id", [0, 1, 0xFFFF])
def test_store_response_message_id_range(message_id: int) -> None:
    raw = dimse.store_response(request=store_request(message_id=message_id), status=0)
    assert decode_command(raw).MessageIDBeingRespondedTo == message_id


def test_store_response_error_comment_is_a_valid_lo() -> None:
    comment = "gateway GW@gw-0:104 said \\ no: " + "x" * 100
    raw = dimse.store_response(request=store_request(), status=0xA703, error_comment=comment)
    decoded = decode_command(raw)
    expected = comment.replace("\\", "/")[:64]
    assert decoded.ErrorComment == expected
    assert len(decoded.ErrorComment) == 64
    assert "\\" not in decoded.ErrorComment
    assert_group_length_right(raw)


@pytest.mark.parametrize("comment", ["short", "a\\b", "odd"])
def test_store_response_short_error_comment_kept(comment: str) -> None:
    raw = dimse.store_response(request=store_request(), status=0xA702, error_comment=comment)
    assert decode_command(raw).ErrorComment == comment.replace("\\", "/")
    assert_group_length_right(raw)


def test_store_response_empty_error_comment_omitted() -> None:
    raw = dimse.store_response(request=store_request(), status=0xA702, error_comment="")
    assert "ErrorComment" not in decode_command(raw)


def test_echo_response_round_trip() -> None:
    request = Command(dimse.C_ECHO_RQ, 9, False, VERIFICATION, "")
    raw = dimse.echo_response(request=request)
    decoded = decode_command(raw)
    assert decoded.CommandField == 0x8030
    assert decoded.MessageIDBeingRespondedTo == 9
    assert decoded.Status == 0x0000
    assert decoded.AffectedSOPClassUID == VERIFICATION
    assert decoded.CommandDataSetType == 0x0101
    assert "AffectedSOPInstanceUID" not in decoded
    assert_group_length_right(raw)


def test_echo_response_defaults_the_sop_class_and_passes_a_status() -> None:
    request = Command(dimse.C_ECHO_RQ, 10, False, "", "")
    decoded = decode_command(dimse.echo_response(request=request, status=0x0211))
    assert decoded.AffectedSOPClassUID == VERIFICATION
    assert decoded.Status == 0x0211


# --- requests we read --------------------------------------------------------


def test_parse_request_of_a_pynetdicom_c_store_rq() -> None:
    command = dimse.parse_request(store_request_bytes(message_id=7))
    assert command == Command(
        field=0x0001,
        message_id=7,
        has_data_set=True,
        sop_class_uid=CT_IMAGE_STORAGE,
        sop_instance_uid=INSTANCE_UID,
    )


def test_parse_request_odd_length_uid_loses_its_padding() -> None:
    command = dimse.parse_request(store_request_bytes(sop_instance_uid="1.2.3"))
    assert command.sop_instance_uid == "1.2.3"


def test_parse_request_c_store_rq_without_data_set() -> None:
    command = dimse.parse_request(store_request_bytes(with_data=False))
    assert command.field == dimse.C_STORE_RQ
    assert command.has_data_set is False


def test_parse_request_of_a_pynetdicom_c_echo_rq() -> None:
    primitive = C_ECHO()
    primitive.MessageID = 65535
    primitive.AffectedSOPClassUID = VERIFICATION
    message = C_ECHO_RQ()
    message.primitive_to_message(primitive)
    command = dimse.parse_request(command_bytes(message))
    assert command == Command(0x0030, 65535, False, VERIFICATION, "")


def test_parse_request_then_respond() -> None:
    request = dimse.parse_request(store_request_bytes(message_id=300))
    field, response = dimse.parse_response(dimse.store_response(request=request, status=0xB007))
    assert field == dimse.C_STORE_RSP
    assert (response.message_id, response.status, response.error_comment) == (300, 0xB007, "")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"garbage!",
        b"\xff" * 64,
        bytes(range(256)),
        # A well-formed element, but not a command: no CommandField.
        struct.pack("<HHL", 0x0008, 0x0016, 4) + b"1.2\x00",
    ],
    ids=["empty", "text", "ones", "ramp", "no-command-field"],
)
def test_parse_request_garbage(raw: bytes) -> None:
    with pytest.raises(CommandError):
        dimse.parse_request(raw)


def test_parse_request_missing_message_id() -> None:
    dataset = Dataset()
    dataset.CommandField = 0x0001
    dataset.CommandDataSetType = 0x0000
    raw = encode(dataset, True, True)
    assert raw is not None
    with pytest.raises(CommandError, match="lacks a required element"):
        dimse.parse_request(raw)


def element(group: int, elem: int, value: bytes) -> bytes:
    """One implicit VR little endian element."""
    return struct.pack("<HHL", group, elem, len(value)) + value


def us(value: int) -> bytes:
    return struct.pack("<H", value)


def test_parse_request_message_id_of_wrong_length() -> None:
    raw = (
        element(0x0000, 0x0100, us(0x0001))
        + element(0x0000, 0x0110, b"\x07")  # MessageID: one byte of a US
        + element(0x0000, 0x0800, us(0x0101))
    )
    with pytest.raises(CommandError):
        dimse.parse_request(raw)


def test_parse_response_status_of_wrong_length() -> None:
    # A gateway answering this must count as a gateway failure (GatewayError via
    # CommandError in upstream.py), not crash the sender's association.
    raw = (
        element(0x0000, 0x0100, us(0x8001))
        + element(0x0000, 0x0120, us(1))
        + element(0x0000, 0x0900, b"\x00\x00\x00")  # Status: three bytes
    )
    with pytest.raises(CommandError):
        dimse.parse_response(raw)


def test_parse_response_command_field_of_wrong_length() -> None:
    raw = element(0x0000, 0x0100, b"\x01")
    with pytest.raises(CommandError, match="CommandField"):
        dimse.parse_response(raw)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns on cut UIDs
def test_parse_request_every_truncation_is_a_command_error_or_whole() -> None:
    """A command cut anywhere never escapes as another exception type."""
    raw = store_request_bytes()
    whole = dimse.parse_request(raw)
    for cut in range(len(raw)):
        try:
            command = dimse.parse_request(raw[:cut])
        except CommandError:
            continue
        # Cut inside trailing optional elements: what was parsed must be right.
        assert command.field == whole.field
        assert command.message_id == whole.message_id


# --- responses we read -------------------------------------------------------


def store_response_bytes(*, status: int, error_comment: str | None = None) -> bytes:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 77
    primitive.AffectedSOPClassUID = CT_IMAGE_STORAGE
    primitive.AffectedSOPInstanceUID = INSTANCE_UID
    primitive.Status = status
    if error_comment is not None:
        primitive.ErrorComment = error_comment
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    return command_bytes(message)


@pytest.mark.parametrize("status", [0x0000, 0xB000, 0xA700, 0xC000])
def test_parse_response_of_a_pynetdicom_c_store_rsp(status: int) -> None:
    field, response = dimse.parse_response(store_response_bytes(status=status))
    assert field == 0x8001
    assert response == dimse.Response(message_id=77, status=status, error_comment="")


def test_parse_response_keeps_the_error_comment() -> None:
    raw = store_response_bytes(status=0xA700, error_comment="disk full")
    _, response = dimse.parse_response(raw)
    assert response.error_comment == "disk full"


def test_parse_response_without_status() -> None:
    dataset = Dataset()
    dataset.CommandField = 0x8001
    dataset.MessageIDBeingRespondedTo = 1
    raw = encode(dataset, True, True)
    assert raw is not None
    with pytest.raises(CommandError, match="response lacks a required element"):
        dimse.parse_response(raw)


@pytest.mark.parametrize("raw", [b"", b"\x00" * 3, b"not a command set at all"])
def test_parse_response_garbage(raw: bytes) -> None:
    with pytest.raises(CommandError):
        dimse.parse_response(raw)
