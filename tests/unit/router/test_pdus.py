"""Upper-layer framing on plain bytes: PDV splitting, P-DATA-TF encoding, PDU reads.

This is the router's data path: every byte of every instance passes through
these functions, so framing errors would corrupt instances or let a peer's
garbage through as data.
"""

from __future__ import annotations

import io
import random
import socket
import struct
import threading
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gatewaypool_router import pdus
from gatewaypool_router.pdus import (
    MCH_COMMAND,
    MCH_LAST,
    P_DATA_TF,
    PeerClosedError,
    ProtocolError,
    iter_pdvs,
    pdv_frames,
    read_pdu,
    send_buffers,
)


def pdv(context_id: int, control: int, data: bytes) -> bytes:
    """One encoded PDV item: length, context ID, control header, data."""
    return struct.pack(">LBB", len(data) + 2, context_id, control) + data


def pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BxL", pdu_type, len(body)) + body


def bytes_reader(data: bytes) -> io.BufferedReader:
    return io.BufferedReader(io.BytesIO(data))  # type: ignore[arg-type]


@pytest.fixture
def socket_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    with left, right:
        yield left, right


# --- iter_pdvs ---------------------------------------------------------------


def test_iter_pdvs_one() -> None:
    (only,) = iter_pdvs(pdv(1, MCH_COMMAND | MCH_LAST, b"command"))
    assert only.context_id == 1
    assert only.control == MCH_COMMAND | MCH_LAST
    assert only.is_command
    assert only.is_last
    assert bytes(only.data) == b"command"


def test_iter_pdvs_several_in_order() -> None:
    body = pdv(1, MCH_COMMAND | MCH_LAST, b"cmd") + pdv(3, 0x00, b"frag-1") + pdv(3, MCH_LAST, b"")
    found = list(iter_pdvs(body))
    assert [(p.context_id, p.control, bytes(p.data)) for p in found] == [
        (1, MCH_COMMAND | MCH_LAST, b"cmd"),
        (3, 0x00, b"frag-1"),
        (3, MCH_LAST, b""),
    ]
    assert [p.is_command for p in found] == [True, False, False]
    assert [p.is_last for p in found] == [True, False, True]


@pytest.mark.parametrize("cut", [1, 3, 5])
def test_iter_pdvs_truncated_pdv_header(cut: int) -> None:
    body = pdv(1, MCH_LAST, b"data") + pdv(1, MCH_LAST, b"more")[:cut]
    with pytest.raises(ProtocolError, match="truncated PDV header"):
        list(iter_pdvs(body))


@pytest.mark.parametrize("item_length", [0, 1])
def test_iter_pdvs_item_length_below_two(item_length: int) -> None:
    body = struct.pack(">LBB", item_length, 1, MCH_LAST) + b"xxxx"
    with pytest.raises(ProtocolError, match=f"PDV length {item_length} "):
        list(iter_pdvs(body))


@pytest.mark.parametrize("excess", [1, 2, 1000, 0xFFFFFFFF - 6])
def test_iter_pdvs_length_past_the_end(excess: int) -> None:
    good = pdv(1, MCH_LAST, b"data")
    bad = struct.pack(">LBB", 6 + excess, 1, MCH_LAST) + b"abcd"
    with pytest.raises(ProtocolError, match="does not fit its PDU"):
        list(iter_pdvs(good + bad))


