"""The DICOM peers themselves work: the router's tests rely on them.

Each gateway (DCMTK storescp, Orthanc, the pynetdicom sink) is sent a small
generated study straight from DCMTK storescu and must hold every instance with
dataset bytes identical to the files'; it answers echoscu; it survives
kill() and restart() on the same port. The sink's status options and the
verbatim pynetdicom sender are checked too, as is what storescu and Orthanc
do to bytes they re-encode.
"""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from gatewaypool_local.peers.dcmtk import echoscu, storescu
from gatewaypool_local.peers.gateway import GatewayPeer, echo
from gatewaypool_local.peers.process import PeerError
from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from gatewaypool_local.scu import send_files
from gatewaypool_local.synth import (
    Study,
    dataset_bytes,
    dataset_sha256,
    generate_multiframe,
    generate_study,
    study_uid_for,
)

StudyFactory = Callable[..., list[Study]]  # the ct_studies fixture
GATEWAYS = ["storescp_gateway", "orthanc_gateway", "pynetdicom_gateway"]


@pytest.fixture(params=GATEWAYS)
def gateway(request: pytest.FixtureRequest) -> GatewayPeer:
    """Each of the three gateways in turn, started."""
    gw: GatewayPeer = request.getfixturevalue(request.param)
    return gw


def _assert_holds_exactly(gateway: GatewayPeer, files: list[Path]) -> None:
    expected = {}
    for path in files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        expected[str(ds.SOPInstanceUID)] = (str(ds.StudyInstanceUID), dataset_bytes(path))
    received = gateway.wait_for_count(len(files), timeout=20)
    assert sorted(r.sop_instance_uid for r in received) == sorted(expected)
    for item in received:
        study_uid, data = expected[item.sop_instance_uid]
        assert item.study_uid == study_uid
        assert item.transfer_syntax == ExplicitVRLittleEndian
        assert item.dataset == data, f"{gateway!r} altered {item.sop_instance_uid}"


def test_storescu_to_gateway_keeps_dataset_bytes(
    gateway: GatewayPeer, ct_studies: StudyFactory
) -> None:
    (study,) = ct_studies(1, instances=5)

    result = storescu(gateway.host, gateway.port, study.files, called_ae=gateway.ae_title)

    assert result.returncode == 0, result.stderr
    _assert_holds_exactly(gateway, study.files)


def test_echoscu_succeeds(gateway: GatewayPeer) -> None:
    result = echoscu(gateway.host, gateway.port, called_ae=gateway.ae_title)

    assert result.returncode == 0, result.stderr


def test_kill_then_restart_on_same_port(gateway: GatewayPeer, ct_studies: StudyFactory) -> None:
    first, second = ct_studies(2, instances=3)
    assert (
        storescu(gateway.host, gateway.port, first.files, called_ae=gateway.ae_title).returncode
        == 0
    )
    gateway.wait_for_count(3, timeout=20)
    port = gateway.port

    gateway.kill()

    assert not gateway.is_running()
    assert echo(gateway.host, port, called_ae=gateway.ae_title, timeout=2) is None

    gateway.restart()

    assert gateway.port == port
    assert echoscu(gateway.host, port, called_ae=gateway.ae_title).returncode == 0
    assert storescu(gateway.host, port, second.files, called_ae=gateway.ae_title).returncode == 0
    # What was stored before the crash is still there, like on a real gateway.
    _assert_holds_exactly(gateway, first.files + second.files)


def test_send_files_is_verbatim_for_a_multiframe_instance(
    gateway: GatewayPeer, tmp_path: Path
) -> None:
    # Enhanced CT: nested sequences, 4 MiB of pixel data written in chunks.
    instance = generate_multiframe(
        tmp_path / "mf.dcm", size_bytes=4 * 1024 * 1024, rows=128, columns=128, study_index=3
    )

    results = send_files(gateway.host, gateway.port, [instance.path], called_ae=gateway.ae_title)

    assert [r.status for r in results] == [0x0000]
    (received,) = gateway.wait_for_count(1, timeout=20)
    assert received.sop_instance_uid == instance.sop_instance_uid
    assert received.study_uid == study_uid_for(study_index=3)
    assert received.dataset_sha256() == dataset_sha256(instance.path)


