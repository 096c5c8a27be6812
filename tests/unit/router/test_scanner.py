"""The streaming StudyInstanceUID scanner, against pydicom as the reference.

The router routes every instance by what this scanner says, and refuses an
instance the scanner calls incomplete, so a disagreement with a real DICOM
reader either splits a study or loses an instance. The reference here is
pydicom: its own test files (every one installed that it can read), and data
sets that pydicom encodes in every transfer syntax family, cut into fragments
at random places, one byte at a time included.
"""

from __future__ import annotations

import io
import itertools
import os
import random
import struct
import tracemalloc
import warnings
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import pydicom
import pydicom.config
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_files
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.errors import InvalidDicomError
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import (
    _read_file_meta_info,
    data_element_generator,
    read_dataset,
    read_preamble,
)
from pydicom.filewriter import dcmwrite, write_sequence_item
from pydicom.sequence import Sequence
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    JPIPHTJ2KReferencedDeflate,
    RLELossless,
)

from gatewaypool_router.scanner import (
    MAX_NESTING_DEPTH,
    MAX_STUDY_UID_BYTES,
    SUPPORTED_TRANSFER_SYNTAXES,
    Scanner,
    ScanState,
    is_valid_uid,
)
from support import scanners

JPIP_REFERENCED_DEFLATE = "1.2.840.10008.1.2.4.95"
DEFLATED = frozenset(
    {DeflatedExplicitVRLittleEndian, JPIP_REFERENCED_DEFLATE, JPIPHTJ2KReferencedDeflate}
)

#: One transfer syntax of each family the scanner tells apart.
FAMILIES = {
    "implicit-le": ImplicitVRLittleEndian,
    "explicit-le": ExplicitVRLittleEndian,
    "explicit-be": ExplicitVRBigEndian,
    "deflated": DeflatedExplicitVRLittleEndian,
    "jpeg": JPEGBaseline8Bit,
    "rle": RLELossless,
}
LITTLE_ENDIAN_FAMILIES = {k: v for k, v in FAMILIES.items() if v != ExplicitVRBigEndian}

STUDY_UID = "1.2.826.0.1.3680043.8.498.10467288916212339548162853925399381254"
DECOY_UID = "1.2.826.0.1.3680043.8.498.99"
# Stand-ins for patient data: no detail string may ever contain them.
PATIENT_NAME = "Secretname^Jane"
PATIENT_ID = "PID-SECRET-42"

file_settings = settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
property_settings = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)

# Every test runs against the Python scanner and the native one.
pytestmark = pytest.mark.usefixtures("implementation")


# -- helpers ------------------------------------------------------------------


def split_file(raw: bytes) -> tuple[FileMetaDataset, bytes]:
    """Split a DICOM file into its file meta and the data set bytes after it."""
    fp = io.BytesIO(raw)
    read_preamble(fp, True)
    meta = _read_file_meta_info(fp)
    return meta, raw[fp.tell() :]


def deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