@pytest.mark.parametrize("body", [b"", b"\x00", b"\x00\x00\x00\x02\x01"])
def test_iter_pdvs_empty_or_headerless_body(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        list(iter_pdvs(body))


def test_iter_pdvs_allows_an_empty_pdv() -> None:
    (only,) = iter_pdvs(pdv(5, MCH_LAST, b""))
    assert only.context_id == 5
    assert len(only.data) == 0


# --- pdv_frames --------------------------------------------------------------


def read_all_pdus(data: bytes, *, max_body: int) -> list[pdus.Pdu]:
    reader = bytes_reader(data)
    found = []
    while True:
        try:
            found.append(read_pdu(reader, max_body=max_body))
        except PeerClosedError as exc:
            assert str(exc) == "connection closed", "stream ended inside a PDU"
            return found


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.integers(0, 300_000),
    seed=st.integers(0, 2**32 - 1),
    max_body=st.one_of(st.just(0), st.integers(4096, 262_144)),
    control=st.sampled_from([0x00, MCH_COMMAND, MCH_LAST, MCH_COMMAND | MCH_LAST]),
    context_id=st.integers(1, 255).filter(lambda n: n % 2 == 1),
)
@example(size=300_000, seed=1, max_body=4096, control=MCH_LAST, context_id=1)
@example(size=300_000, seed=2, max_body=0, control=MCH_COMMAND | MCH_LAST, context_id=3)
@example(size=262_138, seed=3, max_body=262_144, control=MCH_LAST, context_id=5)  # exactly fits
@example(size=262_139, seed=4, max_body=262_144, control=MCH_LAST, context_id=5)  # one byte over
@example(size=0, seed=5, max_body=4096, control=MCH_LAST, context_id=7)
def test_pdv_frames_round_trip(
    size: int, seed: int, max_body: int, control: int, context_id: int
) -> None:
    data = random.Random(seed).randbytes(size)
    frames = pdv_frames(context_id, control, memoryview(data), max_body=max_body)
    wire = b"".join(bytes(frame) for frame in frames)

    found = read_all_pdus(wire, max_body=max_body or len(wire))
    assert found, "no PDU at all"
    pieces = []
    for unit in found:
        assert unit.type == P_DATA_TF
        assert struct.unpack(">L", unit.header[2:6])[0] == len(unit.body)
        if max_body > 0:
            assert len(unit.body) <= max_body
        # One PDV per PDU, as the router writes them.
        (value,) = iter_pdvs(unit.body)
        assert value.context_id == context_id
        pieces.append(value)
    assert b"".join(bytes(p.data) for p in pieces) == data
    if max_body == 0:
        assert len(pieces) == 1
    else:
        assert len(pieces) == max(1, -(-size // (max_body - 6)))
    for piece in pieces[:-1]:
        assert not piece.is_last
        assert len(piece.data) > 0
    assert pieces[-1].is_last == bool(control & MCH_LAST)
    assert all(p.is_command == bool(control & MCH_COMMAND) for p in pieces)
    assert all(p.control & ~(MCH_COMMAND | MCH_LAST) == 0 for p in pieces)


def test_pdv_frames_do_not_copy_the_data() -> None:
    data = bytearray(b"x" * 10_000)
    frames = pdv_frames(1, MCH_LAST, memoryview(data), max_body=4096)
    views = [f for f in frames if isinstance(f, memoryview)]
    assert sum(len(v) for v in views) == len(data)
    data[0:1] = b"y"  # the frames see the caller's buffer, not a copy
    assert bytes(views[0][:1]) == b"y"


# --- read_pdu ----------------------------------------------------------------


def socket_reader(pair: tuple[socket.socket, socket.socket], data: bytes) -> io.BufferedReader:
    writer, reading = pair
    writer.sendall(data)  # small: fits in the socket buffer, no thread needed
    writer.shutdown(socket.SHUT_WR)
    return pdus.open_reader(reading, buffer_size=65536)


MakeReader = Callable[[bytes], io.BufferedReader]


@pytest.fixture(params=["bytesio", "socketpair"])
def make_reader(request: pytest.FixtureRequest) -> Iterator[MakeReader]:
    """A reader over the given bytes: BytesIO, or a real socket via ``open_reader``."""
    if request.param == "bytesio":
        yield bytes_reader
    else:
        left, right = socket.socketpair()
        with left, right:
            yield lambda data: socket_reader((left, right), data)


def test_read_pdu_reads_consecutive_pdus(make_reader: MakeReader) -> None:
    release = pdus.RELEASE_RQ_PDU
    data = pdu(P_DATA_TF, pdv(1, MCH_LAST, b"abc")) + release + pdus.abort_pdu()
    reader = make_reader(data)
    first = read_pdu(reader, max_body=1024)
    assert (first.type, first.body) == (P_DATA_TF, pdv(1, MCH_LAST, b"abc"))
    assert first.raw() == data[: 6 + len(first.body)]
    second = read_pdu(reader, max_body=1024)
    assert (second.type, second.raw()) == (pdus.RELEASE_RQ, release)
    third = read_pdu(reader, max_body=1024)
    assert third.type == pdus.ABORT
    assert third.body == b"\x00\x00\x02\x00"
    with pytest.raises(PeerClosedError, match=r"^connection closed$"):
        read_pdu(reader, max_body=1024)


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0x10, 0xFF])
def test_read_pdu_unknown_type(make_reader: MakeReader, pdu_type: int) -> None:
    with pytest.raises(ProtocolError, match=f"unknown PDU type 0x{pdu_type:02X}"):
        read_pdu(make_reader(pdu(pdu_type, b"\x00" * 4)), max_body=1024)


