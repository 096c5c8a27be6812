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