def test_undefined_length_sequences_are_kept_by_bit_preserving_gateways(
    gateway: GatewayPeer, tmp_path: Path
) -> None:
    # What modalities often send: a sequence and an item of undefined length.
    (path,) = generate_study(tmp_path, study_index=9, instances=1, rows=16, columns=16).files
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    item.is_undefined_length_sequence_item = True
    ds.ReferencedImageSequence = DicomSequence([item])
    ds["ReferencedImageSequence"].is_undefined_length = True
    ds.save_as(path, enforce_file_format=True)

    assert [r.status for r in send_files(gateway.host, gateway.port, [path])] == [0]

    (received,) = gateway.wait_for_count(1)
    if gateway.bit_preserving:
        assert received.dataset == dataset_bytes(path)
    else:
        # Orthanc re-encodes with explicit lengths: same dataset, other bytes.
        assert received.dataset != dataset_bytes(path)
        assert len(received.dataset) == len(dataset_bytes(path)) - 16  # two delimiters
        stored = pydicom.dcmread(BytesIO(received.dataset), force=True)
        assert stored.ReferencedImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID


def test_sink_keeps_transfer_syntax_and_bytes_of_any_encoding(
    pynetdicom_gateway: PynetdicomSink, tmp_path: Path
) -> None:
    files = []
    for index, syntax in enumerate([ImplicitVRLittleEndian, RLELossless]):
        files += generate_study(
            tmp_path / str(index),
            study_index=index,
            instances=2,
            rows=32,
            columns=32,
            transfer_syntax=syntax,
        ).files

    results = send_files(
        pynetdicom_gateway.host, pynetdicom_gateway.port, files, called_ae="GW-SINK"
    )

    assert [r.status for r in results] == [0] * 4
    received = {r.sop_instance_uid: r for r in pynetdicom_gateway.wait_for_count(4)}
    for path, result in zip(files, results, strict=True):
        item = received[result.sop_instance_uid]
        assert item.transfer_syntax == pydicom.dcmread(path).file_meta.TransferSyntaxUID
        assert item.dataset == dataset_bytes(path)


def test_sink_answers_configured_statuses(tmp_workdir: Path, ct_studies: StudyFactory) -> None:
    (study,) = ct_studies(1, instances=4)

    with PynetdicomSink(tmp_workdir / "failing", ae_title="FAILING", fail_after=2) as failing:
        failed = send_files(failing.host, failing.port, study.files, called_ae="FAILING")
        assert failing.received_count() == 2
    with PynetdicomSink(tmp_workdir / "warning", ae_title="WARNING", status=0xB000) as warning:
        warned = send_files(warning.host, warning.port, study.files, called_ae="WARNING")
        assert warning.received_count() == 4

    assert [r.status for r in failed] == [0x0000, 0x0000, 0xA700, 0xA700]
    assert [r.status for r in warned] == [0xB000] * 4


def test_storescu_reencodes_implicit_vr_unless_told(
    pynetdicom_gateway: PynetdicomSink, ct_studies: StudyFactory
) -> None:
    # Documents why byte comparisons send explicit VR little endian files:
    # storescu converts what it may, and keeps the encoding only when asked.
    (study,) = ct_studies(1, instances=1, transfer_syntax=ImplicitVRLittleEndian)
    host, port = pynetdicom_gateway.host, pynetdicom_gateway.port

    assert storescu(host, port, study.files, called_ae="GW-SINK").returncode == 0
    (converted,) = pynetdicom_gateway.wait_for_count(1)
    assert converted.transfer_syntax == ExplicitVRLittleEndian

    assert (
        storescu(host, port, study.files, called_ae="GW-SINK", extra_args=["-xi"]).returncode == 0
    )
    records = pynetdicom_gateway.index_records()
    assert len(records) == 2
    (kept,) = pynetdicom_gateway.received()
    assert kept.transfer_syntax == ImplicitVRLittleEndian
    assert kept.dataset == dataset_bytes(study.files[0])


def test_start_fails_clearly_when_the_port_is_taken(
    pynetdicom_gateway: PynetdicomSink, tmp_workdir: Path
) -> None:
    from gatewaypool_local.peers.dcmtk import StoreSCP

    clash = StoreSCP(tmp_workdir / "clash", port=pynetdicom_gateway.port, start_timeout=10)
    with pytest.raises(PeerError, match="in use"):
        clash.start()


def test_generated_studies_are_reproducible(tmp_path: Path) -> None:
    a = generate_study(tmp_path / "a", study_index=7, instances=3, rows=32, columns=32, seed=5)
    b = generate_study(tmp_path / "b", study_index=7, instances=3, rows=32, columns=32, seed=5)
    c = generate_study(tmp_path / "c", study_index=8, instances=3, rows=32, columns=32, seed=5)

    assert a.study_uid == b.study_uid == study_uid_for(study_index=7, seed=5)
    assert [f.read_bytes() for f in a.files] == [f.read_bytes() for f in b.files]
    assert c.study_uid != a.study_uid
    ds = pydicom.dcmread(a.files[1])
    assert ds.SOPInstanceUID == a.sop_instance_uids[1]
    assert ds.InstanceNumber == 2
    assert ds.pixel_array.shape == (32, 32)
    assert str(ds.PatientName) == "DEMO^PATIENT^07"
