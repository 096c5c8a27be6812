"""The router's association to a gateway, against a gateway that stops reading.

The gateway stand-in is a plain socket: it answers the A-ASSOCIATE-RQ with an
A-ASSOCIATE-AC and then never reads again, like a gateway whose disk stalled.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from gatewaypool.bucketmap import Gateway
from gatewaypool_local.peers.process import wait_until
from gatewaypool_router import negotiation, pdus
from gatewaypool_router.statuses import Status
from gatewaypool_router.upstream import GatewayError, Upstream
from support.rawdicom import read_pdu

CT = "1.2.840.10008.5.1.4.1.1.2"
CONTEXT = negotiation.AcceptedContext(1, CT, ExplicitVRLittleEndian)


@contextmanager
def deaf_gateway() -> Iterator[tuple[Gateway, list[socket.socket]]]:
    """A gateway that accepts one association, then never reads."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def serve() -> None:
        conn, _ = server.accept()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        request = read_pdu(conn)
        raw = bytes([request.pdu_type, 0]) + len(request.body).to_bytes(4, "big") + request.body
        accept, _ = negotiation.accept(negotiation.parse_request(raw), max_pdu=16384)
        conn.sendall(accept)
        accepted.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    port = server.getsockname()[1]
    try:
        yield Gateway(name="gw-0", host="127.0.0.1", port=port, ae_title="DEAF"), accepted
    finally:
        thread.join(timeout=10)
        for conn in accepted:
            conn.close()
        server.close()


def drain(conn: socket.socket) -> str:
    """Read until the end: ``"reset"`` or ``"closed"`` (an orderly close)."""
    conn.settimeout(10)
    try:
        while conn.recv(1 << 20):
            pass
    except ConnectionResetError:
        return "reset"
    return "closed"


def test_a_gateway_that_stops_reading_mid_pdu_gets_a_reset_not_an_abort() -> None:
    with deaf_gateway() as (gateway, accepted):
        upstream = Upstream(
            gateway=gateway,
            address=(gateway.host, gateway.port),
            contexts=[CONTEXT],
            calling_ae="ROUTER",
            max_pdu=16384,
            timeout=0.5,
            connect_timeout=5,
        )
        upstream.open()
        body = bytes(64 << 20)  # far more than both socket buffers hold
        header = bytes([pdus.P_DATA_TF, 0]) + len(body).to_bytes(4, "big")
        with pytest.raises(GatewayError) as raised:
            upstream.send([header, body])
        assert raised.value.status is Status.GATEWAY_TIMEOUT
        assert not upstream.is_open
        # An A-ABORT after a PDU cut short would be read as that PDU's bytes.
        [conn] = accepted
        assert drain(conn) == "reset"


def _opened(gateway: Gateway, accepted: list[socket.socket]) -> tuple[Upstream, socket.socket]:
    """An association to the stand-in, and the stand-in's end of it."""
    upstream = Upstream(
        gateway=gateway,
        address=(gateway.host, gateway.port),
        contexts=[CONTEXT],
        calling_ae="ROUTER",
        max_pdu=16384,
        timeout=5,
        connect_timeout=5,
    )
    upstream.open()
    wait_until(lambda: bool(accepted), timeout=5, what="the stand-in's connection")
    return upstream, accepted[0]


def _when_it_arrives(upstream: Upstream) -> None:
    """Wait (with a deadline) until the gateway's bytes reach the router's socket."""
    readable, _, _ = select.select([upstream.fileno()], [], [], 5)
    assert readable, "nothing from the gateway within 5 s"


def test_an_idle_association_is_alive_until_the_gateway_aborts_it() -> None:
    """The zero-timeout look before reuse: nothing waiting is alive; an A-ABORT is not."""
    with deaf_gateway() as (gateway, accepted):
        upstream, conn = _opened(gateway, accepted)
        assert upstream.check_alive()
        assert upstream.check_alive(), "looking consumes nothing"
        conn.sendall(pdus.abort_pdu(pdus.ABORT_SOURCE_USER))  # as Orthanc's DicomScpTimeout
        _when_it_arrives(upstream)
        assert not upstream.check_alive()
        assert not upstream.is_open
        assert upstream.ended_by == "aborted"


def test_a_gateway_release_request_is_answered_before_reuse() -> None:
    with deaf_gateway() as (gateway, accepted):
        upstream, conn = _opened(gateway, accepted)
        conn.sendall(pdus.RELEASE_RQ_PDU)
        _when_it_arrives(upstream)
        assert not upstream.check_alive()
        assert upstream.ended_by == "released"
        conn.settimeout(5)
        assert read_pdu(conn).pdu_type == pdus.RELEASE_RP


def test_a_closed_connection_is_not_reused() -> None:
    with deaf_gateway() as (gateway, accepted):
        upstream, conn = _opened(gateway, accepted)
        conn.shutdown(socket.SHUT_WR)
        _when_it_arrives(upstream)
        assert not upstream.check_alive()
        assert upstream.ended_by == "closed"


