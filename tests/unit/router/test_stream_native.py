"""The native stream (``_native.stream_rest``, ``stream_pdus``) against the Python path.

The gateway must receive byte for byte what ``Forwarder._splice_rest``
would send it: the PDV re-framed for its maximum PDU (``pdus.piece_headers``),
the data unchanged, the reader's buffered bytes first. A data set whose last
byte leaves it malformed is never completed at the gateway: the final byte
is held back. Each side's failure is told apart and counted, because a
sender's failure ends the association while a gateway's fails one instance.
The PDU loop streams only what Python would stream without deciding: any
other PDU or PDV is handed back with its header, and bytes it read ahead go
back to the Python reader.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset

from gatewaypool_router import pdus, splice
from gatewaypool_router.scanner import IMPLEMENTATIONS, new_scanner

pytestmark = pytest.mark.skipif(
    "native" not in IMPLEMENTATIONS or not splice.available(),
    reason="needs the native extension and splice",
)

EXPLICIT_LE = "1.2.840.10008.1.2.1"
CONTEXT_ID = 3


def _dataset(pixels: int) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID = "1.2.3.4.6"
    ds.PatientName = "Doe^Jane"
    ds.add_new(0x7FE00010, "OW", bytes(range(256)) * (pixels // 256))
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    pydicom.filewriter.write_dataset(buffer, ds)
    return buffer.getvalue()


@dataclass
class Run:
    code: int
    taken: int
    forwarded: int
    errno: int
    received: bytes
    waits: list[tuple[int, int, int]] = field(default_factory=list)


@pytest.fixture
def splicer() -> Iterator[splice.Splicer]:
    made = splice.Splicer(native=True)
    yield made
    made.close()


def _run(
    splicer: splice.Splicer,
    data: bytes,
    *,
    head: int,
    prefix: int = 0,
    max_pdu: int = 0,
    sent: bytes | None = None,
    close_gateway: bool = False,
    sender_timeout: float | None = 5.0,
) -> Run:
    """Scan `head` bytes, then stream the rest of `data` as one last PDV.

    `sent`: what the sender actually writes of the rest (then it closes);
    `prefix` of the rest's bytes come as already-read bytes.
    """
    from gatewaypool_router import _native

    scanner = new_scanner(EXPLICIT_LE)
    assert isinstance(scanner, _native.Scanner)
    scanner.feed(data[:head])
    assert scanner.study_uid == "1.2.3.4.6"
    rest = data[head:]
    on_wire = rest[prefix:] if sent is None else sent
    sender_app, sender = socket.socketpair()
    gateway, gateway_app = socket.socketpair()
    sender.settimeout(sender_timeout)
    gateway.settimeout(5.0)
    received = bytearray()
    if close_gateway:
        gateway_app.close()

    def write() -> None:
        # The router's side may stop reading (a failed gateway): then this fails.
        with sender_app, contextlib.suppress(OSError):
            sender_app.sendall(on_wire)
            if sent is not None:
                sender_app.shutdown(socket.SHUT_WR)
                sender_app.recv(1)

    def read() -> None:
        while chunk := gateway_app.recv(1 << 16):
            received.extend(chunk)

    threads = [threading.Thread(target=write)]
    if not close_gateway:
        threads.append(threading.Thread(target=read))
    for thread in threads:
        thread.start()
    pipe_read, pipe_write, capacity = splicer.pipe()
    waits: list[tuple[int, int, int]] = []
    try:
        code, taken, forwarded, errno = _native.stream_rest(
            scanner,
            (
                sender.fileno(),
                gateway.fileno(),
                pipe_read,
                pipe_write,
                capacity,
                max_pdu,
                sender.gettimeout(),
                gateway.gettimeout(),
            ),
            CONTEXT_ID,
            pdus.MCH_LAST,
            len(rest),
            rest[:prefix],
            lambda what, taken, forwarded: waits.append((what, taken, forwarded)),
        )
    finally:
        sender.close()
        gateway.close()
        for thread in threads:
            thread.join(10)
        if not close_gateway:
            gateway_app.close()
    return Run(code, taken, forwarded, errno, bytes(received), waits)


def _framed(rest: bytes, max_pdu: int) -> bytes:
    out = bytearray()
    at = 0
    for header, length in pdus.piece_headers(
        CONTEXT_ID, pdus.MCH_LAST, len(rest), max_body=max_pdu
    ):
        out += header + rest[at : at + length]
        at += length
    return bytes(out)


@pytest.mark.parametrize("max_pdu", [0, 16384, 65536, 4000])
@pytest.mark.parametrize("prefix", [0, 6])
def test_the_gateway_gets_what_the_python_path_sends(
    splicer: splice.Splicer, max_pdu: int, prefix: int
) -> None:
    data = _dataset(200_000)
    run = _run(splicer, data, head=300, prefix=prefix, max_pdu=max_pdu)
    rest = data[300:]
    assert (run.code, run.errno) == (0, 0)
    assert run.taken == run.forwarded == len(rest)
    assert run.received == _framed(rest, max_pdu)
    # Progress is reported before waits with counts that only grow.
    assert all(0 <= forwarded <= taken <= len(rest) for _, taken, forwarded in run.waits)


def test_a_truncated_data_set_is_never_completed_at_the_gateway(
    splicer: splice.Splicer,
) -> None:
    data = _dataset(200_000)
    # The last PDV says the data set ends 100 bytes early: the pixel data is short.
    truncated = data[:-100]
    run = _run(splicer, truncated, head=300)
    rest = truncated[300:]
    assert run.code == 1  # malformed at the end
    assert run.taken == len(rest)
    assert run.forwarded == len(rest) - 1
    assert len(run.received) < len(_framed(rest, 0))
    assert run.received == _framed(rest, 0)[: len(run.received)]


def test_a_sender_that_closes_mid_pdv_is_told_apart(splicer: splice.Splicer) -> None:
    data = _dataset(200_000)
    rest = data[300:]
    run = _run(splicer, data, head=300, sent=rest[:50_000])
    assert run.code == 3  # sender closed
    assert run.taken == 50_000


def test_a_silent_sender_times_out_and_says_whom_it_waited_on(
    splicer: splice.Splicer,
) -> None:
    data = _dataset(200_000)
    rest = data[300:]
    sender_app, sender = socket.socketpair()
    with sender_app:
        sender_app.sendall(rest[:10_000])
        run = _run_with(splicer, data, sender, head=300)
    assert run.code == 2  # sender timed out
    assert run.taken == 10_000
    assert run.waits and run.waits[-1] == (0, 10_000, 10_000)  # on the sender


def _run_with(splicer: splice.Splicer, data: bytes, sender: socket.socket, *, head: int) -> Run:
    """Stream from a sender socket the test drives itself (0.3 s timeout)."""
    from gatewaypool_router import _native

    scanner = new_scanner(EXPLICIT_LE)
    assert isinstance(scanner, _native.Scanner)
    scanner.feed(data[:head])
    gateway, gateway_app = socket.socketpair()
    sender.settimeout(0.3)
    gateway.settimeout(5.0)
    received = bytearray()

    def read() -> None:
        while chunk := gateway_app.recv(1 << 16):
            received.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    pipe_read, pipe_write, capacity = splicer.pipe()
    waits: list[tuple[int, int, int]] = []
    try:
        code, taken, forwarded, errno = _native.stream_rest(
            scanner,
            (
                sender.fileno(),
                gateway.fileno(),
                pipe_read,
                pipe_write,
                capacity,
                0,
                sender.gettimeout(),
                gateway.gettimeout(),
            ),
            CONTEXT_ID,
            pdus.MCH_LAST,
            len(data) - head,
            b"",
            lambda what, taken, forwarded: waits.append((what, taken, forwarded)),
        )
    finally:
        sender.close()
        gateway.close()
        reader.join(10)
        gateway_app.close()
    return Run(code, taken, forwarded, errno, bytes(received), waits)


def test_a_gateway_that_closed_fails_the_instance_not_the_sender(
    splicer: splice.Splicer,
) -> None:
    data = _dataset(200_000)
    run = _run(splicer, data, head=300, close_gateway=True, sender_timeout=1.0)
    assert run.code in (6, 8)  # gateway failed (8: bytes left in the pipe)
    assert run.errno in (32, 104)  # EPIPE, ECONNRESET
    assert run.forwarded == 0


# -- whole P-DATA-TF PDUs (_native.stream_pdus) -----------------------------------


def _pdu(*pdvs: tuple[int, int, bytes]) -> bytes:
    body = b"".join(
        len(data).__add__(2).to_bytes(4, "big") + bytes([context, control]) + data
        for context, control, data in pdvs
    )
    return bytes([pdus.P_DATA_TF, 0]) + len(body).to_bytes(4, "big") + body


def _stream_pdus(
    splicer: splice.Splicer,
    head: bytes,
    wire: bytes,
    *,
    max_pdu: int = 0,
    prefix: int = 0,
    response: tuple[int, bytes] | None = None,
    hang_up: bool = False,
) -> tuple[Any, bytes]:
    """Scan `head`, then let the native loop take `wire` (PDUs) from the sender.

    `response`: once the gateway received that many bytes it sends these
    (and the native loop is asked to read the response); with `hang_up`,
    it then closes its side for writing.
    """
    from gatewaypool_router import _native

    scanner = new_scanner(EXPLICIT_LE)
    assert isinstance(scanner, _native.Scanner)
    scanner.feed(head)
    sender_app, sender = socket.socketpair()
    gateway, gateway_app = socket.socketpair()
    sender.settimeout(5.0)
    gateway.settimeout(5.0)
    received = bytearray()

    def write() -> None:
        with contextlib.suppress(OSError):
            sender_app.sendall(wire[prefix:])
            sender_app.shutdown(socket.SHUT_WR)

    def read() -> None:
        while chunk := gateway_app.recv(1 << 16):
            received.extend(chunk)
            if response is not None and len(received) == response[0]:
                gateway_app.sendall(response[1])
                if hang_up:
                    gateway_app.shutdown(socket.SHUT_WR)

    threads = [threading.Thread(target=write), threading.Thread(target=read)]
    for thread in threads:
        thread.start()
    pipe_read, pipe_write, capacity = splicer.pipe()
    try:
        streamed = _native.stream_pdus(
            scanner,
            (
                sender.fileno(),
                gateway.fileno(),
                pipe_read,
                pipe_write,
                capacity,
                max_pdu,
                sender.gettimeout(),
                gateway.gettimeout(),
            ),
            CONTEXT_ID,
            1 << 20,
            wire[:prefix],
            None if response is None else 1 << 16,
            lambda what, taken, forwarded: None,
        )
    finally:
        gateway.close()
        threads[1].join(10)
        sender_app.close()
        sender.close()
        threads[0].join(10)
        gateway_app.close()
    return streamed, bytes(received)


def _framed_pdvs(pdvs: list[tuple[int, bytes]], max_pdu: int) -> bytes:
    out = bytearray()
    for control, data in pdvs:
        at = 0
        for header, length in pdus.piece_headers(CONTEXT_ID, control, len(data), max_body=max_pdu):
            out += header + data[at : at + length]
            at += length
    return bytes(out)


@pytest.mark.parametrize("max_pdu", [0, 16384, 5000])
@pytest.mark.parametrize("prefix", [0, 6, 12])
def test_a_data_sets_pdus_reach_the_gateway_as_the_python_path_frames_them(
    splicer: splice.Splicer, max_pdu: int, prefix: int
) -> None:
    data = _dataset(200_000)
    rest = data[300:]
    # PDUs of 16 KiB with one PDV each, then one PDU holding two PDVs.
    cut = len(rest) - 3000
    pieces = [rest[at : min(at + 16384, cut)] for at in range(0, cut, 16384)]
    pdvs = [(0, piece) for piece in pieces] + [(0, rest[cut:-1000]), (pdus.MCH_LAST, rest[-1000:])]
    wire = b"".join(_pdu((CONTEXT_ID, control, piece)) for control, piece in pdvs[:-2])
    wire += _pdu(*((CONTEXT_ID, control, piece) for control, piece in pdvs[-2:]))
    trailer = pdus.RELEASE_RQ_PDU
    streamed, received = _stream_pdus(
        splicer, data[:300], wire + trailer, max_pdu=max_pdu, prefix=prefix
    )
    assert (streamed.code, streamed.pause) == (0, 0)  # the data set's end
    assert streamed.taken == streamed.forwarded == len(rest)
    assert streamed.pdu_left == 0
    assert received == _framed_pdvs(pdvs, max_pdu)
    # What was read ahead goes back to the Python reader: none of it is lost.
    assert trailer.startswith(streamed.unread)


def test_a_pdu_other_than_p_data_pauses_with_its_header(splicer: splice.Splicer) -> None:
    data = _dataset(50_000)
    rest = data[300:]
    wire = _pdu((CONTEXT_ID, 0, rest[:20_000])) + pdus.abort_pdu(pdus.ABORT_SOURCE_USER)
    streamed, received = _stream_pdus(splicer, data[:300], wire)
    assert (streamed.code, streamed.pause) == (0, 1)
    assert streamed.header == pdus.abort_pdu(pdus.ABORT_SOURCE_USER)[:6]
    assert streamed.taken == 20_000
    assert received == _framed_pdvs([(0, rest[:20_000])], 0)


@pytest.mark.parametrize(
    "context, control, size",
    [(CONTEXT_ID, pdus.MCH_COMMAND, 100), (CONTEXT_ID + 2, 0, 100), (CONTEXT_ID, 0, 0)],
    ids=["command", "other_context", "empty"],
)
def test_a_pdv_that_is_not_the_data_sets_pauses_with_its_header(
    splicer: splice.Splicer, context: int, control: int, size: int
) -> None:
    data = _dataset(50_000)
    rest = data[300:]
    foreign = bytes(size)
    wire = _pdu((CONTEXT_ID, 0, rest[:10_000]), (context, control, foreign))
    streamed, _ = _stream_pdus(splicer, data[:300], wire)
    assert (streamed.code, streamed.pause) == (0, 2)
    assert streamed.header == (size + 2).to_bytes(4, "big") + bytes([context, control])
    assert streamed.pdu_left == size
    assert streamed.taken == 10_000


def test_a_pdv_overrunning_its_pdu_is_left_to_python(splicer: splice.Splicer) -> None:
    data = _dataset(50_000)
    rest = data[300:]
    pdu = bytearray(_pdu((CONTEXT_ID, 0, rest[:1000])))
    pdu[6:10] = (5000).to_bytes(4, "big")  # longer than the PDU holds
    streamed, received = _stream_pdus(splicer, data[:300], bytes(pdu))
    assert (streamed.code, streamed.pause, streamed.taken) == (0, 2, 0)
    assert received == b""


def test_a_sender_closing_between_pdus_is_told_from_one_closing_mid_pdu(
    splicer: splice.Splicer,
) -> None:
    data = _dataset(50_000)
    rest = data[300:]
    whole = _pdu((CONTEXT_ID, 0, rest[:10_000]))
    streamed, _ = _stream_pdus(splicer, data[:300], whole)
    assert (streamed.code, streamed.taken) == (9, 10_000)  # closed between PDUs
    streamed, _ = _stream_pdus(splicer, data[:300], whole + whole[:3])
    assert (streamed.code, streamed.taken) == (3, 10_000)  # closed mid-PDU
    assert not streamed.gateway_pdu_open


# -- the gateway's response, read in the same call ------------------------------


def _response_pdu(*pdvs: tuple[int, bytes]) -> bytes:
    return _pdu(*((CONTEXT_ID, control, data) for control, data in pdvs))


@pytest.mark.parametrize("extra", [b"", pdus.RELEASE_RQ_PDU], ids=["alone", "then_release"])
def test_the_response_is_read_once_the_data_set_is_out(
    splicer: splice.Splicer, extra: bytes
) -> None:
    data = _dataset(50_000)
    rest = data[300:]
    command = bytes(range(90))
    wire = _pdu((CONTEXT_ID, pdus.MCH_LAST, rest))
    expected = _framed_pdvs([(pdus.MCH_LAST, rest)], 0)
    reply = _response_pdu((pdus.MCH_COMMAND | pdus.MCH_LAST, command)) + extra
    streamed, received = _stream_pdus(splicer, data[:300], wire, response=(len(expected), reply))
    assert (streamed.code, streamed.pause) == (0, 0)
    assert received == expected
    assert (streamed.response_code, streamed.response) == (1, command)
    # What came after the response goes back to the upstream's reader.
    assert streamed.response_unread == extra


def test_a_response_in_several_pdvs_is_left_to_python_whole(splicer: splice.Splicer) -> None:
    data = _dataset(50_000)
    rest = data[300:]
    wire = _pdu((CONTEXT_ID, pdus.MCH_LAST, rest))
    expected = _framed_pdvs([(pdus.MCH_LAST, rest)], 0)
    reply = _response_pdu(
        (pdus.MCH_COMMAND, bytes(40)), (pdus.MCH_COMMAND | pdus.MCH_LAST, bytes(50))
    )
    streamed, _ = _stream_pdus(splicer, data[:300], wire, response=(len(expected), reply))
    assert (streamed.response_code, streamed.response) == (2, None)
    assert streamed.response_unread == reply


def test_a_gateway_closing_instead_of_answering_leaves_the_bytes_to_python(
    splicer: splice.Splicer,
) -> None:
    data = _dataset(50_000)
    rest = data[300:]
    wire = _pdu((CONTEXT_ID, pdus.MCH_LAST, rest))
    expected = _framed_pdvs([(pdus.MCH_LAST, rest)], 0)
    # Half a response, then the gateway hangs up.
    reply = _response_pdu((pdus.MCH_COMMAND | pdus.MCH_LAST, bytes(90)))[:20]
    streamed, _ = _stream_pdus(
        splicer, data[:300], wire, response=(len(expected), reply), hang_up=True
    )
    assert (streamed.response_code, streamed.response) == (2, None)
    assert streamed.response_unread == reply
