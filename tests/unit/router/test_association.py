"""IncomingAssociation in-process, over a socket pair: the paths that need no gateway.

The sender's end is driven PDU by PDU (the request built with the router's
own negotiation encoder, DIMSE messages with pynetdicom's), so each test
says exactly what a modality sent and checks exactly what came back.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dimse_messages import C_ECHO_RQ, C_STORE_RQ
from pynetdicom.dimse_primitives import C_ECHO, C_STORE
from pynetdicom.pdu import P_DATA_TF

from gatewaypool.bucketmap import Gateway, balanced_map
from gatewaypool_local.peers.process import free_port
from gatewaypool_router import dimse, negotiation, pdus
from gatewaypool_router.association import IncomingAssociation
from gatewaypool_router.bucketusage import BucketUsage
from gatewaypool_router.config import RouterConfig
from gatewaypool_router.mapsource import MapHolder
from gatewaypool_router.metrics import RouterMetrics
from gatewaypool_router.studiesinflight import StudiesInFlight
from support import rawdicom

CT = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"
STORE_CX = 1
ECHO_CX = 3


@dataclass
class Router:
    """The router's end: one association served on a thread."""

    metrics: RouterMetrics
    maps: MapHolder
    thread: threading.Thread
    studies: StudiesInFlight


class Modality:
    """The sender's end of the socket pair, PDU by PDU."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sock.settimeout(10)
        self.reader = pdus.open_reader(sock, buffer_size=1 << 20)

    def associate(self, calling_ae: str = "CT01") -> pdus.Pdu:
        contexts = [
            negotiation.AcceptedContext(STORE_CX, CT, ExplicitVRLittleEndian),
            negotiation.AcceptedContext(ECHO_CX, VERIFICATION, ImplicitVRLittleEndian),
        ]
        self.sock.sendall(
            negotiation.build_request(
                calling_ae=calling_ae, called_ae="GATEWAYPOOL", contexts=contexts, max_pdu=65536
            )
        )
        return self.read()

    def read(self) -> pdus.Pdu:
        return pdus.read_pdu(self.reader, max_body=1 << 20)

    def send_message(self, message: C_STORE_RQ | C_ECHO_RQ, context_id: int) -> None:
        for primitive in message.encode_msg(context_id, 16384):
            pdu = P_DATA_TF()
            pdu.from_primitive(primitive)
            self.sock.sendall(pdu.encode())

    def store(self, dataset: bytes, *, context_id: int = STORE_CX) -> dimse.Response:
        request = C_STORE()
        request.MessageID = 7
        request.AffectedSOPClassUID = CT
        request.AffectedSOPInstanceUID = "1.2.3.4.5"
        request.Priority = 2
        request.DataSet = io.BytesIO(dataset)
        message = C_STORE_RQ()
        message.primitive_to_message(request)
        self.send_message(message, context_id)
        return self.response()

    def store_raw(self, command: bytes, dataset: bytes) -> dimse.Response:
        """A C-STORE whose command set is given byte for byte."""
        self.sock.sendall(rawdicom.p_data_tf(rawdicom.pdv(STORE_CX, 0x03, command)))
        self.sock.sendall(rawdicom.p_data_tf(rawdicom.pdv(STORE_CX, 0x02, dataset)))
        return self.response()

    def echo(self) -> dimse.Response:
        request = C_ECHO()
        request.MessageID = 9
        request.AffectedSOPClassUID = VERIFICATION
        message = C_ECHO_RQ()
        message.primitive_to_message(request)
        self.send_message(message, ECHO_CX)
        return self.response()

    def response(self) -> dimse.Response:
        pdu = self.read()
        assert pdu.type == pdus.P_DATA_TF, f"PDU 0x{pdu.type:02X} instead of P-DATA-TF"
        [pdv] = list(pdus.iter_pdvs(pdu.body))
        assert pdv.is_command and pdv.is_last
        _field, response = dimse.parse_response(bytes(pdv.data))
        return response

    def release(self) -> pdus.Pdu:
        self.sock.sendall(pdus.RELEASE_RQ_PDU)
        return self.read()


def _dataset(**attributes: object) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.4.5"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    buffer = pydicom.filebase.DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    pydicom.filewriter.write_dataset(buffer, ds)  # explicit VR little endian, as negotiated
    return buffer.getvalue()


@pytest.fixture
def pair() -> Iterator[tuple[Modality, socket.socket]]:
    left, right = socket.socketpair()
    yield Modality(left), right
    left.close()
    right.close()


def serve(
    sock: socket.socket,
    *,
    with_map: bool = True,
    over_limit: bool = False,
    **options: object,
) -> Router:
    # A gateway nobody listens on: routing to it fails fast, as 0xA701.
    gateway = Gateway(name="gw-0", host="127.0.0.1", port=free_port(), ae_title="GW")
    config = RouterConfig(gateways=(gateway,), **options)
    metrics = RouterMetrics()
    maps = MapHolder(metrics)
    if with_map:
        maps.offer(balanced_map([gateway]), source="test")
    studies = StudiesInFlight(quiet_seconds=config.study_quiet_seconds)
    association = IncomingAssociation(
        sock,
        "test:1",
        config=config,
        metrics=metrics,
        maps=maps,
        usage=BucketUsage(),
        studies=studies,
    )
    thread = threading.Thread(target=association.serve, kwargs={"over_limit": over_limit})
    thread.start()
    return Router(metrics=metrics, maps=maps, thread=thread, studies=studies)


def _sample(metrics: RouterMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_echo_then_release(pair: tuple[Modality, socket.socket]) -> None:
    modality, sock = pair
    router = serve(sock)
    assert modality.associate().type == pdus.ASSOCIATE_AC
    assert modality.echo().status == 0x0000
    assert modality.release().type == pdus.RELEASE_RP
    router.thread.join(timeout=10)
    assert _sample(router.metrics, "gatewaypool_router_associations_total", result="released") == 1


def test_a_calling_ae_not_allowed_is_rejected_permanently(
    pair: tuple[Modality, socket.socket],
) -> None:
    modality, sock = pair
    router = serve(sock, allowed_calling_aes=frozenset({"CT02"}))
    reply = modality.associate("CT01")
    assert reply.type == pdus.ASSOCIATE_RJ
    # result 1 (permanent), source 1 (service user), reason 3 (calling AE not recognised)
    assert struct.unpack_from(">xBBB", reply.body) == (1, 1, 3)
    router.thread.join(timeout=10)
    refused = _sample(
        router.metrics, "gatewaypool_router_refusals_total", reason="calling_ae_not_allowed"
    )
    assert refused == 1


def test_over_the_limit_is_rejected_transiently(pair: tuple[Modality, socket.socket]) -> None:
    modality, sock = pair
    router = serve(sock, over_limit=True)
    reply = modality.associate()
    assert reply.type == pdus.ASSOCIATE_RJ
    assert struct.unpack_from(">xBBB", reply.body) == (2, 3, 2)
    router.thread.join(timeout=10)


def test_no_map_yet_answers_0xa704(pair: tuple[Modality, socket.socket]) -> None:
    modality, sock = pair
    router = serve(sock, with_map=False)
    modality.associate()
    response = modality.store(_dataset(StudyInstanceUID="1.2.3"))
    assert response.status == 0xA704
    modality.release()
    router.thread.join(timeout=10)
    assert (
        _sample(
            router.metrics, "gatewaypool_router_instances_total", gateway="-", outcome="failure"
        )
        == 1
    )


@pytest.mark.parametrize(
    ("attributes", "status"),
    [
        ({}, 0xA900),  # no StudyInstanceUID
        ({"StudyInstanceUID": ""}, 0xA900),  # empty
        ({"StudyInstanceUID": "1.2.abc"}, 0xC212),  # not a UID
    ],
)
def test_an_unusable_study_uid_is_refused_never_guessed(
    pair: tuple[Modality, socket.socket], attributes: dict[str, str], status: int
) -> None:
    modality, sock = pair
    router = serve(sock)
    modality.associate()
    assert modality.store(_dataset(**attributes)).status == status
    # The association carries on.
    assert modality.echo().status == 0
    modality.release()
    router.thread.join(timeout=10)
    assert len(router.studies) == 0, "a refused instance is no study in flight"


@pytest.mark.parametrize(
    ("sop_class", "sop_instance"),
    [(CT, "1.2.\u00e9.4"), (CT, ""), ("CT Image", "1.2.3.4")],
)
def test_a_c_store_naming_no_uid_is_refused_before_any_gateway(
    pair: tuple[Modality, socket.socket], sop_class: str, sop_instance: str
) -> None:
    modality, sock = pair
    router = serve(sock)  # its gateway listens nowhere: forwarding would answer 0xA701
    modality.associate()
    command = rawdicom.command_set(
        rawdicom.c_store_rq(message_id=3, sop_class=sop_class, sop_instance=sop_instance)
    )
    response = modality.store_raw(command, _dataset(StudyInstanceUID="1.2.3"))
    assert response.status == 0xC214
    assert response.message_id == 3
    assert modality.echo().status == 0, "the association carries on"
    modality.release()
    router.thread.join(timeout=10)


def test_an_unreachable_gateway_answers_0xa701_and_the_association_carries_on(
    pair: tuple[Modality, socket.socket],
) -> None:
    modality, sock = pair
    router = serve(sock, connect_timeout=2.0)
    modality.associate()
    assert modality.store(_dataset(StudyInstanceUID="1.2.3")).status == 0xA701
    assert modality.store(_dataset(StudyInstanceUID="1.2.3")).status == 0xA701
    modality.release()
    router.thread.join(timeout=10)
    failures = _sample(
        router.metrics,
        "gatewaypool_router_gateway_failures_total",
        gateway="gw-0",
        reason="gateway_unreachable",
    )
    assert failures == 2
    # Load aimed at a gateway counts even when the gateway fails it.
    assert router.studies.by_gateway() == {"gw-0": 1}


def test_garbage_instead_of_an_association_request_is_aborted(
    pair: tuple[Modality, socket.socket],
) -> None:
    modality, sock = pair
    router = serve(sock)
    modality.sock.sendall(b"GET / HTTP/1.1\r\nHost: router\r\n\r\n")
    assert modality.read().type == pdus.ABORT
    router.thread.join(timeout=10)
    assert _sample(router.metrics, "gatewaypool_router_refusals_total", reason="not_dicom") == 1


def test_data_on_a_context_never_accepted_aborts(pair: tuple[Modality, socket.socket]) -> None:
    modality, sock = pair
    router = serve(sock)
    modality.associate()
    modality.sock.sendall(pdus.pdv_frames(99, 0, memoryview(b"\x00" * 8), max_body=0)[0])
    modality.sock.sendall(
        b"".join(bytes(b) for b in pdus.pdv_frames(99, 0, memoryview(b"\x00" * 8), max_body=0)[1:])
    )
    assert modality.read().type == pdus.ABORT
    router.thread.join(timeout=10)
    assert _sample(router.metrics, "gatewaypool_router_associations_total", result="aborted") == 1
