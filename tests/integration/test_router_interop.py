"""Gateways as sites run them: idle timeouts, releases from the gateway's side.

Orthanc ends an association idle for ``DicomScpTimeout`` seconds with an
A-ABORT (measured with Orthanc 1.10: the connection stays open). A modality
pausing between series on one association must not see that: the router
looks at a reused gateway association before the next instance and opens a
new one when the gateway has ended it.
"""

from __future__ import annotations

import select
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID, generate_uid
from pynetdicom.pdu_primitives import SOPClassCommonExtendedNegotiation
from pynetdicom.presentation import PresentationContext

from gatewaypool.bucketmap import BucketMap, Gateway, dump_map
from gatewaypool_local.peers.dcmtk import StoreSCP, echoscu
from gatewaypool_local.peers.dicomrs import DicomRsStoreSCP, dicom_rs_storescu
from gatewaypool_local.peers.gdcm import gdcmscu
from gatewaypool_local.peers.orthanc import Orthanc
from gatewaypool_local.peers.process import LOOPBACK, PeerError, wait_until
from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import Study, dataset_bytes, generate_study
from gatewaypool_router import negotiation
from gatewaypool_router.acceptance import STORAGE_SERVICE_CLASS
from gatewaypool_router.statuses import retryable
from support import rawdicom
from support.rawscu import RawScu

RouterFactory = Callable[..., RouterProcess]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
EXPLICIT_VR_LE = "1.2.840.10008.1.2.1"
#: A private SOP class (a UID root of no vendor), as Siemens' and GE's are to pynetdicom.
PRIVATE_CLASS = "1.2.826.0.1.3680043.9.3811.77.1"
RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


def ct_context(context_id: int = 1, *syntaxes: str) -> PresentationContext:
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
        #: Associations that carried an instance (the router's probes carry none).
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
                self.associations += 1
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


# -- accepting only what the gateways accept ----------------------------------

JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"