def test_read_pdu_length_over_max_body(make_reader: MakeReader) -> None:
    with pytest.raises(ProtocolError, match="PDU length 1025 exceeds the limit 1024"):
        read_pdu(make_reader(pdu(P_DATA_TF, b"\x00" * 1025)), max_body=1024)


def test_read_pdu_length_at_max_body(make_reader: MakeReader) -> None:
    body = pdv(1, MCH_LAST, b"z" * 1018)
    assert len(body) == 1024
    assert read_pdu(make_reader(pdu(P_DATA_TF, body)), max_body=1024).body == body


def test_read_pdu_closed_before_a_pdu(make_reader: MakeReader) -> None:
    with pytest.raises(PeerClosedError, match=r"^connection closed$"):
        read_pdu(make_reader(b""), max_body=1024)


@pytest.mark.parametrize("cut", [1, 5, 6, 7, 20])
def test_read_pdu_closed_mid_pdu(make_reader: MakeReader, cut: int) -> None:
    whole = pdu(P_DATA_TF, pdv(1, MCH_LAST, b"x" * 20))
    with pytest.raises(PeerClosedError, match=r"^connection closed mid-PDU$"):
        read_pdu(make_reader(whole[:cut]), max_body=1024)


def test_read_pdu_waits_for_a_pdu_sent_in_pieces(
    socket_pair: tuple[socket.socket, socket.socket],
) -> None:
    writer, reading = socket_pair
    body = pdv(1, MCH_LAST, bytes(range(256)) * 4000)  # ~1 MB: bigger than the buffers
    whole = pdu(P_DATA_TF, body)
    sender = threading.Thread(target=lambda: [writer.sendall(whole), writer.close()])
    sender.start()
    reader = pdus.open_reader(reading, buffer_size=4096)
    got = read_pdu(reader, max_body=len(body))
    sender.join()
    assert got.body == body


# --- send_buffers ------------------------------------------------------------


def collect(sock: socket.socket, sink: list[bytes]) -> threading.Thread:
    def run() -> None:
        while chunk := sock.recv(1 << 20):
            sink.append(chunk)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def many_buffers(seed: int) -> list[bytes | memoryview]:
    rng = random.Random(seed)
    big = rng.randbytes(3_000_000)
    buffers: list[bytes | memoryview] = []
    for index in range(1500):  # more than one sendmsg's 512 buffers, three times over
        kind = index % 5
        if kind == 0:
            buffers.append(b"")  # empty buffers are legal and skipped
        elif kind == 4:
            start = rng.randrange(0, len(big) - 200_000)
            buffers.append(memoryview(big)[start : start + rng.randrange(1, 200_000)])
        else:
            buffers.append(rng.randbytes(rng.randrange(1, 300)))
    return buffers


