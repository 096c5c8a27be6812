"""The router's association to a gateway, against a gateway that stops reading.

The gateway stand-in is a plain socket: it answers the A-ASSOCIATE-RQ with an
A-ASSOCIATE-AC and then never reads again, like a gateway whose disk stalled.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from pydicom.uid import ExplicitVRLittleEndian

from gatewaypool.bucketmap import Gateway
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