@contextmanager
def rejecting_gateway(result: int, source: int, reason: int) -> Iterator[Gateway]:
    """A gateway that answers one A-ASSOCIATE-RQ with this A-ASSOCIATE-RJ."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            read_pdu(conn)
            conn.sendall(negotiation.reject(result=result, source=source, reason=reason))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield Gateway(name="gw-0", host="127.0.0.1", port=server.getsockname()[1], ae_title="RJ")
    finally:
        thread.join(timeout=10)
        server.close()


@pytest.mark.parametrize(
    ("rejection", "status"),
    [
        # Permanent, calling AE title not recognized: "Refused: not authorized".
        ((1, 1, 3), Status.GATEWAY_REFUSED_CALLER),
        # Permanent for any other reason: "Processing failure", not worth a retry.
        ((1, 1, 7), Status.GATEWAY_REJECTED),
        ((1, 1, 1), Status.GATEWAY_REJECTED),
        ((1, 2, 2), Status.GATEWAY_REJECTED),
        # Transient (busy, local limit): out of resources, retry later.
        ((2, 3, 1), Status.GATEWAY_UNREACHABLE),
        ((2, 3, 2), Status.GATEWAY_UNREACHABLE),
        ((2, 1, 3), Status.GATEWAY_UNREACHABLE),
    ],
)
def test_a_gateway_rejection_is_retryable_only_when_transient(
    rejection: tuple[int, int, int], status: Status
) -> None:
    with rejecting_gateway(*rejection) as gateway:
        upstream = Upstream(
            gateway=gateway,
            address=(gateway.host, gateway.port),
            contexts=[CONTEXT],
            calling_ae="GATEWAYPOOL",
            max_pdu=16384,
            timeout=5,
            connect_timeout=5,
        )
        with pytest.raises(GatewayError) as failed:
            upstream.open()
    assert failed.value.status is status
    assert failed.value.answered, "a gateway that rejects is reachable"
    assert "result={} source={} reason={}".format(*rejection) in failed.value.reason
    assert not upstream.is_open


#: A P-DATA-TF whose one PDV claims more bytes than the PDU holds.
_BAD_PDV = bytes([pdus.P_DATA_TF, 0, 0, 0, 0, 8]) + (100).to_bytes(4, "big") + bytes([1, 3, 0, 0])
#: A PDU of a type PS3.8 does not define.
_UNKNOWN_PDU = bytes([0x09, 0, 0, 0, 0, 4, 0, 0, 0, 0])
#: A PDU header announcing more than the router's maximum PDU length.
_OVERSIZED = bytes([pdus.P_DATA_TF, 0]) + (1 << 30).to_bytes(4, "big")
#: A well-formed command PDV, while the router asked nothing of the gateway.
_UNSOLICITED = bytes([pdus.P_DATA_TF, 0, 0, 0, 0, 8]) + (2).to_bytes(4, "big") + bytes([1, 3])

PROVIDER = pdus.ABORT_SOURCE_PROVIDER


@pytest.mark.parametrize(
    ("when", "garbage", "source_reason"),
    [
        ("awaiting-response", _BAD_PDV, (PROVIDER, pdus.REASON_INVALID_PARAMETER)),
        ("awaiting-response", _OVERSIZED, (PROVIDER, pdus.REASON_INVALID_PARAMETER)),
        ("awaiting-response", _UNKNOWN_PDU, (PROVIDER, pdus.REASON_UNRECOGNIZED_PDU)),
        ("idle", _OVERSIZED, (PROVIDER, pdus.REASON_INVALID_PARAMETER)),
        ("idle", _UNKNOWN_PDU, (PROVIDER, pdus.REASON_UNRECOGNIZED_PDU)),
        # A valid PDU at a time DIMSE expects none: the router's own decision.
        ("idle", _UNSOLICITED, (pdus.ABORT_SOURCE_USER, pdus.REASON_NOT_SPECIFIED)),
    ],
    ids=[
        "response-bad-pdv",
        "response-oversized",
        "response-unknown-pdu",
        "idle-oversized",
        "idle-unknown-pdu",
        "idle-unsolicited-data",
    ],
)
def test_a_gateway_breaking_the_protocol_is_aborted_with_the_reason_for_it(
    when: str, garbage: bytes, source_reason: tuple[int, int]
) -> None:
    """PS3.8 Table 9-26: the A-ABORT says who ends it and what was wrong with the PDU."""
    with deaf_gateway() as (gateway, accepted):
        upstream, conn = _opened(gateway, accepted)
        conn.sendall(garbage)
        if when == "idle":
            _when_it_arrives(upstream)
            assert not upstream.check_alive()
        else:
            with pytest.raises(GatewayError) as raised:
                upstream.read_response(1)
            assert raised.value.status is Status.GATEWAY_ABORTED
        conn.settimeout(5)
        abort = read_pdu(conn)
    assert abort.pdu_type == pdus.ABORT
    assert abort.body[2:4] == bytes(source_reason)


def test_a_release_collision_is_answered_and_ends_at_once() -> None:
    """Both ask to release (PS3.8 Sta9, the router the requestor): each answers the other."""
    with deaf_gateway() as (gateway, accepted):
        upstream, conn = _opened(gateway, accepted)
        releasing = threading.Thread(target=upstream.release)
        releasing.start()
        conn.settimeout(5)
        assert read_pdu(conn).pdu_type == pdus.RELEASE_RQ
        conn.sendall(pdus.RELEASE_RQ_PDU)  # the gateway asks too, before answering
        assert read_pdu(conn).pdu_type == pdus.RELEASE_RP
        conn.sendall(pdus.RELEASE_RP_PDU)
        releasing.join(timeout=5)
        assert not releasing.is_alive()
        assert not upstream.is_open
        assert drain(conn) == "closed"
