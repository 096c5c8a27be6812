"""The splicing path's pure pieces and its two socket helpers.

Framing: a PDV re-framed for a gateway's maximum PDU must carry exactly the
bytes the copying path would send, split at the same places. The reader:
the splicing path may only splice what no user-space buffer holds. The
splicer: bytes arrive whole and in order, and each side's failure is told
apart, because a sender's failure ends the association while a gateway's
fails one instance.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewaypool_router import pdus, splice
from gatewaypool_router.pdus import MCH_COMMAND, MCH_LAST, PeerClosedError, SocketReader
from gatewaypool_router.scanner import IMPLEMENTATIONS

needs_splice = pytest.mark.skipif(not splice.available(), reason="no splice on this system")


@pytest.fixture(params=["python", "native"])
def splicer(request: pytest.FixtureRequest) -> Iterator[splice.Splicer]:
    """A splicer whose loop runs in Python, or in Rust (router/native)."""
    native = request.param == "native"
    if native and "native" not in IMPLEMENTATIONS:
        pytest.fail("gatewaypool_router._native is not built: run ./dev.sh to build it")
    made = splice.Splicer(native=native)
    yield made
    made.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    with left, right:
        yield left, right


# -- framing -------------------------------------------------------------------


@given(length=st.integers(0, 1 << 20), max_body=st.one_of(st.just(0), st.integers(7, 1 << 18)))
def test_pieces_cover_the_pdv_and_fit_the_peer(length: int, max_body: int) -> None:
    pieces = pdus.piece_lengths(length, max_body=max_body)
    assert sum(pieces) == length
    assert pieces
    if max_body:
        assert all(piece + 6 <= max_body for piece in pieces)
        # Every piece but the last is as full as the peer allows.
        assert all(piece == max_body - 6 for piece in pieces[:-1])
    else:
        assert pieces == [length]
    assert all(pieces) or pieces == [0]


@given(
    data=st.binary(max_size=5000),
    max_body=st.one_of(st.just(0), st.integers(7, 3000)),
    context_id=st.integers(1, 255).filter(lambda n: n % 2 == 1),
    control=st.sampled_from([0, MCH_LAST, MCH_COMMAND, MCH_COMMAND | MCH_LAST]),
)
def test_piece_headers_frame_exactly_as_the_copying_path(
    data: bytes, max_body: int, context_id: int, control: int
) -> None:
    copied = b"".join(pdus.pdv_frames(context_id, control, memoryview(data), max_body=max_body))
    framed = bytearray()
    offset = 0
    for header, length in pdus.piece_headers(context_id, control, len(data), max_body=max_body):
        framed += header + data[offset : offset + length]
        offset += length
    assert bytes(framed) == copied
    # And the router's own parser reads the data back, in order.
    back = bytearray()
    offset = 0
    while offset < len(framed):
        length = int.from_bytes(framed[offset + 2 : offset + 6], "big")
        for pdv in pdus.iter_pdvs(bytes(framed[offset + 6 : offset + 6 + length])):
            back += pdv.data
        offset += 6 + length
    assert bytes(back) == data


def test_only_the_final_piece_keeps_the_last_bit() -> None:
    headers = pdus.piece_headers(1, MCH_LAST, 10, max_body=10)
    assert [length for _, length in headers] == [4, 4, 2]
    assert [header[11] for header, _ in headers] == [0, 0, MCH_LAST]
    assert headers[0][0] == bytes([4, 0, 0, 0, 0, 10, 0, 0, 0, 6, 1, 0])


@pytest.mark.parametrize(("item_length", "room"), [(1, 10), (0, 10), (11, 10)])
def test_impossible_pdv_lengths_are_protocol_errors(item_length: int, room: int) -> None:
    with pytest.raises(pdus.ProtocolError, match="does not fit"):
        pdus.check_pdv_header(item_length, room)


def test_a_pdv_filling_its_pdu_is_fine() -> None:
    pdus.check_pdv_header(10, 10)
    pdus.check_pdv_header(2, 10)


# -- SocketReader ------------------------------------------------------------------


def test_reader_reads_no_further_ahead_than_asked(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    left.sendall(bytes(range(100)))
    reader = SocketReader(right, capacity=64, read_ahead=12)
    assert reader.read(6) == bytes(range(6))
    assert reader.buffered == 6  # one recv of at most 12 bytes
    assert reader.read_some(100) == bytes(range(6, 12))  # buffered bytes first
    assert reader.buffered == 0
    assert right.recv(4) == bytes(range(12, 16))  # the rest is still in the socket


def test_reader_returns_exact_reads_across_recvs_and_large_bodies(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    left, right = pair
    payload = bytes(i % 251 for i in range(300_000))
    sender = threading.Thread(target=left.sendall, args=(payload,))
    sender.start()
    reader = SocketReader(right, capacity=4096, read_ahead=4096)
    got = reader.read(10) + reader.read(5000) + reader.read(100_000)
    got += reader.read(len(payload) - len(got))
    sender.join()
    assert got == payload


def test_reader_reports_a_close(pair: tuple[socket.socket, socket.socket]) -> None:
    left, right = pair
    left.sendall(b"abc")
    left.close()
    reader = SocketReader(right, capacity=64, read_ahead=64)
    assert reader.read(6) == b"abc"  # short only at the end of the stream
    with pytest.raises(PeerClosedError):
        reader.read_some(10)


# -- Splicer ------------------------------------------------------------------------


@needs_splice
def test_splicer_moves_bytes_whole_and_in_order(splicer: splice.Splicer) -> None:
    source_w, source_r = socket.socketpair()
    sink_w, sink_r = socket.socketpair()
    payload = bytes(i % 253 for i in range(3 * splice.PIPE_SIZE + 17))
    received = bytearray()

    def drain() -> None:
        while len(received) < len(payload):
            received.extend(sink_r.recv(1 << 16))

    with source_w, source_r, sink_w, sink_r:
        source_r.settimeout(10)
        sink_w.settimeout(10)
        threads = [
            threading.Thread(target=source_w.sendall, args=(payload,)),
            threading.Thread(target=drain),
        ]
        for thread in threads:
            thread.start()
        splicer.move(source_r, sink_w, len(payload), more=False)
        for thread in threads:
            thread.join()
    assert bytes(received) == payload


@needs_splice
def test_a_silent_sender_is_a_timeout_and_a_closed_one_a_close(splicer: splice.Splicer) -> None:
    source_w, source_r = socket.socketpair()
    sink_w, sink_r = socket.socketpair()
    with source_w, source_r, sink_w, sink_r:
        source_r.settimeout(0.2)
        waits: list[bool] = []
        with pytest.raises(TimeoutError):
            splicer.move(source_r, sink_w, 10, more=False, on_wait=waits.append)
        assert waits == [False]
        source_w.sendall(b"12345")
        source_w.close()
        with pytest.raises(PeerClosedError):
            splicer.move(source_r, sink_w, 10, more=False)
        assert sink_r.recv(10) == b"12345"


@needs_splice
def test_a_gateway_that_stops_reading_is_a_sink_timeout_with_what_was_taken(
    splicer: splice.Splicer,
) -> None:
    source_w, source_r = socket.socketpair()
    sink_w, sink_r = socket.socketpair()
    size = 16 << 20  # far more than the socket buffers of the silent sink hold
    with source_w, source_r, sink_w, sink_r:
        source_r.settimeout(10)
        sink_w.settimeout(0.3)
        feeder = threading.Thread(target=_send_quietly, args=(source_w, size))
        feeder.start()
        with pytest.raises(splice.SinkError) as caught:
            splicer.move(source_r, sink_w, size, more=False)
        assert caught.value.timeout
        assert 0 < caught.value.consumed < size
        source_r.close()
        feeder.join()


def _send_quietly(sock: socket.socket, size: int) -> None:
    with contextlib.suppress(OSError):  # the test closes the other end
        sock.sendall(bytes(size))


@needs_splice
def test_a_closed_gateway_is_a_sink_error_and_the_pipe_is_renewed(splicer: splice.Splicer) -> None:
    source_w, source_r = socket.socketpair()
    sink_w, sink_r = socket.socketpair()
    with source_w, source_r, sink_w:
        source_r.settimeout(5)
        sink_w.settimeout(5)
        sink_r.close()
        source_w.sendall(b"x" * 100)
        with pytest.raises(splice.SinkError) as caught:
            splicer.move(source_r, sink_w, 100, more=False)
        assert not caught.value.timeout
        assert caught.value.consumed == 100
        # A fresh pipe: what the failed call held is gone, the next call works.
        other_w, other_r = socket.socketpair()
        with other_w, other_r:
            source_w.sendall(b"fresh")
            splicer.move(source_r, other_w, 5, more=False)
            assert other_r.recv(5) == b"fresh"
