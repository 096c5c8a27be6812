"""Gateways as sites run them: idle timeouts, releases from the gateway's side.

Orthanc ends an association idle for ``DicomScpTimeout`` seconds with an
A-ABORT (measured with Orthanc 1.10: the connection stays open). A modality
pausing between series on one association must not see that: the router
looks at a reused gateway association before the next instance and opens a
new one when the gateway has ended it.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gatewaypool_local.peers import LOOPBACK, Orthanc, PynetdicomSink, wait_until
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import generate_study
from gatewaypool_router import negotiation
from support import rawdicom
from support.rawscu import RawScu

RouterFactory = Callable[..., RouterProcess]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"


def ct_context(context_id: int = 1, *syntaxes: str) -> rawdicom.PresentationContext:
    return rawdicom.context(context_id, CT_IMAGE_STORAGE, list(syntaxes) or [EXPLICIT_VR_LE])


def test_orthanc_idle_timeout_is_invisible_to_the_sender(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    """Orthanc with DicomScpTimeout 5, a sender pausing 8 s: every instance Success."""
    study = generate_study(tmp_path / "data", study_index=0, instances=4, rows=16, columns=16)
    orthanc = Orthanc(tmp_path / "orthanc", ae_title="ORTHANC", extra_config={"DicomScpTimeout": 5})
    with orthanc:
        # The router's own idle release stays out of the way: Orthanc ends it.
        router = start_router([orthanc], extra_args=["--gateway-idle-release", "60"])
        with RawScu(router.host, router.port, contexts=[ct_context()]) as scu:
            statuses = [scu.store_file(1, path).status for path in study.files[:2]]
            paused = time.monotonic()
            # Orthanc aborts the idle association after 5 s; the router notices it.
            ended = router.wait_events("upstream.ended_by_gateway", timeout=20)
            wait_until(lambda: time.monotonic() - paused >= 8, timeout=10, what="an 8 s pause")
            statuses += [scu.store_file(1, path).status for path in study.files[2:]]
            scu.release()
        held = {item.sop_instance_uid for item in orthanc.wait_for_count(4, timeout=20)}
    assert statuses == [0, 0, 0, 0]
    assert held == set(study.sop_instance_uids)
    assert ended[0]["how"] == "aborted"
    assert (
        router.metric(
            "gatewaypool_router_gateway_association_ends_total",
            gateway="gw-0",
            reason="gateway_aborted",
        )
        == 1
    )


def test_idle_gateway_association_is_released_and_reopened(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    study = generate_study(tmp_path / "data", study_index=1, instances=3, rows=16, columns=16)
    with PynetdicomSink(tmp_path / "sink", ae_title="SINK") as sink:
        router = start_router([sink], extra_args=["--gateway-idle-release", "1"])
        with RawScu(router.host, router.port, contexts=[ct_context()]) as scu:
            first = scu.store_file(1, study.files[0]).status
            released = router.wait_events("upstream.idle_released", timeout=10)
            rest = [scu.store_file(1, path).status for path in study.files[1:]]
            scu.release()
        sink.wait_for_count(3, timeout=20)
    assert [first, *rest] == [0, 0, 0]
    assert released[0]["instances"] == 1
    assert released[0]["idle_seconds"] >= 1
    assert (
        router.metric(
            "gatewaypool_router_gateway_association_ends_total",
            gateway="gw-0",
            reason="idle_release",
        )
        >= 1
    )


class _ReleasingGateway:
    """A Storage SCP that answers each C-STORE, then asks to release (raw protocol).

    No gateway program we can run does this on demand; the router must
    answer an A-RELEASE-RQ from a gateway with an A-RELEASE-RP at once.
    """

    def __init__(self) -> None:
        self._server = socket.create_server((LOOPBACK, 0))
        self.port: int = self._server.getsockname()[1]
        self.release_answers: list[int] = []
        self.associations = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            with conn:
                self._serve(conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        reply = rawdicom.read_pdu(conn)
        raw = struct.pack(">BBL", reply.pdu_type, 0, len(reply.body)) + reply.body
        if reply.pdu_type == rawdicom.ASSOCIATE_RQ:
            request = negotiation.parse_request(raw)
            accept_pdu, _ = negotiation.accept(request, max_pdu=65536)
            conn.sendall(accept_pdu)
            self.associations += 1
        command = b""
        while True:
            pdu = rawdicom.read_pdu(conn)
            if pdu.pdu_type == rawdicom.RELEASE_RQ:
                conn.sendall(bytes((rawdicom.RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0)))
                return
            if pdu.pdu_type != rawdicom.P_DATA_TF:
                return
            length, context_id, control = struct.unpack_from(">LBB", pdu.body)
            if control & rawdicom.MCH_COMMAND:
                command = pdu.body[6 : 4 + length]
            elif control & rawdicom.MCH_LAST:
                elements = rawdicom.command_elements(command)
                rsp = rawdicom.command_set(
                    {
                        0x0002: elements[0x0002],
                        0x0100: 0x8001,
                        0x0120: struct.unpack("<H", elements[0x0110])[0],
                        0x0800: rawdicom.NO_DATA_SET,
                        0x0900: 0x0000,
                        0x1000: elements[0x1000],
                    }
                )
                conn.sendall(
                    rawdicom.p_data_tf(
                        rawdicom.pdv(context_id, rawdicom.MCH_COMMAND | rawdicom.MCH_LAST, rsp)
                    )
                )
                conn.sendall(rawdicom.RELEASE_RQ_PDU)
                answer = rawdicom.read_pdu(conn)
                self.release_answers.append(answer.pdu_type)
                return

    def close(self) -> None:
        self._server.close()


@pytest.fixture
def releasing_gateway() -> Iterator[_ReleasingGateway]:
    gateway = _ReleasingGateway()
    yield gateway
    gateway.close()


def test_gateway_release_request_is_answered(
    start_router: RouterFactory, tmp_path: Path, releasing_gateway: _ReleasingGateway
) -> None:
    study = generate_study(tmp_path / "data", study_index=2, instances=2, rows=16, columns=16)
    router = start_router(
        extra_args=["--gateway", f"RELEASER@{LOOPBACK}:{releasing_gateway.port}"],
    )
    with RawScu(router.host, router.port, contexts=[ct_context()]) as scu:
        first = scu.store_file(1, study.files[0]).status
        # Answered while the sender is silent, not only when it releases.
        wait_until(
            lambda: releasing_gateway.release_answers == [rawdicom.RELEASE_RP],
            timeout=5,
            what="the router's A-RELEASE-RP",
        )
        second = scu.store_file(1, study.files[1]).status
        scu.release()
    assert (first, second) == (0, 0)
    assert releasing_gateway.associations == 2
    ended = router.events("upstream.ended_by_gateway")
    assert [record["how"] for record in ended] == ["released"]