@pytest.mark.parametrize("timeout", [None, 5.0], ids=["blocking", "timeout"])
def test_send_buffers_delivers_the_exact_concatenation(
    socket_pair: tuple[socket.socket, socket.socket], timeout: float | None
) -> None:
    sender, receiver = socket_pair
    # With a timeout Python drives the socket non-blocking, so sendmsg
    # returns after partial writes and the resumption logic is exercised.
    sender.settimeout(timeout)
    buffers = many_buffers(seed=7)
    received: list[bytes] = []
    reader = collect(receiver, received)
    send_buffers(sender, buffers)
    sender.shutdown(socket.SHUT_WR)
    reader.join(timeout=30)
    assert not reader.is_alive()
    assert b"".join(received) == b"".join(bytes(b) for b in buffers)


class ChokedSocket:
    """A socket whose sendmsg writes at most ``limit`` bytes, like a full kernel buffer."""

    def __init__(self, sock: socket.socket, limit: int) -> None:
        self._sock = sock
        self._limit = limit
        self.calls: list[int] = []

    def sendmsg(
        self, buffers: list[bytes | memoryview], ancdata: list[object] | None = None, flags: int = 0
    ) -> int:
        self.calls.append(len(buffers))
        room = self._limit
        taken: list[bytes | memoryview] = []
        for buffer in buffers:
            if room == 0:
                break
            piece = memoryview(buffer)[:room]
            taken.append(piece)
            room -= len(piece)
        return self._sock.sendmsg(taken, [], flags)


@pytest.mark.parametrize("limit", [1, 4097, 100_003])
def test_send_buffers_resumes_after_partial_writes(
    socket_pair: tuple[socket.socket, socket.socket], limit: int
) -> None:
    sender, receiver = socket_pair
    if limit == 1:
        rng = random.Random(limit)
        buffers: list[bytes | memoryview] = [rng.randbytes(rng.randrange(0, 5)) for _ in range(700)]
    else:
        buffers = many_buffers(seed=limit)
    choked = ChokedSocket(sender, limit)
    received: list[bytes] = []
    reader = collect(receiver, received)
    send_buffers(choked, buffers)  # type: ignore[arg-type]
    sender.shutdown(socket.SHUT_WR)
    reader.join(timeout=30)
    assert b"".join(received) == b"".join(bytes(b) for b in buffers)
    assert max(choked.calls) <= 512, "more buffers in one sendmsg than IOV_MAX allows"
    assert 0 not in choked.calls, "sendmsg called with nothing to send"


def test_send_buffers_nothing_to_send(socket_pair: tuple[socket.socket, socket.socket]) -> None:
    sender, _ = socket_pair
    choked = ChokedSocket(sender, 10)
    send_buffers(choked, [b"", memoryview(b"")])  # type: ignore[arg-type]
    assert choked.calls == []


@pytest.mark.parametrize(
    ("pdvs", "whole"),
    [
        ([(1, MCH_COMMAND | MCH_LAST, b"rsp")], b"rsp"),
        ([(1, MCH_COMMAND, b"rsp")], None),  # more of the command follows
        ([(1, MCH_LAST, b"data")], None),  # a data set fragment
        ([(1, MCH_COMMAND, b"rs"), (1, MCH_COMMAND | MCH_LAST, b"p")], None),  # two PDVs
    ],
)
def test_sole_command_is_only_a_whole_command_in_the_only_pdv(
    pdvs: list[tuple[int, int, bytes]], whole: bytes | None
) -> None:
    body = b"".join(pdv(*each) for each in pdvs)
    assert pdus.sole_command(body) == whole
    if whole is not None:  # what the general split gives too
        assert b"".join(bytes(p.data) for p in iter_pdvs(body)) == whole