def inflate(data: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(data)


def iter_chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


@st.composite
def fragmentations(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """`data` cut anywhere: a run of 1-byte fragments, then random cuts."""
    size = len(data)
    ones = draw(st.integers(0, min(size, 300)))
    cuts = draw(st.lists(st.integers(ones, size), max_size=30))
    points = sorted({0, *range(1, ones + 1), *cuts, size})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def scan(transfer_syntax: str, fragments: list[bytes]) -> Scanner:
    """Feed `fragments`, checking the invariants that hold after every feed."""
    scanner = scanners.make(transfer_syntax)
    decided_as: tuple[ScanState, str | None] | None = None
    for fragment in fragments:
        scanner.feed(fragment)
        assert scanner.buffered_bytes <= MAX_STUDY_UID_BYTES
        state = scanner.state
        if decided_as is not None and state is not ScanState.MALFORMED:
            assert (state, scanner.study_uid) == decided_as, "a verdict changed"
        if state is not ScanState.NEED_MORE and decided_as is None:
            decided_as = (state, scanner.study_uid)
        assert scanner.decided is (state is not ScanState.NEED_MORE)
    assert scanner.bytes_seen == sum(len(f) for f in fragments)
    return scanner


def scan_whole(transfer_syntax: str, data: bytes) -> Scanner:
    return scan(transfer_syntax, [data])


def assert_no_patient_data(scanner: Scanner) -> None:
    assert PATIENT_NAME.split("^", maxsplit=1)[0] not in scanner.detail
    assert PATIENT_ID not in scanner.detail


def expected_state(study_uid: str | None) -> ScanState:
    if not study_uid:
        return ScanState.MISSING
    return ScanState.FOUND if is_valid_uid(study_uid) else ScanState.INVALID_UID


# -- pydicom's test files -----------------------------------------------------

#: Files pydicom ships as defective on purpose, and what is wrong with them.
#: pydicom reads them leniently; the router must refuse them.
KNOWN_DEFECTS = {
    "MR_truncated.dcm": "its pixel data is cut short",
    "rtplan_truncated.dcm": "its last element is cut short",
    "SC_rgb_jpeg.dcm": "an implicit VR data set under an explicit VR (JPEG) transfer syntax",
}


@dataclass(frozen=True)
class Sample:
    """The data set of one pydicom test file, as a C-STORE would carry it."""

    name: str
    transfer_syntax: str
    #: The bytes after the file meta (deflated if the transfer syntax is).
    data: bytes
    #: pydicom's top-level StudyInstanceUID.
    study_uid: str | None
    defect: str | None

    @property
    def plain(self) -> bytes:
        """The data set, inflated if it is deflated."""
        return inflate(self.data) if self.transfer_syntax in DEFLATED else self.data


def _transfer_syntax_of(meta: FileMetaDataset, ds: Dataset) -> str | None:
    if "TransferSyntaxUID" in meta:
        return str(meta.TransferSyntaxUID)
    # No file meta: use the encoding pydicom found by looking at the data.
    implicit, little = ds.original_encoding
    if implicit is None:
        return None
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


@cache
def load_samples() -> tuple[list[Sample], dict[str, str]]:
    """Every installed pydicom test file we can use, and why the rest are not used.

    Nothing is downloaded: ``get_testdata_files`` lists local files only.
    """
    samples: list[Sample] = []
    skipped: dict[str, str] = {}
    root = os.path.dirname(pydicom.data.__file__)
    for path in sorted(get_testdata_files()):
        if os.path.isdir(path):
            continue
        name = os.path.relpath(path, os.path.join(root, "test_files"))
        forced = False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                try:
                    ds = pydicom.dcmread(path, stop_before_pixels=True)
                except InvalidDicomError:
                    if not path.endswith(".dcm"):
                        skipped[name] = "not DICOM"
                        continue
                    forced = True
                    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
                with open(path, "rb") as fp:
                    meta, data = split_file(fp.read())
            except Exception as exc:
                skipped[name] = f"pydicom cannot read it ({type(exc).__name__})"
                continue
        if forced and "SOPClassUID" not in ds:
            # A file without file meta that pydicom reads only as garbage.
            skipped[name] = "pydicom finds no data set in it"
            continue
        transfer_syntax = _transfer_syntax_of(meta, ds)
        if transfer_syntax is None:
            skipped[name] = "no transfer syntax"
            continue
        try:
            scanners.make(transfer_syntax)
        except ValueError:
            skipped[name] = f"unsupported transfer syntax {transfer_syntax}"
            continue
        uid = ds.get("StudyInstanceUID")
        samples.append(
            Sample(
                name=name,
                transfer_syntax=transfer_syntax,
                data=data,
                study_uid=None if uid is None else str(uid),
                defect=KNOWN_DEFECTS.get(os.path.basename(name)),
            )
        )
    return samples, skipped


SAMPLES = load_samples()[0]
GOOD_SAMPLES = [s for s in SAMPLES if s.defect is None]
DEFECTIVE_SAMPLES = [s for s in SAMPLES if s.defect is not None]


def sample_id(sample: Sample) -> str:
    return sample.name


@cache
def top_level_boundaries(name: str) -> frozenset[int]:
    """Offsets in the plain data set where pydicom sees a top-level element start.

    pydicom's element reader is the independent oracle of where a data set
    may end completely.
    """
    sample = next(s for s in SAMPLES if s.name == name)
    plain = sample.plain
    ts = UID(sample.transfer_syntax)
    implicit = ts == ImplicitVRLittleEndian
    little = ts != ExplicitVRBigEndian
    fp = io.BytesIO(plain)
    bounds = [0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in data_element_generator(fp, implicit, little, defer_size=64):
            bounds.append(fp.tell())
    assert bounds[-1] == len(plain)
    return frozenset(bounds)


def test_most_pydicom_test_files_are_covered() -> None:
    samples, skipped = load_samples()
    dicom_skipped = {k: v for k, v in skipped.items() if v != "not DICOM"}
    assert len(samples) >= 100
    assert len(dicom_skipped) <= 0.05 * (len(samples) + len(dicom_skipped)), dicom_skipped
    families = {s.transfer_syntax for s in GOOD_SAMPLES}
    assert {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian} <= families
    assert DeflatedExplicitVRLittleEndian in families
    assert any(UID(ts).is_encapsulated for ts in families)


@pytest.mark.parametrize("sample", GOOD_SAMPLES, ids=sample_id)
@file_settings
@given(data=st.data())
def test_pydicom_file_in_random_fragments(sample: Sample, data: st.DataObject) -> None:
    scanner = scan(sample.transfer_syntax, data.draw(fragmentations(sample.data)))
    assert scanner.finish() is True, scanner.detail
    assert scanner.state is expected_state(sample.study_uid)
    if scanner.state is ScanState.FOUND:
        assert scanner.study_uid == sample.study_uid


@pytest.mark.parametrize("sample", GOOD_SAMPLES, ids=sample_id)
@file_settings
@given(data=st.data())
def test_pydicom_file_cut_is_complete_only_at_an_element_boundary(
    sample: Sample, data: st.DataObject
) -> None:
    plain = sample.plain
    bounds = top_level_boundaries(sample.name)
    cut = data.draw(
        st.one_of(
            st.sampled_from(sorted(bounds)),
            st.integers(max(0, len(plain) - 7), len(plain)),
            st.integers(0, len(plain)),
        ),
        label="cut",
    )
    piece = plain[:cut]
    if sample.transfer_syntax in DEFLATED:
        piece = deflate(piece)
    scanner = scan(sample.transfer_syntax, data.draw(fragmentations(piece)))
    complete = scanner.finish()
    assert complete is (cut in bounds), scanner.detail
    if not complete:
        assert scanner.state is ScanState.MALFORMED
        assert scanner.detail


@pytest.mark.parametrize("sample", GOOD_SAMPLES, ids=sample_id)
def test_pydicom_file_missing_its_last_bytes_is_refused(sample: Sample) -> None:
    # Every element is at least 8 bytes long, so cutting 1 to 7 bytes off the
    # end always cuts into the last element.
    plain = sample.plain
    for k in range(1, 8):
        piece = plain[:-k]
        if sample.transfer_syntax in DEFLATED:
            piece = deflate(piece)
        scanner = scan_whole(sample.transfer_syntax, piece)
        assert scanner.finish() is False, k
        assert scanner.state is ScanState.MALFORMED


@pytest.mark.parametrize("sample", DEFECTIVE_SAMPLES, ids=sample_id)
def test_defective_pydicom_file_is_refused(sample: Sample) -> None:
    scanner = scan_whole(sample.transfer_syntax, sample.data)
    assert scanner.finish() is False, sample.defect
    assert scanner.state is ScanState.MALFORMED
    assert scanner.detail


def test_deflated_sample_with_gzip_trailer_is_complete() -> None:
    # image_dfl.dcm ends with CRC-32 and size after the raw deflate stream.
    sample = next(s for s in GOOD_SAMPLES if s.name == "image_dfl.dcm")
    tail = zlib.decompressobj(-15)
    tail.decompress(sample.data)
    assert len(tail.unused_data) == 8
    assert scan_whole(sample.transfer_syntax, sample.data).finish() is True
    wrong_size = sample.data[:-4] + struct.pack("<L", len(sample.plain) + 2)
    scanner = scan_whole(sample.transfer_syntax, wrong_size)
    assert scanner.finish() is False
    assert "deflate" in scanner.detail


# -- data sets encoded by pydicom ---------------------------------------------


def encode(ds: Dataset, transfer_syntax: str) -> bytes:
    """`ds` as a C-STORE carries it: pydicom's encoding, without file meta."""
    ds = Dataset(ds)  # the caller's data set gets no file meta
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # invalid UIDs are written on purpose
        dcmwrite(buffer, ds, enforce_file_format=True)
    return split_file(buffer.getvalue())[1]


def with_pixel_data(ds: Dataset, frames: list[bytes], transfer_syntax: str) -> Dataset:
    """Add (7FE0,0010): encapsulated fragments for a compressed transfer syntax."""
    if UID(transfer_syntax).is_encapsulated:
        ds.add(DataElement(0x7FE00010, "OB", encapsulate(frames), is_undefined_length=True))
    else:
        value = b"".join(frames)
        ds.add(DataElement(0x7FE00010, "OB", value + b"\0" * (len(value) % 2)))
    return ds


def uid_element(value: str | bytes) -> DataElement:
    return DataElement(0x0020000D, "UI", value, validation_mode=pydicom.config.IGNORE)


def make_dataset(
    transfer_syntax: str,
    *,
    study_uid: str | bytes | None = STUDY_UID,
    before_uid: dict[str, Any] | None = None,
    undefined_length: bool = True,
    pixel_bytes: int = 512,
) -> Dataset:
    """A small CT-like instance; `before_uid` adds elements that sort before it.

    Sequences in `before_uid` get an undefined length if `undefined_length`.
    The pixel data is random, so that deflate does not shrink it.
    """
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.StudyDate = "20240102"
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    for keyword, value in (before_uid or {}).items():
        setattr(ds, keyword, value)
        if ds[keyword].VR == "SQ":
            ds[keyword].is_undefined_length = undefined_length
    if study_uid is not None:
        ds.add(uid_element(study_uid))
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.3"
    ds.StudyID = "42"
    ds.Rows = 8
    ds.Columns = pixel_bytes // 8
    ds.BitsAllocated = 8
    frame = random.Random(pixel_bytes).randbytes(pixel_bytes)
    return with_pixel_data(
        ds, [frame[: pixel_bytes // 2], frame[pixel_bytes // 2 :]], transfer_syntax
    )


def nested_sequence(levels: int, *, undefined: bool = True) -> Sequence:
    """Sequences nested `levels` deep, each item holding a decoy StudyInstanceUID.

    With `undefined`, every inner sequence and every item has undefined
    length; the caller sets the length of the outermost sequence element.
    """
    keywords = ["ReferencedStudySequence", "ReferencedSeriesSequence", "ReferencedImageSequence"]
    inner: Sequence | None = None
    for level in reversed(range(levels)):
        item = Dataset()
        item.ReferencedSOPClassUID = CTImageStorage
        item.add(uid_element(DECOY_UID))
        if inner is not None:
            keyword = keywords[(level + 1) % 3]
            setattr(item, keyword, inner)
            item[keyword].is_undefined_length = undefined
        item.is_undefined_length_sequence_item = undefined
        inner = Sequence([item])
    assert inner is not None
    return inner


@pytest.mark.parametrize("transfer_syntax", FAMILIES.values(), ids=FAMILIES.keys())
def test_uid_found_in_each_family(transfer_syntax: str) -> None:
    data = encode(make_dataset(transfer_syntax), transfer_syntax)
    scanner = scan(transfer_syntax, list(iter_chunks(data, 7)))
    assert scanner.state is ScanState.FOUND
    assert scanner.study_uid == STUDY_UID
    assert scanner.finish() is True


@pytest.mark.parametrize("transfer_syntax", FAMILIES.values(), ids=FAMILIES.keys())
def test_uid_found_before_the_pixel_data_arrives(transfer_syntax: str) -> None:
    data = encode(make_dataset(transfer_syntax, pixel_bytes=8192), transfer_syntax)
    scanner = scanners.make(transfer_syntax)
    for i in range(len(data)):
        scanner.feed(data[i : i + 1])
        if scanner.decided:
            break
    assert scanner.state is ScanState.FOUND
    assert scanner.bytes_seen < len(data) - 4096


@pytest.mark.parametrize("transfer_syntax", FAMILIES.values(), ids=FAMILIES.keys())
def test_missing_uid_is_reported_at_the_next_tag(transfer_syntax: str) -> None:
    data = encode(make_dataset(transfer_syntax, study_uid=None, pixel_bytes=8192), transfer_syntax)
    scanner = scanners.make(transfer_syntax)
    for i in range(len(data)):
        scanner.feed(data[i : i + 1])
        if scanner.decided:
            break
    assert scanner.state is ScanState.MISSING
    assert scanner.bytes_seen < len(data) - 4096
    assert "(0020,000E)" in scanner.detail  # SeriesInstanceUID came first
    for i in range(scanner.bytes_seen, len(data), 1000):
        scanner.feed(data[i : i + 1000])
    assert scanner.finish() is True
    assert scanner.state is ScanState.MISSING
    assert_no_patient_data(scanner)


def test_missing_uid_at_the_end_of_the_data_set() -> None:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = "1.2.3"
    data = encode(ds, ExplicitVRLittleEndian)
    scanner = scan_whole(ExplicitVRLittleEndian, data)
    assert scanner.state is ScanState.NEED_MORE
    assert scanner.finish() is True
    assert scanner.state is ScanState.MISSING
    assert scanner.detail


@pytest.mark.parametrize("undefined", [True, False], ids=["undefined", "defined"])
@pytest.mark.parametrize("transfer_syntax", FAMILIES.values(), ids=FAMILIES.keys())
def test_uid_only_inside_a_sequence_is_missing(transfer_syntax: str, undefined: bool) -> None:
    ds = make_dataset(
        transfer_syntax,
        study_uid=None,
        before_uid={"ReferencedStudySequence": nested_sequence(3, undefined=undefined)},
        undefined_length=undefined,
    )
    scanner = scan_whole(transfer_syntax, encode(ds, transfer_syntax))
    assert scanner.finish() is True, scanner.detail
    assert scanner.state is ScanState.MISSING
    assert scanner.study_uid is None


@pytest.mark.parametrize("transfer_syntax", FAMILIES.values(), ids=FAMILIES.keys())
@file_settings
@given(data=st.data())
def test_sequences_nested_three_deep_before_the_uid(
    transfer_syntax: str, data: st.DataObject
) -> None:
    ds = make_dataset(transfer_syntax, before_uid={"ReferencedStudySequence": nested_sequence(3)})
    encoded = encode(ds, transfer_syntax)
    assert DECOY_UID.encode() in (inflate(encoded) if transfer_syntax in DEFLATED else encoded)
    scanner = scan(transfer_syntax, data.draw(fragmentations(encoded)))
    assert scanner.state is ScanState.FOUND
    assert scanner.study_uid == STUDY_UID
    assert scanner.finish() is True


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1.2.abc", "not a valid UID"),
        ("1..2", "not a valid UID"),
        ("8" * 80, "not a valid UID"),
        ("1.2.3\\1.2.4", "not a valid UID"),
        ("9" * 300, "300 bytes long"),
    ],
)
@pytest.mark.parametrize("transfer_syntax", FAMILIES.values(), ids=FAMILIES.keys())
def test_invalid_uid(transfer_syntax: str, value: str, reason: str) -> None:
    data = encode(make_dataset(transfer_syntax, study_uid=value), transfer_syntax)
    scanner = scan(transfer_syntax, list(iter_chunks(data, 5)))
    assert scanner.state is ScanState.INVALID_UID
    assert reason in scanner.detail
    assert scanner.study_uid is None
    assert scanner.finish() is True  # well formed: the router refuses it for the UID
    assert scanner.state is ScanState.INVALID_UID
    assert_no_patient_data(scanner)


@pytest.mark.parametrize("padding", [b"", b"\0\0", b"  "])
@pytest.mark.parametrize("transfer_syntax", FAMILIES.values(), ids=FAMILIES.keys())
def test_empty_uid_is_missing(transfer_syntax: str, padding: bytes) -> None:
    # An empty Type 1 value is a missing value (DIMSE 0121H), not a wrong one.
    data = encode(make_dataset(transfer_syntax, study_uid=padding), transfer_syntax)
    scanner = scan(transfer_syntax, list(iter_chunks(data, 5)))
    assert scanner.state is ScanState.MISSING
    assert "empty" in scanner.detail
    assert scanner.finish() is True
    assert scanner.state is ScanState.MISSING


def test_uid_value_with_patient_data_is_not_echoed() -> None:
    data = encode(
        make_dataset(ExplicitVRLittleEndian, study_uid=PATIENT_ID), ExplicitVRLittleEndian
    )
    scanner = scan_whole(ExplicitVRLittleEndian, data)
    assert scanner.state is ScanState.INVALID_UID
    assert_no_patient_data(scanner)


@pytest.mark.parametrize(
    "transfer_syntax", LITTLE_ENDIAN_FAMILIES.values(), ids=LITTLE_ENDIAN_FAMILIES.keys()
)
def test_un_of_undefined_length_is_an_implicit_vr_sequence(transfer_syntax: str) -> None:
    # PS3.5 6.2.2: a sequence whose VR is unknown is sent as UN of undefined
    # length holding implicit VR little endian items, whatever the transfer syntax.
    item = Dataset()
    item.ReferencedSOPClassUID = CTImageStorage
    item.add(uid_element(DECOY_UID))
    item.ReferencedSeriesSequence = nested_sequence(2)
    body = encode_implicit_items([item], undefined_items=True)
    ds = make_dataset(transfer_syntax)
    ds.add(DataElement(0x00191010, "UN", body, is_undefined_length=True))
    ds.add(DataElement(0x00190010, "LO", "GATEWAYPOOL TEST"))
    encoded = encode(ds, transfer_syntax)
    scanner = scan(transfer_syntax, list(iter_chunks(encoded, 3)))
    assert scanner.state is ScanState.FOUND
    assert scanner.study_uid == STUDY_UID
    assert scanner.finish() is True, scanner.detail


def encode_implicit_items(items: list[Dataset], *, undefined_items: bool) -> bytes:
    """Items of a sequence in implicit VR little endian, without the delimiter."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    for item in items:
        item.is_undefined_length_sequence_item = undefined_items
        write_sequence_item(fp, item, ["iso8859"])
    return fp.getvalue()


@pytest.mark.parametrize("transfer_syntax", FAMILIES.values(), ids=FAMILIES.keys())
def test_encapsulated_pixel_data_with_many_fragments(transfer_syntax: str) -> None:
    ds = make_dataset(transfer_syntax)
    frames = [bytes([n]) * (2 * n + 2) for n in range(40)]
    del ds.PixelData
    ds.add(DataElement(0x7FE00010, "OB", encapsulate(frames), is_undefined_length=True))
    # The scanner must leave the fragments at their delimiter and go on.
    ds.DataSetTrailingPadding = bytes(8)
    data = encode(ds, transfer_syntax)
    scanner = scan(transfer_syntax, list(iter_chunks(data, 11)))
    assert scanner.state is ScanState.FOUND
    assert scanner.finish() is True, scanner.detail


def test_big_endian_items_and_lengths_are_big_endian() -> None:
    data = encode(
        make_dataset(
            ExplicitVRBigEndian, before_uid={"ReferencedStudySequence": nested_sequence(3)}
        ),
        ExplicitVRBigEndian,
    )
    assert b"\xff\xfe\xe0\x00" in data  # a big endian item tag
    scanner = scan_whole(ExplicitVRBigEndian, data)
    assert scanner.state is ScanState.FOUND
    assert scanner.finish() is True
    # Read as little endian, the same bytes make no sense.
    assert scan_whole(ExplicitVRLittleEndian, data).finish() is False


@pytest.mark.parametrize("transfer_syntax", [JPIP_REFERENCED_DEFLATE, JPIPHTJ2KReferencedDeflate])
def test_jpip_deflate_data_sets_are_deflated(transfer_syntax: str) -> None:
    # PS3.5 A.7, A.12: the data set is deflated as in Deflated Explicit VR
    # Little Endian (pydicom 3.0 calls them encapsulated and does not deflate).
    ds = make_dataset(ExplicitVRLittleEndian)
    del ds.PixelData
    data = deflate(encode(ds, ExplicitVRLittleEndian))
    scanner = scan_whole(transfer_syntax, data)
    assert scanner.state is ScanState.FOUND
    assert scanner.finish() is True


# -- hand-made bytes: the exact cases pydicom will not write --------------------


LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())


def el(tag: int, vr: bytes, value: bytes = b"", *, length: int | None = None) -> bytes:
    """One explicit VR little endian element (a header only, if `length` is given)."""
    n = len(value) if length is None else length
    if vr in LONG_VRS:
        return struct.pack("<HH2s2xL", tag >> 16, tag & 0xFFFF, vr, n) + value
    return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, n) + value


def item(value: bytes = b"", *, length: int | None = None) -> bytes:
    return struct.pack("<HHL", 0xFFFE, 0xE000, len(value) if length is None else length) + value


UNDEFINED = 0xFFFFFFFF
ITEM_END = struct.pack("<HHL", 0xFFFE, 0xE00D, 0)
SEQ_END = struct.pack("<HHL", 0xFFFE, 0xE0DD, 0)
HEAD = el(0x00080016, b"UI", CTImageStorage.encode() + b"\0")
STUDY = el(0x0020000D, b"UI", STUDY_UID.encode())
TAIL = el(0x0020000E, b"UI", b"1.2.3\0") + el(0x7FE00010, b"OB", bytes(16))


def test_uid_is_found_with_its_last_byte_and_missing_with_the_next_header() -> None:
    scanner = scanners.make(ExplicitVRLittleEndian)
    for byte in iter_chunks(HEAD + STUDY[:-1], 1):
        scanner.feed(byte)
        assert scanner.state is ScanState.NEED_MORE
    scanner.feed(STUDY[-1:])
    assert scanner.state is ScanState.FOUND

    scanner = scanners.make(ExplicitVRLittleEndian)
    for byte in iter_chunks(HEAD + TAIL[:7], 1):
        scanner.feed(byte)
        assert scanner.state is ScanState.NEED_MORE
    scanner.feed(TAIL[7:8])  # the last byte of the (0020,000E) header
    assert scanner.state is ScanState.MISSING


@pytest.mark.parametrize(
    ("padded", "expected"),
    [
        (b"1.2.3\0", "1.2.3"),
        (b"1.2.34 ", "1.2.34"),
        (b"1.2.3 \0", "1.2.3"),
        (b"1.02.003", "1.02.003"),  # leading zeros: wrong, but real data has them
        (b"9" * 64, "9" * 64),
    ],
)
def test_uid_padding_is_stripped(padded: bytes, expected: str) -> None:
    scanner = scan_whole(ExplicitVRLittleEndian, HEAD + el(0x0020000D, b"UI", padded) + TAIL)
    assert scanner.state is ScanState.FOUND
    assert scanner.study_uid == expected
    assert scanner.finish() is True


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (HEAD + STUDY + STUDY + TAIL, "repeated"),
        (HEAD + el(0x00200010, b"SH", b"42") + STUDY + TAIL, "after a later tag"),
        (HEAD + item(b"x" * 4) + STUDY, "unexpected (FFFE,E000)"),
        (HEAD + ITEM_END + STUDY, "unexpected (FFFE,E00D)"),
        (HEAD + b"\x08\x00\x20\x00ZZ\x02\x0012" + STUDY, "unknown VR"),
        (
            HEAD
            + el(0x00081110, b"SQ", item(length=UNDEFINED) + STUDY + SEQ_END, length=UNDEFINED),
            "(FFFE,E0DD)",
        ),
        (HEAD + el(0x00081110, b"SQ", STUDY, length=UNDEFINED), "where an item was expected"),
        (HEAD + el(0x00080081, b"UT", length=UNDEFINED), "undefined length"),
        (
            HEAD
            + STUDY
            + el(0x7FE00010, b"OB", item(length=UNDEFINED) + SEQ_END, length=UNDEFINED),
            "fragment of undefined length",
        ),
        (b"\xff" * 64, "unknown VR"),
        (b"hello, this is not DICOM at all....", "unknown VR"),
    ],
)
def test_malformed_bytes_are_malformed_not_an_exception(data: bytes, reason: str) -> None:
    for size in (1, 3, len(data)):
        scanner = scan(ExplicitVRLittleEndian, list(iter_chunks(data, size)))
        assert scanner.state is ScanState.MALFORMED
        assert reason in scanner.detail
        assert scanner.finish() is False
        assert scanner.state is ScanState.MALFORMED


def test_malformation_after_the_uid_still_refuses_the_instance() -> None:
    scanner = scanners.make(ExplicitVRLittleEndian)
    scanner.feed(HEAD + STUDY)
    assert scanner.state is ScanState.FOUND
    scanner.feed(b"\x10\x00\x10\x00??\x00\x00")
    assert scanner.state is ScanState.MALFORMED
    scanner.feed(TAIL)  # ignored, but counted
    assert scanner.bytes_seen == len(HEAD + STUDY + TAIL) + 8
    assert scanner.finish() is False


def test_malformed_names_the_element_it_broke_at() -> None:
    """The tag for Offending Element (0000,0901), also for a data set that ends early."""
    # (0010,0010) with VR "??": where its length is cannot be known.
    broken = scan_whole(ExplicitVRLittleEndian, HEAD + b"\x10\x00\x10\x00??\x00\x00" + STUDY)
    assert broken.state is ScanState.MALFORMED
    assert broken.offending == 0x00100010
    repeated = scan_whole(ExplicitVRLittleEndian, HEAD + STUDY + STUDY)
    assert repeated.state is ScanState.MALFORMED
    assert repeated.offending == 0x0020000D
    cut = scan_whole(ExplicitVRLittleEndian, (HEAD + STUDY)[:-3])
    assert cut.finish() is False
    assert cut.state is ScanState.MALFORMED
    assert cut.offending == 0x0020000D


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20], ids=["bytewise", "small", "whole"])
@pytest.mark.parametrize(
    ("data", "offending"),
    [
        # A value cut short: the element it belongs to.
        (HEAD + STUDY + el(0x7FE00010, b"OB", bytes(10), length=1000), 0x7FE00010),
        # Inside the length field of a long VR's header: its tag is known.
        (HEAD + STUDY + el(0x7FE00010, b"OB", length=1000)[:10], 0x7FE00010),
        # Inside a sequence: the top-level sequence.
        (
            HEAD
            + STUDY
            + el(0x00081110, b"SQ", item(HEAD + ITEM_END, length=UNDEFINED), length=UNDEFINED),
            0x00081110,
        ),
        # Inside pixel data fragments: the pixel data.
        (
            HEAD
            + STUDY
            + el(
                0x7FE00010, b"OB", item(b"", length=0) + item(bytes(4), length=64), length=UNDEFINED
            ),
            0x7FE00010,
        ),
        # Inside a top-level element header: there is no element to name.
        (HEAD + STUDY + el(0x0020000E, b"UI", b"1.2.3\0")[:5], None),
    ],
    ids=["value", "long-length", "sequence", "fragments", "header"],
)
def test_a_data_set_that_ends_early_names_the_element_it_ends_inside(
    data: bytes, offending: int | None, chunk: int
) -> None:
    scanner = scan(ExplicitVRLittleEndian, list(iter_chunks(data, chunk)))
    assert scanner.finish() is False
    assert scanner.state is ScanState.MALFORMED
    assert scanner.offending == offending


def test_value_running_past_the_end_is_incomplete() -> None:
    data = HEAD + STUDY + el(0x7FE00010, b"OB", bytes(10), length=1000)
    scanner = scan_whole(ExplicitVRLittleEndian, data)
    assert scanner.state is ScanState.FOUND
    assert scanner.finish() is False
    assert "990 bytes before the end of a value" in scanner.detail


@pytest.mark.parametrize("cut", [1, 4, 8, 9, 12])
def test_data_set_ending_inside_an_open_sequence_is_incomplete(cut: int) -> None:
    nested = el(
        0x00081110, b"SQ", item(HEAD + ITEM_END, length=UNDEFINED) + SEQ_END, length=UNDEFINED
    )
    data = HEAD + STUDY + nested
    assert scan_whole(ExplicitVRLittleEndian, data).finish() is True
    scanner = scan_whole(ExplicitVRLittleEndian, data[:-cut])
    assert scanner.finish() is False
    assert scanner.state is ScanState.MALFORMED


def test_implicit_undefined_length_is_a_sequence_except_for_pixel_data() -> None:
    def implicit(tag: int, value: bytes, length: int | None = None) -> bytes:
        n = len(value) if length is None else length
        return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, n) + value

    study = implicit(0x0020000D, STUDY_UID.encode())
    nested_item = item(implicit(0x00080100, b"CODE") + ITEM_END, length=UNDEFINED)
    # Under any other tag, an undefined-length item is a nested data set...
    as_sequence = implicit(0x00091010, nested_item + SEQ_END, length=UNDEFINED)
    scanner = scan_whole(ImplicitVRLittleEndian, as_sequence + study)
    assert scanner.finish() is True
    assert scanner.study_uid == STUDY_UID
    # ...but pixel data fragments always have a defined length.
    as_pixels = implicit(0x7FE00010, nested_item + SEQ_END, length=UNDEFINED)
    scanner = scan_whole(ImplicitVRLittleEndian, study + as_pixels)
    assert scanner.finish() is False
    assert "fragment of undefined length" in scanner.detail


def test_implicit_undefined_length_on_a_standard_non_sequence_tag_is_malformed() -> None:
    # Found by tests/unit/router/test_scanner_differential.py. (0008,0016) is UI by
    # the data dictionary: pydicom reads its undefined-length value up to the
    # first delimiter bytes, here inside an item, and then finds the hidden
    # (0020,000D) 1.2.666 at the top level; item by item, the scan found
    # 1.2.3. The router refuses the instance rather than pick one reading.
    def implicit(tag: int, value: bytes, length: int | None = None) -> bytes:
        n = len(value) if length is None else length
        return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, n) + value

    tail = ITEM_END + SEQ_END + implicit(0x0020000D, b"1.2.3\0")
    hidden = SEQ_END + implicit(0x0020000D, b"1.2.666\0") + implicit(0x0020000E, b"", len(tail))
    body = item(implicit(0x00091000, hidden), length=UNDEFINED)
    data = implicit(0x00080016, body, length=UNDEFINED) + tail
    assert read_dataset(io.BytesIO(data), True, True).StudyInstanceUID == "1.2.666"
    scanner = scan_whole(ImplicitVRLittleEndian, data)
    assert scanner.finish() is False
    assert "(0008,0016), not a sequence" in scanner.detail
    # The same bytes under a sequence tag, or a private one, are a sequence.
    for tag in (0x00081110, 0x00091010):
        scanner = scan_whole(ImplicitVRLittleEndian, implicit(tag, body, length=UNDEFINED) + tail)
        assert scanner.finish() is True
        assert scanner.study_uid == "1.2.3"


def test_element_running_past_the_end_of_its_defined_length_item_is_malformed() -> None:
    # Found by tests/unit/router/test_scanner_differential.py. In a sequence of
    # undefined length, pydicom reads a defined-length item element by element
    # and lets its last element run past the item's end: here it swallows the
    # sequence delimiter and (0020,000D) 1.2.3 and then finds 1.2.666 at the
    # top level. DCMTK refuses the item; skipping it by its length, the scan
    # found 1.2.3. The router refuses the instance rather than pick one reading.
    def implicit(tag: int, value: bytes, length: int | None = None) -> bytes:
        n = len(value) if length is None else length
        return struct.pack("<HHL", tag >> 16, tag & 0xFFFF, n) + value

    real, fake = implicit(0x0020000D, b"1.2.3\0"), implicit(0x0020000D, b"1.2.666\0")
    swallow = implicit(0x0020000E, b"", len(SEQ_END + fake))
    overrun = implicit(0x00090010, b"", len(SEQ_END + real + swallow))
    data = implicit(0x00081110, item(overrun), length=UNDEFINED) + SEQ_END + real + swallow
    data += SEQ_END + fake
    assert read_dataset(io.BytesIO(data), True, True).StudyInstanceUID == "1.2.666"
    scanner = scan(ImplicitVRLittleEndian, list(iter_chunks(data, 3)))
    assert scanner.finish() is False
    assert "(0009,0010) runs past the end of its item" in scanner.detail
    # Items whose elements end short of the item's length, or with an item
    # delimiter inside, are refused too; items that fit are read.
    short = item(implicit(0x00080100, b"CODE") + b"\0" * 4)
    delimited = item(implicit(0x00080100, b"CODE") + ITEM_END)
    fits = item(implicit(0x00080100, b"CODE") + implicit(0x00080102, b"DCM "))
    for body, complete in [(short, False), (delimited, False), (fits, True)]:
        data = implicit(0x00081110, body + SEQ_END, length=UNDEFINED) + real
        scanner = scan(ImplicitVRLittleEndian, list(iter_chunks(data, 5)))
        assert scanner.finish() is complete, scanner.detail
        assert scanner.state is (ScanState.FOUND if complete else ScanState.MALFORMED)


def test_defined_length_items_are_skipped_unread() -> None:
    # The content of a sequence of defined length is not parsed: even a
    # top-level looking (0020,000D) in one of its items does not count.
    sq = el(0x00081110, b"SQ", item(b"\x00" * 6 + STUDY))
    scanner = scan_whole(ExplicitVRLittleEndian, HEAD + sq + TAIL)
    assert scanner.finish() is True
    assert scanner.state is ScanState.MISSING


def test_group_length_elements_are_ordinary_elements() -> None:
    group_length = el(0x00200000, b"UL", struct.pack("<L", len(STUDY)))
    scanner = scan_whole(ExplicitVRLittleEndian, HEAD + group_length + STUDY + TAIL)
    assert scanner.state is ScanState.FOUND
    assert scanner.finish() is True


def nested_sequences(depth: int) -> bytes:
    """`depth` undefined-length sequences, each inside an item of the one outside."""
    opening = (el(0x00081110, b"SQ", length=UNDEFINED) + item(length=UNDEFINED)) * depth
    return opening + HEAD + (ITEM_END + SEQ_END) * depth


def test_nesting_is_bounded() -> None:
    ok = scan_whole(ExplicitVRLittleEndian, nested_sequences(MAX_NESTING_DEPTH) + STUDY)
    assert ok.finish() is True
    assert ok.study_uid == STUDY_UID
    too_deep = scan_whole(ExplicitVRLittleEndian, nested_sequences(MAX_NESTING_DEPTH + 1) + STUDY)
    assert too_deep.finish() is False
    assert "nested deeper" in too_deep.detail


def test_deflate_stream_problems_are_malformed() -> None:
    plain = HEAD + STUDY + TAIL
    stream = deflate(plain)
    ts = DeflatedExplicitVRLittleEndian
    assert scan_whole(ts, stream).finish() is True
    assert scan_whole(ts, stream + b"\0").finish() is True  # even-length padding
    for bad, reason in [
        (stream[:-1], "deflate stream ends early"),
        (stream + b"\x01", "after the end of the deflate stream"),
        (stream + b"\0" * 10, "after the end of the deflate stream"),
        (b"\xff" * 32, "deflate stream is corrupt"),
        (deflate(plain[:-3]), "ends"),
    ]:
        scanner = scan_whole(ts, bad)
        assert scanner.finish() is False
        assert reason in scanner.detail


def test_small_highly_compressed_fragment_does_not_inflate_at_once() -> None:
    # 16 MiB of zeros deflate to a few KiB: the scanner must not hold them.
    plain = HEAD + STUDY + el(0x7FE00010, b"OB", length=16 << 20)
    stream = deflate(plain + bytes(16 << 20))
    tracemalloc.start()
    try:
        scanner = scan_whole(DeflatedExplicitVRLittleEndian, stream)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert scanner.finish() is True
    assert peak < 2 * len(stream) + (1 << 20)


# -- API ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("1.2.840.10008.1.2", True),
        ("0", True),
        ("1.02.3", True),
        ("1" * 64, True),
        ("1" * 65, False),
        ("", False),
        ("1.", False),
        (".1", False),
        ("1..2", False),
        ("1.2.a", False),
        ("1.2 ", False),
        ("1.٢", False),  # a non-ASCII digit
    ],
)
def test_is_valid_uid(value: str, valid: bool) -> None:
    assert is_valid_uid(value) is valid


def test_supported_transfer_syntaxes() -> None:
    assert len(set(SUPPORTED_TRANSFER_SYNTAXES)) == len(SUPPORTED_TRANSFER_SYNTAXES)
    assert set(pydicom.uid.AllTransferSyntaxes) <= set(SUPPORTED_TRANSFER_SYNTAXES)
    for ts in SUPPORTED_TRANSFER_SYNTAXES:
        scanners.make(ts)  # does not raise


@pytest.mark.parametrize(
    "transfer_syntax",
    ["1.2.3.4", CTImageStorage, "1.2.840.10008.1.2.6.2", "1.2.840.10008.1.20", "not a uid"],
)
def test_unreadable_transfer_syntax_is_refused_up_front(transfer_syntax: str) -> None:
    with pytest.raises(ValueError):
        scanners.make(transfer_syntax)


def test_retired_encapsulated_transfer_syntax_is_read_as_explicit_little_endian() -> None:
    scanner = scan_whole("1.2.840.10008.1.2.4.52", HEAD + STUDY + TAIL)
    assert scanner.study_uid == STUDY_UID
    assert scanner.finish() is True


def test_feed_after_finish_is_a_caller_bug() -> None:
    scanner = scan_whole(ExplicitVRLittleEndian, HEAD + STUDY + TAIL)
    assert scanner.finish() is True
    assert scanner.finish() is True  # idempotent
    with pytest.raises(RuntimeError):
        scanner.feed(b"x")


def test_empty_data_set_is_complete_but_missing() -> None:
    scanner = scanners.make(ImplicitVRLittleEndian)
    scanner.feed(b"")
    assert scanner.finish() is True
    assert scanner.state is ScanState.MISSING


def test_any_buffer_type_is_accepted_and_not_kept() -> None:
    data = HEAD + STUDY + TAIL
    scanner = scanners.make(ExplicitVRLittleEndian)
    buffer = bytearray(data[:10])
    scanner.feed(buffer)
    buffer.extend(b"x")  # would raise BufferError if the scanner kept a view
    scanner.feed(memoryview(data)[10:20])
    words = array("H")
    words.frombytes(data[20:30])
    scanner.feed(memoryview(words))  # a view of 2-byte items: counted in bytes
    scanner.feed(data[30:])
    assert scanner.bytes_seen == len(data)
    assert scanner.study_uid == STUDY_UID
    assert scanner.finish() is True


# -- random data sets -----------------------------------------------------------

uid_components = st.one_of(
    st.integers(0, 10**12).map(str), st.from_regex(r"0[0-9]{1,4}", fullmatch=True)
)
plain_uids = st.lists(st.integers(0, 10**12), min_size=2, max_size=5).map(
    lambda parts: ".".join(map(str, parts))
)
study_uids = (
    st.lists(uid_components, min_size=1, max_size=8)
    .map(".".join)
    .filter(lambda uid: len(uid) <= 64)
)
texts = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ abcdefghijklmnopqrstuvwxyz0123456789", max_size=24
)


@st.composite
def items(draw: st.DrawFn, depth: int) -> Dataset:
    ds = Dataset()
    ds.CodeValue = draw(texts.map(lambda t: t[:16]))
    if draw(st.booleans()):
        ds.add(uid_element(draw(study_uids)))  # a decoy: not at the top level
    if draw(st.booleans()):
        ds.add(DataElement(0x00091001, "OB", draw(st.binary(max_size=40))))
    if depth < 3 and draw(st.booleans()):
        ds.ReferencedSeriesSequence = draw(sequences(depth + 1))
        ds["ReferencedSeriesSequence"].is_undefined_length = draw(st.booleans())
    ds.is_undefined_length_sequence_item = draw(st.booleans())
    return ds


def sequences(depth: int) -> st.SearchStrategy[Sequence]:
    return st.lists(items(depth), max_size=3).map(Sequence)


@st.composite
def random_instances(draw: st.DrawFn) -> tuple[Dataset, list[bytes]]:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = draw(st.lists(st.sampled_from(["ORIGINAL", "PRIMARY", "AXIAL"]), max_size=3))
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = draw(plain_uids)
    if draw(st.booleans()):
        ds.AccessionNumber = draw(texts.map(lambda t: t[:16]))
    for keyword in ("ReferencedStudySequence", "OtherPatientIDsSequence"):
        if draw(st.booleans()):
            setattr(ds, keyword, draw(sequences(1)))
            ds[keyword].is_undefined_length = draw(st.booleans())
    ds.PatientName = draw(texts)
    if draw(st.booleans()):
        ds.add(DataElement(0x00190010, "LO", "GATEWAYPOOL TEST"))
        vr = draw(st.sampled_from(["OB", "UN"]))
        ds.add(DataElement(0x00191001, vr, b"ab" * draw(st.integers(0, 40))))
    ds.add(uid_element(draw(study_uids)))
    ds.SeriesInstanceUID = draw(plain_uids)
    if draw(st.booleans()):
        ds.RequestAttributesSequence = draw(sequences(1))
        ds["RequestAttributesSequence"].is_undefined_length = draw(st.booleans())
    frames = draw(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=4))
    return ds, frames


@pytest.mark.parametrize("transfer_syntax", FAMILIES.values(), ids=FAMILIES.keys())
@property_settings
@given(instance=random_instances(), data=st.data())
def test_random_instance_uid_is_found(
    transfer_syntax: str, instance: tuple[Dataset, list[bytes]], data: st.DataObject
) -> None:
    ds, frames = instance
    study_uid = str(ds.StudyInstanceUID)
    encoded = encode(with_pixel_data(ds, frames, transfer_syntax), transfer_syntax)
    scanner = scan(transfer_syntax, data.draw(fragmentations(encoded)))
    assert scanner.state is ScanState.FOUND
    assert scanner.study_uid == study_uid
    assert scanner.finish() is True, scanner.detail


@pytest.mark.parametrize("transfer_syntax", FAMILIES.values(), ids=FAMILIES.keys())
@property_settings
@given(prefix_length=st.integers(0, 400), garbage=st.binary(max_size=400), data=st.data())
def test_any_bytes_give_a_verdict_not_an_exception(
    transfer_syntax: str, prefix_length: int, garbage: bytes, data: st.DataObject
) -> None:
    valid = encode(make_dataset(transfer_syntax), transfer_syntax)
    corrupted = valid[:prefix_length] + garbage
    scanner = scan(transfer_syntax, data.draw(fragmentations(corrupted)))
    complete = scanner.finish()
    assert complete is (scanner.state is not ScanState.MALFORMED)
    assert scanner.state is not ScanState.NEED_MORE
    if not complete:
        assert scanner.detail
    assert_no_patient_data(scanner)


# -- bounded memory and work ------------------------------------------------------


def big_instance_head() -> bytes:
    """A data set up to the header of a 64 MiB (7FE0,0010) value."""
    return (
        HEAD + STUDY + el(0x00280010, b"US", b"\x00\x10") + el(0x7FE00010, b"OW", length=64 << 20)
    )


def test_64_mib_of_pixel_data_is_counted_not_kept() -> None:
    fragment = bytes(64 << 10)
    scanner = scanners.make(ExplicitVRLittleEndian)
    scanner.feed(big_instance_head())
    assert scanner.state is ScanState.FOUND
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(1024):
            scanner.feed(fragment)
            assert scanner.buffered_bytes <= 64
        growth = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert growth < 4096
    scanner.feed(el(0xFFFCFFFC, b"OB", bytes(8)))  # data set trailing padding
    assert scanner.finish() is True
    assert scanner.bytes_seen == len(big_instance_head()) + (64 << 20) + 20


# -- skipping unseen bytes (the splicing path) ---------------------------------


def scan_skipping(transfer_syntax: str, fragments: list[bytes]) -> Scanner:
    """Like :func:`scan`, but let every skippable byte go by unseen.

    The router splices those bytes straight to the gateway: the scan only
    learns how many there were (:meth:`DatasetScanner.skip`).
    """
    scanner = scanners.make(transfer_syntax)
    for fragment in fragments:
        unseen = min(scanner.skippable, len(fragment))
        scanner.skip(unseen)
        if unseen < len(fragment):
            scanner.feed(fragment[unseen:])
    assert scanner.bytes_seen == sum(len(f) for f in fragments)
    return scanner


def verdict(scanner: Scanner) -> tuple[bool, ScanState, str | None, str]:
    complete = scanner.finish()
    return complete, scanner.state, scanner.study_uid, scanner.detail


@pytest.mark.parametrize("sample", GOOD_SAMPLES, ids=sample_id)
@file_settings
@given(data=st.data())
def test_skipping_what_is_skippable_reaches_the_same_verdict(
    sample: Sample, data: st.DataObject
) -> None:
    plain = sample.plain
    cut = data.draw(st.one_of(st.just(len(plain)), st.integers(0, len(plain))), label="cut")
    piece = plain[:cut]
    if sample.transfer_syntax in DEFLATED:
        piece = deflate(piece)
    fragments = data.draw(fragmentations(piece))
    skipping = scan_skipping(sample.transfer_syntax, fragments)
    assert verdict(skipping) == verdict(scan(sample.transfer_syntax, fragments))


def test_deflated_data_is_never_skippable() -> None:
    scanner = scanners.make(DeflatedExplicitVRLittleEndian)
    assert scanner.deflated
    assert scanner.skippable == 0
    with pytest.raises(ValueError, match="skippable"):
        scanner.skip(1)


def test_skip_refuses_more_than_skippable_and_nothing_after_finish() -> None:
    scanner = scanners.make(ExplicitVRLittleEndian)
    # (0008,0016) UI of length 1024: the scan skips its value unread.
    scanner.feed(struct.pack("<HH2sH", 0x0008, 0x0016, b"UI", 1024))
    assert scanner.skippable == 1024
    with pytest.raises(ValueError, match="skippable"):
        scanner.skip(1025)
    scanner.skip(1000)
    assert scanner.skippable == 24
    scanner.finish()
    assert scanner.skippable == 0