class InstalledStoreSCP(StoreSCP):
    """DCMTK storescp as a site runs it: without ``--accept-all``.

    It then accepts the uncompressed transfer syntaxes only, and (without
    `promiscuous`) only the storage SOP classes of the standard.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        ae_title: str,
        promiscuous: bool = False,
        port: int | None = None,
    ) -> None:
        super().__init__(work_dir, ae_title=ae_title, port=port)
        self._promiscuous = promiscuous

    def _command(self) -> list[str]:
        dropped = {"--accept-all", *(() if self._promiscuous else ("--promiscuous",))}
        return [arg for arg in super()._command() if arg not in dropped]


def _send_preferring_jpeg_ls(host: str, port: int, called: str, plain: Study) -> list[int]:
    """A modality holding each instance in JPEG-LS and able to send it uncompressed.

    It proposes CT in JPEG-LS (context 1, preferred) and in explicit VR
    little endian (context 3), and sends each instance in the first of
    them the acceptor accepted, as modalities do.
    """
    compressed = []
    for path in plain.files:
        target = path.with_suffix(".jls.dcm")
        subprocess.run(["dcmcjpls", str(path), str(target)], check=True, capture_output=True)
        compressed.append(target)
    contexts = [ct_context(1, JPEG_LS_LOSSLESS), ct_context(3, EXPLICIT_VR_LE)]
    with RawScu(host, port, contexts=contexts, called=called) as scu:
        use_jls = scu.accepted(1) == JPEG_LS_LOSSLESS
        assert use_jls or scu.accepted(3) == EXPLICIT_VR_LE
        statuses = [
            scu.store_file(1, jls).status if use_jls else scu.store_file(3, path).status
            for jls, path in zip(compressed, plain.files, strict=True)
        ]
        scu.release()
    return statuses


def test_a_sender_falls_back_to_what_the_gateway_accepts(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    """A sender offering JPEG-LS and uncompressed, storescp taking uncompressed only.

    Straight to the gateway, the JPEG-LS context is refused and the sender
    sends uncompressed; through the router it must be exactly the same, not
    a JPEG-LS context accepted that the gateway then fails instance by
    instance (0x0122).
    """
    study = generate_study(tmp_path / "data", study_index=3, instances=3, rows=32, columns=32)
    routed = InstalledStoreSCP(tmp_path / "routed", ae_title="ROUTED")
    direct = InstalledStoreSCP(tmp_path / "direct", ae_title="DIRECT")
    with routed, direct:
        router = start_router([routed])
        router.wait_events("gateway.probed", timeout=20)
        via_router = _send_preferring_jpeg_ls(router.host, router.port, router.ae_title, study)
        straight = _send_preferring_jpeg_ls(direct.host, direct.port, direct.ae_title, study)
        got = {r.sop_instance_uid: r for r in routed.wait_for_count(3, timeout=20)}
        want = {r.sop_instance_uid: r for r in direct.wait_for_count(3, timeout=20)}
    assert via_router == straight == [0, 0, 0]
    assert set(got) == set(want) == set(study.sop_instance_uids)
    for path in study.files:
        uid = study.sop_instance_uids[study.files.index(path)]
        assert got[uid].transfer_syntax == want[uid].transfer_syntax == EXPLICIT_VR_LE
        assert got[uid].dataset == want[uid].dataset == dataset_bytes(path)
    seeded = router.events("gateway.probed")[0]["seeded"][CT_IMAGE_STORAGE]
    assert JPEG_LS_LOSSLESS not in seeded
    assert EXPLICIT_VR_LE in seeded


def test_a_context_no_gateway_accepts_is_refused_at_negotiation(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    with InstalledStoreSCP(tmp_path / "gw", ae_title="GW") as gateway:
        router = start_router([gateway])
        router.wait_events("gateway.probed", timeout=20)
        contexts = [
            ct_context(1, JPEG_LS_LOSSLESS),
            ct_context(3, JPEG_LS_LOSSLESS, EXPLICIT_VR_LE),
            rawdicom.context(5, PRIVATE_CLASS, [EXPLICIT_VR_LE]),
        ]
        with RawScu(router.host, router.port, contexts=contexts) as scu:
            results = dict(scu.results)
            scu.release()
    assert results[1] == (RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED, "")
    assert results[3] == (0, EXPLICIT_VR_LE)
    assert results[5] == (RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED, "")


def test_configured_transfer_syntaxes_take_precedence(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    with PynetdicomSink(tmp_path / "sink", ae_title="SINK") as sink:
        router = start_router(
            [sink],
            extra_args=[
                "--accepted-transfer-syntax",
                "1.2.840.10008.1.2",
                "--accepted-transfer-syntax",
                EXPLICIT_VR_LE,
            ],
        )
        router.wait_events("gateway.probed", timeout=20)
        contexts = [ct_context(1, EXPLICIT_VR_LE, "1.2.840.10008.1.2", JPEG_LS_LOSSLESS)]
        with RawScu(router.host, router.port, contexts=contexts) as scu:
            results = dict(scu.results)
            scu.release()
    # The sink accepts all three; the configured list says implicit VR first.
    assert results[1] == (0, "1.2.840.10008.1.2")


# -- honest statuses and refusals -----------------------------------------------


class AeCheckingOrthanc(Orthanc):
    """Orthanc accepting associations only from the modalities it knows (DicomAlwaysAllow* off).

    An unknown calling AE title is rejected permanently: "calling AE title
    not recognized" (PS3.8 9.3.4, result 1, source 1, reason 3).
    """

    def __init__(self, work_dir: Path) -> None:
        super().__init__(
            work_dir,
            ae_title="CHECKING",
            extra_config={
                "DicomAlwaysAllowStore": False,
                "DicomAlwaysAllowEcho": False,
                "DicomModalities": {"pacs": ["KNOWN", LOOPBACK, 104]},
            },
        )

    def _is_ready(self) -> bool:
        # Its C-ECHO readiness check would be rejected too: the REST API says it is up.
        try:
            self.rest("/system")
        except (OSError, PeerError):
            return False
        return True


def test_a_permanent_gateway_rejection_is_not_retryable(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    study = generate_study(tmp_path / "data", study_index=4, instances=1, rows=16, columns=16)
    with AeCheckingOrthanc(tmp_path / "orthanc") as orthanc:
        router = start_router([orthanc])
        router.wait_events("gateway.probe_failed", timeout=20)
        with RawScu(router.host, router.port, contexts=[ct_context()]) as scu:
            result = scu.store_file(1, study.files[0])
            scu.release()
    assert result.status == 0x0124  # Refused: not authorized
    assert not retryable(result.status)
    [failed] = router.events("instance.failed")
    assert failed["status_name"] == "GATEWAY_REFUSED_CALLER"
    assert "result=1 source=1 reason=3" in failed["reason"]


def test_no_reachable_gateway_refuses_associations_until_one_answers(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    sink = PynetdicomSink(tmp_path / "sink", ae_title="LATE")
    router = start_router([sink])  # not started: nothing listens on its port
    reply = rawdicom.request_association(router.host, router.port, calling="ECHO", called="X")
    echo = echoscu(router.host, router.port, called_ae=router.ae_title)
    gdcm_echo = gdcmscu(router.host, router.port, called_ae=router.ae_title)
    assert reply.reject_reason == (2, 3, 1)  # transient, presentation, temporary congestion
    assert echo.returncode != 0
    assert "Association Rejected" in echo.stdout + echo.stderr
    assert gdcm_echo.pdus == ("A-ASSOCIATE-RJ",), gdcm_echo.output[-2000:]
    assert gdcm_echo.echo_status is None
    with sink:
        wait_until(
            lambda: echoscu(router.host, router.port, called_ae=router.ae_title).returncode == 0,
            timeout=20,
            what="C-ECHO answered once the gateway listens",
        )
    assert router.metric("gatewaypool_router_refusals_total", reason="no_gateway_reachable") >= 2


def test_with_a_spool_no_reachable_gateway_still_admits_and_spools(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    """With --spool-dir the router can hold what no gateway takes now: C-ECHO succeeds.

    A refusal would be the lie then: the instance is acknowledged once it
    is durable in the spool, and forwarded when its gateway answers.
    """
    study = generate_study(tmp_path / "data", study_index=7, instances=1, rows=16, columns=16)
    sink = PynetdicomSink(tmp_path / "sink", ae_title="LATE")
    router = start_router(
        [sink], extra_args=["--spool-dir", str(tmp_path / "spool"), "--shutdown-grace", "2"]
    )  # the sink is not started: nothing listens on its port
    echo = echoscu(router.host, router.port, called_ae=router.ae_title)
    with RawScu(router.host, router.port, contexts=[ct_context()]) as scu:
        status = scu.store_file(1, study.files[0]).status
        scu.release()
    with sink:
        [held] = sink.wait_for_count(1, timeout=30)
    assert echo.returncode == 0, echo.stdout + echo.stderr
    assert status == 0
    assert held.sop_instance_uid == study.sop_instance_uids[0]
    assert not router.events("association.rejected")


def test_no_map_refuses_associations(start_router: RouterFactory, tmp_path: Path) -> None:
    router = RouterProcess(tmp_path / "router", map_file=tmp_path / "absent.json")
    router.start(wait_ready=False)
    try:
        reply = rawdicom.request_association(router.host, router.port, calling="ECHO", called="X")
    finally:
        router.stop()
    assert reply.reject_reason == (2, 3, 1)
    assert router.events("association.rejected")[0]["reason"] == "no_map"


def test_a_missing_study_uid_names_the_offending_element(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    study = generate_study(tmp_path / "data", study_index=5, instances=1, rows=16, columns=16)
    dataset = pydicom.dcmread(study.files[0])
    del dataset.StudyInstanceUID
    broken = tmp_path / "no-study-uid.dcm"
    dataset.save_as(broken, enforce_file_format=True)
    # Modality (0008,0060) with the VR "??": nobody can tell where its value ends.
    plain = dataset_bytes(study.files[0])
    modality = struct.pack("<HH", 0x0008, 0x0060) + b"CS"
    assert plain.count(modality) == 1
    unreadable = plain.replace(modality, modality[:4] + b"??")
    with PynetdicomSink(tmp_path / "sink", ae_title="SINK") as sink:
        router = start_router([sink])
        with RawScu(router.host, router.port, contexts=[ct_context()]) as scu:
            result = scu.store_file(1, broken)
            malformed = scu.store(
                1,
                sop_class=CT_IMAGE_STORAGE,
                sop_instance=study.sop_instance_uids[0],
                data=unreadable,
            )
            # The data set ends 10 bytes into what its pixel data's length promised.
            cut = scu.store(
                1,
                sop_class=CT_IMAGE_STORAGE,
                sop_instance=study.sop_instance_uids[0],
                data=plain[:-10],
            )
            scu.release()
    assert result.status == 0xA900  # Error: data set does not match SOP class
    assert result.offending_element == struct.pack("<HH", 0x0020, 0x000D)
    assert "StudyInstanceUID" in result.error_comment
    assert malformed.status == 0xC210  # Error: cannot understand
    assert malformed.offending_element == struct.pack("<HH", 0x0008, 0x0060)
    assert "unknown VR" in malformed.error_comment
    assert cut.status == 0xC210
    assert cut.offending_element == struct.pack("<HH", 0x7FE0, 0x0010)
    assert "before the end of a value" in cut.error_comment


# -- upper layer (PS3.8) ------------------------------------------------------


def _associated(router: RouterProcess) -> socket.socket:
    sock = socket.create_connection((router.host, router.port), timeout=10)
    sock.sendall(rawdicom.association_rq(called=router.ae_title))
    assert rawdicom.read_pdu(sock).pdu_type == rawdicom.ASSOCIATE_AC
    return sock


def _until_closed(sock: socket.socket) -> bytes:
    """Everything the router sends until it closes; a reset fails the test."""
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


@pytest.mark.parametrize(
    ("pdu", "source_reason"),
    [
        # An unknown PDU type: provider, unrecognized PDU (AA-8).
        (rawdicom.pdu(0x09, b"\0" * 4), (2, 1)),
        # A second A-ASSOCIATE-RQ during data transfer: provider, unexpected PDU.
        (rawdicom.association_rq(), (2, 2)),
        # A P-DATA-TF on a context never negotiated: provider, invalid parameter value.
        (rawdicom.p_data_tf(rawdicom.pdv(77, 3, b"\0" * 8)), (2, 6)),
        # A DIMSE command the router does not serve (C-FIND): the router's own decision.
        (
            rawdicom.p_data_tf(
                rawdicom.pdv(
                    1,
                    rawdicom.MCH_COMMAND | rawdicom.MCH_LAST,
                    rawdicom.command_set({0x0100: 0x0020, 0x0110: 1, 0x0800: 0x0101}),
                )
            ),
            (0, 0),
        ),
    ],
    ids=["unknown-pdu", "second-rq", "unknown-context", "c-find"],
)
def test_abort_says_who_and_why_and_is_read_not_reset(
    start_router: RouterFactory,
    tmp_path: Path,
    pdu: bytes,
    source_reason: tuple[int, int],
) -> None:
    with PynetdicomSink(tmp_path / "sink", ae_title="SINK") as sink:
        router = start_router([sink])
        with _associated(router) as sock:
            # Bytes the router will never read follow the offending PDU: closing
            # with them unread would reset the connection and lose the A-ABORT.
            sock.sendall(pdu + b"\xee" * 200_000)
            received = _until_closed(sock)
    assert received == bytes((rawdicom.ABORT, 0, 0, 0, 0, 4, 0, 0, *source_reason))


def test_no_association_request_in_time_is_closed_without_abort(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    """ARTIM expiry before any A-ASSOCIATE-RQ: close (AA-2), however slowly bytes dribble."""
    with PynetdicomSink(tmp_path / "sink", ae_title="SINK") as sink:
        router = start_router([sink], extra_args=["--acse-timeout", "1.5"])
        request = rawdicom.association_rq(called=router.ae_title)
        with socket.create_connection((router.host, router.port), timeout=10) as sock:
            started = time.monotonic()
            sent = 0
            try:
                # One byte every 0.2 s: each read is quick, the request never completes.
                while sent < len(request):
                    sock.sendall(request[sent : sent + 1])
                    sent += 1
                    ready, _, _ = select.select([sock], [], [], 0.2)
                    if ready:
                        break
                received = _until_closed(sock)
            except ConnectionResetError:
                received = b"<reset>"
            elapsed = time.monotonic() - started
    assert received == b""
    assert sent < len(request)
    assert elapsed < 6
    assert router.events("connection.refused")[0]["reason"] == "no association request in time"


def test_a_calling_ae_title_of_spaces_is_rejected_not_aborted(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    with PynetdicomSink(tmp_path / "sink", ae_title="SINK") as sink:
        router = start_router([sink])
        request = bytearray(rawdicom.association_rq(calling="X", called=router.ae_title))
        request[26:42] = b" " * 16  # the Calling-AE-title field (PS3.8 9.3.2)
        with socket.create_connection((router.host, router.port), timeout=10) as sock:
            sock.sendall(bytes(request))
            reply = rawdicom.read_pdu(sock)
    assert reply.reject_reason == (1, 1, 3)  # permanent, service user, calling AE not recognized


# -- private and new storage SOP classes --------------------------------------


def _private_instance(tmp_path: Path) -> tuple[Path, str]:
    """A CT slice re-labelled as an instance of a private storage SOP class."""
    study = generate_study(tmp_path / "data", study_index=6, instances=1, rows=16, columns=16)
    dataset = pydicom.dcmread(study.files[0])
    dataset.SOPClassUID = UID(PRIVATE_CLASS)
    dataset.file_meta.MediaStorageSOPClassUID = UID(PRIVATE_CLASS)
    path = tmp_path / "private.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path, str(dataset.SOPInstanceUID)


def _storage_mark(sop_class: str) -> SOPClassCommonExtendedNegotiation:
    item = SOPClassCommonExtendedNegotiation()
    item.sop_class_uid = UID(sop_class)
    item.service_class_uid = UID(STORAGE_SERVICE_CLASS)
    return item


@pytest.mark.parametrize("promiscuous", [True, False], ids=["accepts-it", "refuses-it"])
def test_a_private_class_marked_storage_reaches_a_gateway_that_accepts_it(
    start_router: RouterFactory, tmp_path: Path, promiscuous: bool
) -> None:
    path, sop_instance = _private_instance(tmp_path)
    gateway = InstalledStoreSCP(tmp_path / "gw", ae_title="GW", promiscuous=promiscuous)
    with gateway:
        router = start_router([gateway])
        router.wait_events("gateway.probed", timeout=20)
        contexts = [rawdicom.context(1, PRIVATE_CLASS, [EXPLICIT_VR_LE])]
        unmarked = RawScu(router.host, router.port, contexts=contexts)
        unmarked.release()
        marked = RawScu(
            router.host, router.port, contexts=contexts, extra=[_storage_mark(PRIVATE_CLASS)]
        )
        with marked:
            accepted = marked.accepted(1)
            status = marked.store_file(1, path).status if accepted else None
            marked.release()
        held = gateway.wait_for_count(1, timeout=20) if promiscuous else gateway.received()
    # Without the extended negotiation item the router cannot know the class is Storage.
    assert unmarked.results[1][0] == RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED
    if promiscuous:
        assert accepted == EXPLICIT_VR_LE
        assert status == 0
        assert [item.sop_instance_uid for item in held] == [sop_instance]
        assert held[0].dataset == dataset_bytes(path)
    else:
        # Where the gateway refuses it, so does the router: at negotiation.
        assert accepted is None
        assert marked.results[1][0] == RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED
        assert held == []
    [asked] = router.events("gateway.probed_classes")
    assert asked["asked"] == [PRIVATE_CLASS]
    assert asked["accepted"] == ([PRIVATE_CLASS] if promiscuous else [])


def test_a_private_class_listed_in_the_configuration_is_accepted(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    path, sop_instance = _private_instance(tmp_path)
    with InstalledStoreSCP(tmp_path / "gw", ae_title="GW", promiscuous=True) as gateway:
        router = start_router(
            [gateway], extra_args=["--sop-class", PRIVATE_CLASS, "--sop-class", CT_IMAGE_STORAGE]
        )
        contexts = [
            rawdicom.context(1, PRIVATE_CLASS, [EXPLICIT_VR_LE]),
            ct_context(3),
            rawdicom.context(5, "1.2.840.10008.5.1.4.1.1.4", [EXPLICIT_VR_LE]),  # MR: not listed
        ]
        with RawScu(router.host, router.port, contexts=contexts) as scu:
            results = dict(scu.results)
            status = scu.store_file(1, path).status
            scu.release()
        held = gateway.wait_for_count(1, timeout=20)
    assert results[1] == (0, EXPLICIT_VR_LE)
    assert results[3] == (0, EXPLICIT_VR_LE)
    assert results[5][0] == RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED
    assert status == 0
    assert [item.sop_instance_uid for item in held] == [sop_instance]


# -- a third and a fourth implementation: dicom-rs and GDCM ---------------------
#
# DCMTK (storescu, storescp, Orthanc's network code) and pynetdicom (the
# router's own negotiation, the sink) are not the only DICOM stacks sites
# run. dicom-rs (Rust: dicom-storescp as a gateway, dicom-storescu as a
# sender) and GDCM (C++: gdcmscu as a sender) share no network code with
# either. GDCM has no storage SCP program, so it is a sender only.

IMPLICIT_VR_LE = "1.2.840.10008.1.2"
EXPLICIT_VR_BE = "1.2.840.10008.1.2.2"
RLE_LOSSLESS = "1.2.840.10008.1.2.5"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
#: DCMTK's converters, for what pydicom does not write by itself.
_DCMTK_CONVERTERS = {
    EXPLICIT_VR_BE: ["dcmconv", "+tb"],
    JPEG_LS_LOSSLESS: ["dcmcjpls"],
    JPEG_LOSSLESS_SV1: ["dcmcjpeg", "+e1"],
}
MIXED_SYNTAXES = (
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
    JPEG_LOSSLESS_SV1,
)


def _studies_in_each_syntax(folder: Path, study_index: int) -> dict[str, list[Path]]:
    """One two-instance study per transfer syntax of :data:`MIXED_SYNTAXES`.

    One synthetic study, copied under new UIDs for each syntax; pydicom
    writes the uncompressed little endian and RLE copies, DCMTK the others
    (in parallel: each of its programs takes half a second to start).
    """
    base = generate_study(
        folder / "base", study_index=study_index, instances=2, rows=16, columns=16
    )
    made: dict[str, list[Path]] = {}
    converting: list[subprocess.Popen[bytes]] = []
    for n, syntax in enumerate(MIXED_SYNTAXES):
        (folder / syntax).mkdir()
        made[syntax] = []
        for i, path in enumerate(base.files):
            dataset = pydicom.dcmread(path)
            dataset.StudyInstanceUID = generate_uid(entropy_srcs=[base.study_uid, str(n)])
            dataset.SeriesInstanceUID = generate_uid(entropy_srcs=[base.series_uid, str(n)])
            dataset.SOPInstanceUID = generate_uid(entropy_srcs=[base.study_uid, str(n), str(i)])
            dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
            target = folder / syntax / path.name
            made[syntax].append(target)
            if syntax == IMPLICIT_VR_LE:
                dataset.file_meta.TransferSyntaxUID = UID(IMPLICIT_VR_LE)
                dataset.save_as(target, implicit_vr=True, little_endian=True)
            elif syntax == RLE_LOSSLESS:
                dataset.compress(UID(RLE_LOSSLESS), encoding_plugin="pydicom")
                dataset.save_as(target)
            elif syntax == EXPLICIT_VR_LE:
                dataset.save_as(target)
            else:
                plain = target.with_suffix(".plain.dcm")
                dataset.save_as(plain)
                converter = _DCMTK_CONVERTERS[syntax]
                converting.append(subprocess.Popen([*converter, str(plain), str(target)]))
    assert [process.wait(timeout=60) for process in converting] == [0] * len(converting)
    return made


def _sop_instance(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def test_gdcm_echoes_and_stores_through_the_router_to_dicom_rs_gateways(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    """gdcmscu through a router in front of two dicom-rs gateways.

    Six studies, each in another transfer syntax (explicit and implicit VR
    little endian, big endian, JPEG-LS, RLE, JPEG lossless), on one
    association: every instance is answered Success, lands on the gateway
    of its study exactly as sent, and the router counts no failure.
    """
    by_syntax = _studies_in_each_syntax(tmp_path / "data", study_index=20)
    files = [path for paths in by_syntax.values() for path in paths]
    syntax_of = {_sop_instance(path): ts for ts, paths in by_syntax.items() for path in paths}
    with (
        DicomRsStoreSCP(tmp_path / "gw-a", ae_title="RS_A") as a,
        DicomRsStoreSCP(tmp_path / "gw-b", ae_title="RS_B") as b,
    ):
        router = start_router([a, b])
        router.wait_events("gateway.probed", count=2, timeout=20)
        echo = gdcmscu(router.host, router.port, called_ae=router.ae_title, calling_ae="GDCM_ECHO")
        sent = gdcmscu(
            router.host,
            router.port,
            called_ae=router.ae_title,
            calling_ae="GDCM_STORE",
            files=files,
        )
        wait_until(
            lambda: a.received_count() + b.received_count() >= len(files),
            timeout=20,
            what=f"{len(files)} instances on the dicom-rs gateways",
        )
        held = {item.sop_instance_uid: item for item in [*a.received(), *b.received()]}
        studies_on = [{item.study_uid for item in g.received()} for g in (a, b)]
        released = router.wait_events("association.released", count=2, timeout=10)
        counts = {
            (gateway, outcome): router.metric(
                "gatewaypool_router_instances_total", gateway=gateway, outcome=outcome
            )
            for gateway in ("gw-0", "gw-1")
            for outcome in ("success", "failure")
        }
    assert echo.echo_status == 0, echo.output[-2000:]
    assert echo.released and sent.released, sent.output[-2000:]
    assert sent.store_statuses == dict.fromkeys(syntax_of, 0)
    assert set(held) == set(syntax_of)
    # Each study whole on one gateway, and both gateways used.
    assert not studies_on[0] & studies_on[1]
    assert all(studies_on)
    assert {r["calling_ae"]: (r["instances"], r["failed"]) for r in released} == {
        "GDCM_ECHO": (0, 0),
        "GDCM_STORE": (len(files), 0),
    }
    assert counts[("gw-0", "failure")] == counts[("gw-1", "failure")] == 0
    assert counts[("gw-0", "success")] + counts[("gw-1", "success")] == len(files)
    for path in files:
        item = held[_sop_instance(path)]
        assert item.transfer_syntax == syntax_of[item.sop_instance_uid]
        assert item.dataset == dataset_bytes(path)


def test_a_dicom_rs_sender_falls_back_through_the_router_as_it_does_directly(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    """dicom-storescu and uncompressed-only dicom-rs gateways: routed and direct alike.

    dicom-storescu proposes each file's own transfer syntax and, where it
    can decode it, the uncompressed ones; the router refuses what its
    gateway refuses, so the sender converts big endian, RLE and JPEG
    lossless as it does for the gateway itself: the same instances arrive,
    uncompressed, with the same pixels. It cannot decode JPEG-LS: those
    files are skipped at negotiation both ways, and no instance fails.
    """
    by_syntax = _studies_in_each_syntax(tmp_path / "data", study_index=40)
    files = [path for paths in by_syntax.values() for path in paths]
    unsendable = {_sop_instance(path) for path in by_syntax[JPEG_LS_LOSSLESS]}
    sendable = {_sop_instance(path) for path in files} - unsendable
    with (
        DicomRsStoreSCP(tmp_path / "routed", ae_title="ROUTED", uncompressed_only=True) as routed,
        DicomRsStoreSCP(tmp_path / "direct", ae_title="DIRECT", uncompressed_only=True) as direct,
    ):
        router = start_router([routed])
        router.wait_events("gateway.probed", timeout=20)
        via_router = dicom_rs_storescu(router.host, router.port, files, called_ae=router.ae_title)
        straight = dicom_rs_storescu(direct.host, direct.port, files, called_ae=direct.ae_title)
        got = {item.sop_instance_uid: item for item in routed.wait_for_count(len(sendable))}
        want = {item.sop_instance_uid: item for item in direct.wait_for_count(len(sendable))}
        [released] = router.wait_events("association.released", timeout=10)
    assert via_router.store_statuses == straight.store_statuses == dict.fromkeys(sendable, 0), (
        via_router.output[-3000:]
    )
    assert set(got) == set(want) == sendable
    for uid, item in got.items():
        # Between accepted explicit and implicit VR contexts dicom-storescu
        # picks the first in its own proposal order, which is a hash set's:
        # either may come, routed or not. The pixels are the same.
        assert {item.transfer_syntax, want[uid].transfer_syntax} <= {EXPLICIT_VR_LE, IMPLICIT_VR_LE}
        routed_file, direct_file = item.path, want[uid].path
        assert routed_file is not None and direct_file is not None
        assert pydicom.dcmread(routed_file).PixelData == pydicom.dcmread(direct_file).PixelData
        if item.transfer_syntax == want[uid].transfer_syntax:
            assert item.dataset == want[uid].dataset
    assert (released["instances"], released["failed"]) == (len(sendable), 0)
    assert (
        router.metric("gatewaypool_router_instances_total", gateway="gw-0", outcome="failure") == 0
    )


def _one_gateway_map(gateway: DicomRsStoreSCP, version: int) -> str:
    only = Gateway(name="gw-0", host=gateway.host, port=gateway.port, ae_title=gateway.ae_title)
    return dump_map(BucketMap(version=version, buckets=64, gateways=(only,), owners=(0,) * 64))


def test_what_the_router_accepts_follows_the_gateways_of_the_map(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    """A map change to other gateways probes them anew, and so does a gateway coming back.

    The map names an uncompressed-only dicom-rs gateway, then one that
    takes JPEG-LS, then the first again: a JPEG-LS context is refused,
    accepted (and its instance stored as sent), refused again.
    """
    study = generate_study(tmp_path / "data", study_index=60, instances=1, rows=16, columns=16)
    jpeg_ls = tmp_path / "jpeg-ls.dcm"
    subprocess.run(["dcmcjpls", str(study.files[0]), str(jpeg_ls)], check=True)
    map_file = tmp_path / "map.json"
    plain = DicomRsStoreSCP(tmp_path / "plain", ae_title="PLAIN", uncompressed_only=True)
    every = DicomRsStoreSCP(tmp_path / "every", ae_title="EVERY")
    results: list[tuple[int, str]] = []
    with plain, every:
        for version, gateway in enumerate((plain, every, plain), start=1):
            temporary = map_file.with_suffix(".tmp")
            temporary.write_text(_one_gateway_map(gateway, version))
            temporary.replace(map_file)
            if version == 1:
                router = start_router(map_file=map_file)
            router.wait_events("gateway.probed", count=version, timeout=20)
            offer = [ct_context(1, JPEG_LS_LOSSLESS)]
            with RawScu(router.host, router.port, contexts=offer) as scu:
                results.append(scu.results[1])
                if scu.accepted(1):
                    assert scu.store_file(1, jpeg_ls).status == 0
                scu.release()
        held = every.wait_for_count(1)
    refused = (RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED, "")
    assert results == [refused, (0, JPEG_LS_LOSSLESS), refused]
    assert [item.transfer_syntax for item in held] == [JPEG_LS_LOSSLESS]
    assert held[0].dataset == dataset_bytes(jpeg_ls)


# -- transfer syntaxes per SOP class ------------------------------------------

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2.1"
ENHANCED_MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4.1"

#: A DCMTK association negotiation profile (storescp ``--config-file``) as a
#: site writes one for a gateway whose JPEG-LS decoder is licensed, or
#: validated, for CT only: JPEG-LS for the CT classes, uncompressed for MR.
_JPEG_LS_FOR_CT_ONLY = """\
[[TransferSyntaxes]]

