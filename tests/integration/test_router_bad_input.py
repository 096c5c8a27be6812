"""Bad input gets a clear DICOM answer and a log line; the router carries on."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE

from gatewaypool_local.peers.gateway import echo
from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.scu import send_files
from gatewaypool_local.synth import Study, generate_study
from support.rawdicom import ASSOCIATE_AC, Reply, request_association

RouterFactory = Callable[..., RouterProcess]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECRET_NAME = "SECRET^PATIENT^NAME"
SECRET_ID = "PID-SECRET-4711"
SECRET_BIRTH = "19230417"


@pytest.fixture
def study(tmp_path: Path) -> Study:
    return generate_study(tmp_path / "data", study_index=3, instances=3, rows=16, columns=16)


def variant(source: Path, out: Path, change: Callable[[pydicom.Dataset], None]) -> Path:
    """A copy of ``source`` with ``change`` applied and patient data that must never be logged."""
    dataset = pydicom.dcmread(source)
    dataset.PatientName = SECRET_NAME
    dataset.PatientID = SECRET_ID
    dataset.PatientBirthDate = SECRET_BIRTH
    dataset.SOPInstanceUID = pydicom.uid.generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    change(dataset)
    dataset.save_as(out, enforce_file_format=True)
    return out


def assert_router_serves(router: RouterProcess, study: Study, gateway: PynetdicomSink) -> None:
    """The router still answers an echo and routes a new instance to the gateway.

    The instance is new on every call (a fresh SOP Instance UID): the sink
    counts distinct instances, so only a new one can raise the count by one.
    """
    assert echo(router.host, router.port, called_ae=router.ae_title) == 0x0000
    fresh = pydicom.dcmread(study.files[0])
    fresh.SOPInstanceUID = pydicom.uid.generate_uid()
    fresh.file_meta.MediaStorageSOPInstanceUID = fresh.SOPInstanceUID
    path = study.files[0].with_name(f"serves-{fresh.SOPInstanceUID}.dcm")
    fresh.save_as(path, enforce_file_format=True)
    before = gateway.received_count()
    [result] = send_files(router.host, router.port, [path], called_ae=router.ae_title)
    assert result.status == 0x0000
    assert gateway.received_count() == before + 1


def assert_no_patient_data(router: RouterProcess) -> None:
    text = router.log_path.read_text(errors="replace")
    for secret in (SECRET_NAME, SECRET_ID, SECRET_BIRTH, "SECRET"):
        assert secret not in text


def delete_study_uid(ds: pydicom.Dataset) -> None:
    del ds.StudyInstanceUID


def empty_study_uid(ds: pydicom.Dataset) -> None:
    ds.StudyInstanceUID = ""


def letters_in_study_uid(ds: pydicom.Dataset) -> None:
    ds.StudyInstanceUID = "1.2.abc.4"


def too_long_study_uid(ds: pydicom.Dataset) -> None:
    ds.StudyInstanceUID = "1." + "2" * 70


def uid_only_in_a_sequence(ds: pydicom.Dataset) -> None:
    reference = pydicom.Dataset()
    reference.StudyInstanceUID = ds.StudyInstanceUID
    reference.ReferencedSOPClassUID = CT_IMAGE_STORAGE
    ds.ReferencedStudySequence = [reference]
    del ds.StudyInstanceUID


@pytest.mark.parametrize(
    ("change", "status", "name"),
    [
        (delete_study_uid, 0xA900, "STUDY_UID_MISSING"),
        (empty_study_uid, 0xA900, "STUDY_UID_MISSING"),
        (uid_only_in_a_sequence, 0xA900, "STUDY_UID_MISSING"),
        (letters_in_study_uid, 0xC212, "STUDY_UID_INVALID"),
        (too_long_study_uid, 0xC212, "STUDY_UID_INVALID"),
    ],
)
def test_unusable_study_uid_is_refused_never_guessed(
    start_router: RouterFactory,
    pynetdicom_gateway: PynetdicomSink,
    study: Study,
    tmp_path: Path,
    change: Callable[[pydicom.Dataset], None],
    status: int,
    name: str,
) -> None:
    router = start_router([pynetdicom_gateway])
    bad = variant(study.files[0], tmp_path / "bad.dcm", change)
    [result] = send_files(router.host, router.port, [bad], called_ae=router.ae_title)
    assert result.status == status
    assert pynetdicom_gateway.received_count() == 0
    [line] = router.events("instance.failed")
    assert line["status_name"] == name
    assert line["status"] == f"0x{status:04X}"
    assert line["sop_instance_uid"] == result.sop_instance_uid
    assert line["reason"]
    assert router.metric("gatewaypool_router_refusals_total", reason=name.lower()) == 1
    assert_router_serves(router, study, pynetdicom_gateway)
    assert_no_patient_data(router)


def test_garbage_data_set_is_refused(
    start_router: RouterFactory, pynetdicom_gateway: PynetdicomSink, study: Study, tmp_path: Path
) -> None:
    router = start_router([pynetdicom_gateway])
    source = study.files[0].read_bytes()
    meta_end = len(source) - len(pydicom.dcmread(study.files[0]).PixelData) - 12
    # Keep the file meta and the first elements, then bytes that are no DICOM.
    header = source[: meta_end // 2]
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(header + b"\xde\xad\xbe\xef" * 64)
    [result] = send_files(router.host, router.port, [garbage], called_ae=router.ae_title)
    assert result.status in (0xC210, 0xA900)
    assert pynetdicom_gateway.received_count() == 0
    assert router.events("instance.failed")
    assert_router_serves(router, study, pynetdicom_gateway)


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: router\r\n\r\n",
        b"\x00" * 64,
        bytes(range(256)) * 4,
        b"\x01\x00\xff\xff\xff\xff",  # an A-ASSOCIATE-RQ claiming 4 GiB
        b"",
    ],
    ids=["http", "zeros", "random", "huge-length", "nothing"],
)
def test_non_dicom_client_is_dropped_and_the_router_carries_on(
    start_router: RouterFactory,
    pynetdicom_gateway: PynetdicomSink,
    study: Study,
    payload: bytes,
) -> None:
    router = start_router([pynetdicom_gateway], extra_args=["--acse-timeout", "2"])
    with socket.create_connection((router.host, router.port), timeout=10) as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        # The router closes its side: recv returns EOF (possibly after an A-ABORT).
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    # AA-1 before any request: an A-ABORT from the service user (PS3.8 9.2.2).
    assert received in (b"", b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00")
    wait_until(
        lambda: bool(router.events("connection.refused") or router.events("connection.closed")),
        timeout=10,
        what="a log line about the connection",
    )
    assert router.metric("gatewaypool_router_refusals_total", reason="not_dicom") == 1
    assert_router_serves(router, study, pynetdicom_gateway)


def _associate(router: RouterProcess, calling_ae: str) -> Reply:
    return request_association(router.host, router.port, calling=calling_ae, called=router.ae_title)


def test_calling_ae_outside_the_allow_list_is_rejected(
    start_router: RouterFactory, pynetdicom_gateway: PynetdicomSink
) -> None:
    router = start_router(
        [pynetdicom_gateway],
        extra_args=["--allow-calling-aet", "CT01", "--allow-calling-aet", "MR02"],
    )
    reply = _associate(router, "INTRUDER")
    assert reply.reject_reason == (0x01, 0x01, 0x03)  # permanent, user, calling AE not recognised
    [line] = router.events("association.rejected")
    assert line["calling_ae"] == "INTRUDER"
    assert line["reason"] == "calling_ae_not_allowed"
    assert _associate(router, "CT01").pdu_type == ASSOCIATE_AC
    assert router.metric("gatewaypool_router_refusals_total", reason="calling_ae_not_allowed") == 1


def test_associations_past_the_limit_are_rejected_transiently(
    start_router: RouterFactory, pynetdicom_gateway: PynetdicomSink
) -> None:
    router = start_router([pynetdicom_gateway], extra_args=["--max-associations", "2"])
    holders = []
    for _ in range(2):
        ae = AE(ae_title="HOLDER")
        ae.add_requested_context(CT_IMAGE_STORAGE)
        assoc = ae.associate(router.host, router.port, ae_title=router.ae_title)
        assert assoc.is_established
        holders.append(assoc)
    try:
        reply = _associate(router, "THIRD")
        assert reply.reject_reason == (
            0x02,
            0x03,
            0x02,
        )  # transient, presentation, limit
        assert router.events("association.rejected")[0]["reason"] == "too_many_associations"
    finally:
        for assoc in holders:
            assoc.release()
    wait_until(
        lambda: router.metric("gatewaypool_router_active_associations") == 0,
        timeout=10,
        what="held associations released",
    )
    assert _associate(router, "FOURTH").pdu_type == ASSOCIATE_AC
