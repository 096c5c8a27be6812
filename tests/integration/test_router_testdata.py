"""Every DICOM file shipped inside pydicom, routed and compared byte for byte.

pydicom's own test files cover the transfer syntax families (implicit,
explicit little and big endian, deflated, JPEG, JPEG-LS, JPEG 2000, RLE),
nested and undefined-length sequences, private and UN elements, and a few
broken files. A pynetdicom sender sends each file's data set bytes verbatim;
the gateway is a pynetdicom SCP that keeps exactly what it received.
"""

from __future__ import annotations

import collections
import warnings
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom.service_class import StorageServiceClass
from pynetdicom.sop_class import uid_to_service_class

from gatewaypool_local.peers.gateway import Received
from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.scu import SendResult, send_files
from gatewaypool_local.synth import dataset_bytes
from gatewaypool_router.scanner import SUPPORTED_TRANSFER_SYNTAXES, is_valid_uid

RouterFactory = Callable[..., RouterProcess]
TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
#: Files pydicom ships truncated on purpose; pydicom reads them without a word
#: (a value shorter than its declared length), the router must refuse them.
TRUNCATED = frozenset({"MR_truncated.dcm", "rtplan_truncated.dcm"})


def _candidates() -> list[tuple[Path, str, str]]:
    """(file, transfer syntax, expectation) for every Part-10 file pydicom ships."""
    found = []
    for path in sorted(TEST_FILES.rglob("*")):
        if not path.is_file():
            continue
        try:
            meta = read_file_meta_info(path)
            transfer_syntax = str(meta.TransferSyntaxUID)
            str(meta.MediaStorageSOPClassUID)
            str(meta.MediaStorageSOPInstanceUID)
        except (InvalidDicomError, AttributeError, OSError, ValueError, TypeError):
            continue  # no file meta: nothing says how to send it
        if transfer_syntax not in SUPPORTED_TRANSFER_SYNTAXES:
            continue
        if uid_to_service_class(str(meta.MediaStorageSOPClassUID)) is not StorageServiceClass:
            # DICOMDIR and the like: not a storage SOP class, so the router
            # rejects the presentation context and the sender cannot send it.
            found.append((path, transfer_syntax, "unsupported"))
            continue
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                dataset = pydicom.dcmread(path)
                dataset.walk(lambda _ds, _elem: None)  # force every element to parse
                study_uid = dataset.get("StudyInstanceUID")
        except Exception:  # pydicom itself cannot read it: a broken file
            found.append((path, transfer_syntax, "broken"))
            continue
        if path.name in TRUNCATED or any("VR for reading" in str(w.message) for w in caught):
            # Encoded in another VR mode than its transfer syntax says: pydicom
            # guesses; the router refuses rather than guess (0xC210).
            found.append((path, transfer_syntax, "broken"))
            continue
        if study_uid is None or str(study_uid).strip("\0 ") == "":
            expectation = "missing"
        elif not is_valid_uid(str(study_uid).strip("\0 ")):
            expectation = "invalid"
        else:
            expectation = "routed"
        found.append((path, transfer_syntax, expectation))
    return found


CANDIDATES = _candidates()


def test_the_test_data_covers_every_family() -> None:
    families = {ts for _path, ts, exp in CANDIDATES if exp == "routed"}
    for wanted in (
        "1.2.840.10008.1.2",  # implicit VR little endian
        "1.2.840.10008.1.2.1",  # explicit VR little endian
        "1.2.840.10008.1.2.2",  # explicit VR big endian
        "1.2.840.10008.1.2.1.99",  # deflated
        "1.2.840.10008.1.2.4.50",  # JPEG baseline
        "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
        "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
        "1.2.840.10008.1.2.5",  # RLE
    ):
        assert wanted in families, f"no routable test file in {wanted}"


def _rounds() -> list[list[Path]]:
    """Split the files so no SOPInstanceUID repeats within a round.

    Some test files share a SOPInstanceUID (one image in several encodings);
    a gateway keeps only the latest, so each round gets a fresh gateway.
    """
    rounds: list[list[Path]] = []
    seen: list[set[str]] = []
    for path, _ts, _exp in CANDIDATES:
        sop = str(read_file_meta_info(path).MediaStorageSOPInstanceUID)
        for index, uids in enumerate(seen):
            if sop not in uids:
                uids.add(sop)
                rounds[index].append(path)
                break
        else:
            seen.append({sop})
            rounds.append([path])
    return rounds


def _batches(files: list[Path]) -> list[list[Path]]:
    """At most 100 (SOP class, transfer syntax) pairs per association (128 fit)."""
    batches: list[list[Path]] = [[]]
    pairs: set[tuple[str, str]] = set()
    for path in files:
        meta = read_file_meta_info(path)
        pair = (str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID))
        if pair not in pairs and len(pairs) == 100:
            batches.append([])
            pairs = set()
        pairs.add(pair)
        batches[-1].append(path)
    return batches


def test_every_pydicom_test_file_is_routed_byte_identical(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    expectations = {path: expectation for path, _ts, expectation in CANDIDATES}
    outcomes: collections.Counter[str] = collections.Counter()
    sink = PynetdicomSink(tmp_path / "sink", ae_title="SINK")
    with sink:
        router = start_router([sink])
        for files in _rounds():
            results = {}
            for batch in _batches(files):
                sent = send_files(router.host, router.port, batch, called_ae=router.ae_title)
                results.update({result.path: result for result in sent})
            assert router.ready(), "the router stopped serving"
            received = {item.sop_instance_uid: item for item in sink.received()}
            _check_round(files, results, received, expectations, outcomes)
            # The sink opens its index per write: emptying its folder starts a new round.
            for stored in sink.out_dir.iterdir():
                stored.unlink()
    assert outcomes["routed"] >= 50, outcomes


def _check_round(
    files: list[Path],
    results: dict[Path, SendResult],
    received: dict[str, Received],
    expectations: dict[Path, str],
    outcomes: collections.Counter[str],
) -> None:
    for path in files:
        result = results[path]
        expectation = expectations[path]
        outcomes[expectation] += 1
        if expectation == "routed":
            assert result.status == 0x0000, f"{path.name}: status {result.status}"
            item = received.get(result.sop_instance_uid)
            assert item is not None, f"{path.name}: acknowledged but not at the gateway"
            assert item.dataset == dataset_bytes(path), f"{path.name}: bytes changed"
        elif expectation == "unsupported":
            assert result.status is None, f"{path.name}: sent on a context we should refuse"
        elif expectation == "missing":
            assert result.status == 0xA900, f"{path.name}: status {result.status}"
        elif expectation == "invalid":
            assert result.status == 0xC212, f"{path.name}: status {result.status}"
        else:
            assert result.status != 0x0000, f"{path.name}: a broken file was acknowledged"
            # SOPInstanceUIDs are unique within a round, so presence means delivery.
            assert result.sop_instance_uid not in received, f"{path.name}: refused yet delivered"


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "rtplan_truncated.dcm"])
def test_truncated_files_are_refused_and_not_delivered(
    start_router: RouterFactory, tmp_path: Path, name: str
) -> None:
    path = TEST_FILES / name
    sink = PynetdicomSink(tmp_path / "sink", ae_title="SINK")
    with sink:
        router = start_router([sink])
        [result] = send_files(router.host, router.port, [path], called_ae=router.ae_title)
        assert result.status is not None
        assert result.status != 0x0000
        assert sink.received_count() == 0
        failed = router.events("instance.failed")
        assert failed and failed[0]["sop_instance_uid"] == result.sop_instance_uid