[Uncompressed]
TransferSyntax1 = LocalEndianExplicit
TransferSyntax2 = LittleEndianImplicit

[JpegLsOrUncompressed]
TransferSyntax1 = JPEGLSLossless
TransferSyntax2 = LocalEndianExplicit
TransferSyntax3 = LittleEndianImplicit

[[PresentationContexts]]

[JpegLsForCtOnly]
PresentationContext1 = VerificationSOPClass\\Uncompressed
PresentationContext2 = CTImageStorage\\JpegLsOrUncompressed
PresentationContext3 = EnhancedCTImageStorage\\JpegLsOrUncompressed
PresentationContext4 = MRImageStorage\\Uncompressed
PresentationContext5 = EnhancedMRImageStorage\\Uncompressed

[[Profiles]]

[JpegLsForCtOnly]
PresentationContexts = JpegLsForCtOnly
"""


class JpegLsForCtStoreSCP(StoreSCP):
    """DCMTK storescp taking JPEG-LS for CT and Enhanced CT, uncompressed MR only."""

    def _prepare(self) -> None:
        super()._prepare()
        (self.work_dir / "profile.cfg").write_text(_JPEG_LS_FOR_CT_ONLY)

    def _command(self) -> list[str]:
        dropped = {"--accept-all", "--promiscuous"}
        command = [arg for arg in super()._command() if arg not in dropped]
        profile = ["--config-file", str(self.work_dir / "profile.cfg"), "JpegLsForCtOnly"]
        return [*command[:-1], *profile, command[-1]]


def _relabelled(study: Study, sop_class: str, modality: str) -> Study:
    """The study's files rewritten as instances of ``sop_class`` (same UIDs)."""
    for path in study.files:
        dataset = pydicom.dcmread(path)
        dataset.SOPClassUID = UID(sop_class)
        dataset.file_meta.MediaStorageSOPClassUID = UID(sop_class)
        dataset.Modality = modality
        dataset.save_as(path, enforce_file_format=True)
    return study


def _send_each_preferring_jpeg_ls(
    host: str, port: int, called: str, studies: list[tuple[str, Study]]
) -> tuple[list[int], dict[str, str]]:
    """A modality holding each instance in JPEG-LS, able to send it uncompressed.

    One association: for each study's SOP class a JPEG-LS context (preferred)
    and an explicit VR little endian one. Each instance goes in JPEG-LS where
    that context was accepted, uncompressed otherwise, as modalities fall
    back. Returns the statuses and the syntax each SOP class was sent in.
    """
    contexts = []
    for n, (sop_class, _) in enumerate(studies):
        contexts.append(rawdicom.context(4 * n + 1, sop_class, [JPEG_LS_LOSSLESS]))
        contexts.append(rawdicom.context(4 * n + 3, sop_class, [EXPLICIT_VR_LE]))
    statuses: list[int] = []
    sent_in: dict[str, str] = {}
    with RawScu(host, port, contexts=contexts, called=called) as scu:
        for n, (sop_class, study) in enumerate(studies):
            use_jls = scu.accepted(4 * n + 1) == JPEG_LS_LOSSLESS
            assert use_jls or scu.accepted(4 * n + 3) == EXPLICIT_VR_LE
            sent_in[sop_class] = JPEG_LS_LOSSLESS if use_jls else EXPLICIT_VR_LE
            for path in study.files:
                if use_jls:
                    statuses.append(scu.store_file(4 * n + 1, path.with_suffix(".jls")).status)
                else:
                    statuses.append(scu.store_file(4 * n + 3, path).status)
        scu.release()
    return statuses, sent_in


@pytest.mark.parametrize(
    ("ct_class", "mr_class", "workers"),
    [
        (CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, 1),
        (ENHANCED_CT_STORAGE, ENHANCED_MR_STORAGE, 1),
        (ENHANCED_CT_STORAGE, ENHANCED_MR_STORAGE, 2),
    ],
    ids=["seeded", "on-demand", "on-demand-2-workers"],
)
def test_transfer_syntaxes_are_learnt_per_sop_class(
    start_router: RouterFactory, tmp_path: Path, ct_class: str, mr_class: str, workers: int
) -> None:
    """Two gateways taking JPEG-LS for CT only; a sender offering CT and MR in JPEG-LS.

    Through the router, CT goes as JPEG-LS and MR falls back to
    uncompressed, as straight to such a gateway; no instance fails. CT and
    MR are in the first probes' seed; Enhanced CT and MR are learnt when
    the sender proposes them, one probe association per gateway. A sender
    offering MR in JPEG-LS only has that context refused (result 4).
    """
    ct = _relabelled(
        generate_study(tmp_path / "ct", study_index=80, instances=2, rows=16, columns=16),
        ct_class,
        "CT",
    )
    mr = _relabelled(
        generate_study(tmp_path / "mr", study_index=81, instances=2, rows=16, columns=16),
        mr_class,
        "MR",
    )
    converting = [
        subprocess.Popen(["dcmcjpls", str(path), str(path.with_suffix(".jls"))])
        for path in [*ct.files, *mr.files]
    ]
    assert [process.wait(timeout=60) for process in converting] == [0] * len(converting)
    studies = [(ct_class, ct), (mr_class, mr)]
    a = JpegLsForCtStoreSCP(tmp_path / "gw-a", ae_title="GW_A")
    b = JpegLsForCtStoreSCP(tmp_path / "gw-b", ae_title="GW_B")
    direct = JpegLsForCtStoreSCP(tmp_path / "direct", ae_title="DIRECT")
    with a, b, direct:
        router = start_router([a, b], workers=workers)
        router.wait_events("gateway.probed", count=2 * workers, timeout=60)
        via_router, routed_in = _send_each_preferring_jpeg_ls(
            router.host, router.port, router.ae_title, studies
        )
        straight, direct_in = _send_each_preferring_jpeg_ls(
            direct.host, direct.port, direct.ae_title, studies
        )
        only_jls = [rawdicom.context(1, mr_class, [JPEG_LS_LOSSLESS])]
        with RawScu(router.host, router.port, contexts=only_jls) as scu:
            no_fallback = scu.results[1]
            scu.release()
        count = len(ct.files) + len(mr.files)
        wait_until(
            lambda: a.received_count() + b.received_count() >= count,
            timeout=30,
            what=f"{count} instances on the gateways",
        )
        got = {item.sop_instance_uid: item for item in [*a.received(), *b.received()]}
        want = {item.sop_instance_uid: item for item in direct.wait_for_count(count, timeout=30)}
        failures = sum(
            router.metric("gatewaypool_router_instances_total", gateway=name, outcome="failure")
            for name in ("gw-0", "gw-1")
        )
    assert via_router == straight == [0] * count
    assert routed_in == direct_in == {ct_class: JPEG_LS_LOSSLESS, mr_class: EXPLICIT_VR_LE}
    assert no_fallback == (RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED, "")
    assert failures == 0
    assert set(got) == set(want) == {*ct.sop_instance_uids, *mr.sop_instance_uids}
    for sop_class, study in studies:
        for uid, path in zip(study.sop_instance_uids, study.files, strict=True):
            sent = path.with_suffix(".jls") if sop_class == ct_class else path
            assert got[uid].transfer_syntax == want[uid].transfer_syntax
            assert got[uid].dataset == want[uid].dataset == dataset_bytes(sent)
    if ct_class == CT_IMAGE_STORAGE:
        # Known from the first probes: nothing asked on demand.
        seeded = router.events("gateway.probed")[0]["seeded"]
        assert JPEG_LS_LOSSLESS in seeded[CT_IMAGE_STORAGE]
        assert JPEG_LS_LOSSLESS not in seeded[MR_IMAGE_STORAGE]
        assert router.events("gateway.probed_pairs") == []
    elif workers == 1:
        # One probe association per gateway, at the first association; the
        # second one (JPEG-LS MR only) is answered from the cache.
        learnt = router.events("gateway.probed_pairs")
        assert sorted(event["gateway"] for event in learnt) == ["gw-0", "gw-1"]
        for event in learnt:
            assert event["accepted"] == [f"{ct_class}/{JPEG_LS_LOSSLESS}"]
            assert event["refused"] == [f"{mr_class}/{JPEG_LS_LOSSLESS}"]


class _HoldingGateway:
    """A Storage SCP accepting every context, whose answers can be held (raw protocol).

    While ``hold`` is set, an A-ASSOCIATE-RQ gets its A-ASSOCIATE-AC only
    once it is cleared: a gateway too slow for the router's on-demand probe.
    """

    def __init__(self) -> None:
        self._server = socket.create_server((LOOPBACK, 0))
        self.port: int = self._server.getsockname()[1]
        self.hold = threading.Event()
        self._released = threading.Event()
        self.held = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(60)
            request = rawdicom.read_pdu(conn)
            if request.pdu_type != rawdicom.ASSOCIATE_RQ:
                return
            if self.hold.is_set():
                self.held += 1
                self._released.wait(60)
            raw = struct.pack(">BBL", request.pdu_type, 0, len(request.body)) + request.body
            accept_pdu, _ = negotiation.accept(negotiation.parse_request(raw), max_pdu=65536)
            conn.sendall(accept_pdu)
            if rawdicom.read_pdu(conn).pdu_type == rawdicom.RELEASE_RQ:
                conn.sendall(bytes((rawdicom.RELEASE_RP, 0, 0, 0, 0, 4, 0, 0, 0, 0)))

    def release(self) -> None:
        self.hold.clear()
        self._released.set()

    def close(self) -> None:
        self._server.close()


def test_a_pair_probe_too_slow_refuses_the_pair_until_it_answers(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    """The sender waits at most half of --acse-timeout for an on-demand probe.

    A pair the gateway has not answered by then is refused (result 4) and
    the sender falls back to what is known; the probe goes on, and the next
    association gets its answer.
    """
    gateway = _HoldingGateway()
    try:
        router = start_router(
            extra_args=["--gateway", f"HOLDING@{LOOPBACK}:{gateway.port}", "--acse-timeout", "4"]
        )
        router.wait_events("gateway.probed", timeout=30)
        gateway.hold.set()
        offer = [
            rawdicom.context(1, ENHANCED_CT_STORAGE, [JPEG_LS_LOSSLESS]),
            rawdicom.context(3, ENHANCED_CT_STORAGE, [EXPLICIT_VR_LE]),
        ]
        started = time.monotonic()
        with RawScu(router.host, router.port, contexts=offer) as scu:
            waited = time.monotonic() - started
            while_held = dict(scu.results)
            scu.release()
        [pending] = router.events("gateway.probe_pending")
        assert gateway.held == 1
        gateway.release()
        [learnt] = router.wait_events("gateway.probed_pairs", timeout=30)
        with RawScu(router.host, router.port, contexts=offer) as scu:
            answered = dict(scu.results)
            scu.release()
    finally:
        gateway.release()
        gateway.close()
    assert while_held[1] == (RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED, "")
    assert while_held[3] == (0, EXPLICIT_VR_LE)
    assert 2 <= waited < 4
    assert pending["unanswered"] == 1
    assert learnt["accepted"] == [f"{ENHANCED_CT_STORAGE}/{JPEG_LS_LOSSLESS}"]
    assert answered[1] == (0, JPEG_LS_LOSSLESS)
    assert answered[3] == (0, EXPLICIT_VR_LE)


def _offer_jpeg_ls_only(router: RouterProcess) -> tuple[int, str]:
    with RawScu(router.host, router.port, contexts=[ct_context(1, JPEG_LS_LOSSLESS)]) as scu:
        result = scu.results[1]
        scu.release()
    return result


def test_a_gateway_that_starts_late_is_probed_once_it_listens(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    """A gateway down when the router probed it narrows the set once it is up.

    In a pool, a gateway pod restarts, or comes up after the router: its
    first probe fails. The router probes it again while it has no answer,
    without waiting for a sender, so that what senders may send follows it
    too: here JPEG-LS, taken by the first gateway, is refused once the
    uncompressed-only second one answers.
    """
    early = PynetdicomSink(tmp_path / "early", ae_title="EARLY")
    late = InstalledStoreSCP(tmp_path / "late", ae_title="LATE")
    with early:
        router = start_router([early, late])
        probed = router.wait_events("gateway.probed", timeout=20)
        router.wait_events("gateway.probe_failed", timeout=20)
        assert [record["gateway"] for record in probed] == ["gw-0"]
        assert _offer_jpeg_ls_only(router) == (0, JPEG_LS_LOSSLESS)
        with late:
            [later] = [
                record
                for record in router.wait_events("gateway.probed", count=2, timeout=20)
                if record["gateway"] == "gw-1"
            ]
            assert JPEG_LS_LOSSLESS not in later["seeded"][CT_IMAGE_STORAGE]
            assert _offer_jpeg_ls_only(router) == (RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED, "")


def test_a_gateway_that_refuses_what_its_probe_accepted_is_probed_again(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    """A gateway redeployed with other settings under the same name and address.

    Its pod restarts with a configuration that no longer takes JPEG-LS: the
    map does not change, and what the router learnt is now wrong. The first
    instance on a JPEG-LS context fails (0x0122: the gateway refused the
    context), and that contradiction makes the router probe the gateway
    again, so the next association falls back at negotiation.
    """
    study = generate_study(tmp_path / "data", study_index=8, instances=2, rows=16, columns=16)
    jpeg_ls = [path.with_suffix(".jls.dcm") for path in study.files]
    for plain, compressed in zip(study.files, jpeg_ls, strict=True):
        subprocess.run(["dcmcjpls", str(plain), str(compressed)], check=True)
    before = StoreSCP(tmp_path / "before", ae_title="GW")
    with before:
        router = start_router([before])
        router.wait_events("gateway.probed", timeout=20)
    after = InstalledStoreSCP(tmp_path / "after", ae_title="GW", port=before.port)
    offer = [ct_context(1, JPEG_LS_LOSSLESS)]
    with after:
        with RawScu(router.host, router.port, contexts=offer) as scu:
            assert scu.accepted(1) == JPEG_LS_LOSSLESS  # what the first probe said
            failed = scu.store_file(1, jpeg_ls[0]).status
            scu.release()
        [_, again] = router.wait_events("gateway.probed", count=2, timeout=20)
        with RawScu(router.host, router.port, contexts=offer) as scu:
            refused = scu.results[1]
            scu.release()
    assert failed == 0x0122
    assert JPEG_LS_LOSSLESS not in again["seeded"][CT_IMAGE_STORAGE]
    assert refused == (RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED, "")
    [stale] = router.events("gateway.probe_contradicted")
    assert stale["gateway"] == "gw-0"
    assert stale["refused"] == [f"{CT_IMAGE_STORAGE}/{JPEG_LS_LOSSLESS}"]
