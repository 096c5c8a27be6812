"""Synthetic head-CT studies for the demo, the benchmark and the tests.

The router must be exercised with data that looks like what a CT scanner
sends: hundreds of 512x512 16-bit slices per study, realistic attributes and
UIDs, and now and then one huge multi-frame instance. Everything here is
reproducible: the same ``seed`` and ``study_index`` give the same UIDs and
the same bytes, so a test can regenerate its input instead of storing it.

Patient attributes are synthetic (``DEMO^PATIENT^07``) but are still treated
as patient attributes: nothing in this package logs them.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_dataset, write_file_meta_info
from pydicom.pixels.encoders.base import RLELosslessEncoder
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    PYDICOM_ROOT_UID,
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
    generate_uid,
)

__all__ = [
    "MULTIFRAME_TRANSFER_SYNTAXES",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "UID_ROOT",
    "MultiframeInstance",
    "Study",
    "dataset_bytes",
    "dataset_offset",
    "dataset_sha256",
    "generate_multiframe",
    "generate_study",
    "study_uid_for",
]

#: Root of every UID generated here. pydicom's registered root: the suffix is
#: a hash of (seed, study index, role, number), so runs are reproducible and
#: the UIDs have the length and digit mix of real ones (which matters to a
#: router that hashes them).
UID_ROOT = PYDICOM_ROOT_UID

#: Transfer syntaxes :func:`generate_study` can write without extra packages.
#: Measured per 512x512 slice: ~3 ms native, ~50 ms deflated (zlib), ~90 ms
#: RLE Lossless (pydicom's encoder): use the last two for small tests only.
SUPPORTED_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    RLELossless,
)

#: Transfer syntaxes :func:`generate_multiframe` can stream (native, little endian).
MULTIFRAME_TRANSFER_SYNTAXES: tuple[UID, ...] = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)

# CT numbers are stored as HU + 1024 with RescaleIntercept -1024, as most
# scanners do; values stay well inside int16.
_RESCALE_INTERCEPT = -1024
_HU_AIR = -1000
_HU_SKULL = 1300
_HU_BRAIN = 35
_HU_CSF = 8
_NOISE_SIGMA_HU = 6.0
_FIELD_OF_VIEW_MM = 250.0
_SLICE_SPACING_MM = 1.0
# Number of distinct head cross-section sizes per study: each is built once
# and reused, which is what makes 1000 slices cheap.
_SHAPE_LEVELS = 24
_NOISE_ROWS_EXTRA = 61  # noise bank is this many rows taller than an image
_FILE_META_GROUP = 0x0002
_PREAMBLE_AND_MAGIC = 132
_COPY_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Study:
    """A generated study, as written to disk.

    Attributes
    ----------
    study_uid : str
        StudyInstanceUID shared by every instance.
    series_uid : str
        SeriesInstanceUID of the single series.
    files : list of Path
        One Part-10 file per instance, in slice order.
    sop_instance_uids : list of str
        SOPInstanceUID of each file, same order as ``files``.
    transfer_syntax : str
        Transfer syntax every file is encoded in.
    total_bytes : int
        Sum of the file sizes (what a sender reads from disk).
    """

    study_uid: str
    series_uid: str
    files: list[Path]
    sop_instance_uids: list[str]
    transfer_syntax: str
    total_bytes: int

    @property
    def instances(self) -> int:
        """Number of instances (files) in the study."""
        return len(self.files)


@dataclass(frozen=True)
class MultiframeInstance:
    """A generated multi-frame instance.

    Attributes
    ----------
    path : Path
        The Part-10 file.
    study_uid : str
        Its StudyInstanceUID.
    sop_instance_uid : str
        Its SOPInstanceUID.
    frames : int
        NumberOfFrames.
    total_bytes : int
        File size.
    """

    path: Path
    study_uid: str
    sop_instance_uid: str
    frames: int
    total_bytes: int


def _uid(*parts: object) -> str:
    # generate_uid hashes the *concatenation* of its entropy sources, so they
    # are joined with a separator: ("instance", 0, 1, 12) must not collide
    # with ("instance", 0, 11, 2).
    return str(
        generate_uid(prefix=UID_ROOT, entropy_srcs=["/".join(["gatewaypool", *map(str, parts)])])
    )


def study_uid_for(*, study_index: int, seed: int = 0) -> str:
    """Return the StudyInstanceUID :func:`generate_study` gives these arguments.

    Lets a test know where a study will be routed before generating it.
    """
    return _uid("study", seed, study_index)


@dataclass
class _Phantom:
    """Head cross-sections and a noise bank for one study, built once.

    Why: building an ellipse phantom costs several full-image float
    operations; doing it per slice would dominate a 1000-slice study. Head
    sizes are quantised to ``_SHAPE_LEVELS`` levels cached here, and per-slice
    variety comes from a window into a noise bank taller than the image plus a
    small per-slice shift.
    """

    rows: int
    columns: int
    rng: np.random.Generator
    _r2: npt.NDArray[np.float32] = field(init=False)
    _ventricles: npt.NDArray[np.bool_] = field(init=False)
    _noise: npt.NDArray[np.int16] = field(init=False)
    _levels: dict[int, npt.NDArray[np.int16]] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        y = np.linspace(-1.0, 1.0, self.rows, dtype=np.float32)[:, None]
        x = np.linspace(-1.0, 1.0, self.columns, dtype=np.float32)[None, :]
        # Head ellipse: 0.72 of the half field of view wide, 0.88 deep.
        self._r2 = (x / 0.72) ** 2 + (y / 0.88) ** 2
        left = ((x + 0.12) / 0.07) ** 2 + ((y + 0.05) / 0.22) ** 2 < 1.0
        right = ((x - 0.12) / 0.07) ** 2 + ((y + 0.05) / 0.22) ** 2 < 1.0
        self._ventricles = left | right
        noise = self.rng.normal(0.0, _NOISE_SIGMA_HU, (self.rows + _NOISE_ROWS_EXTRA, self.columns))
        self._noise = noise.astype(np.int16)

    def _level(self, level: int) -> npt.NDArray[np.int16]:
        cached = self._levels.get(level)
        if cached is not None:
            return cached
        scale = (level + 1) / _SHAPE_LEVELS
        outer = self._r2 < scale**2
        inner = self._r2 < (scale * 0.92) ** 2
        hu = np.full((self.rows, self.columns), _HU_AIR, dtype=np.int16)
        hu[outer] = _HU_SKULL
        hu[inner] = _HU_BRAIN
        if scale > 0.8:
            hu[inner & self._ventricles] = _HU_CSF
        stored = hu - np.int16(_RESCALE_INTERCEPT)
        self._levels[level] = stored
        return stored

    def slice(self, index: int, count: int) -> npt.NDArray[np.int16]:
        """Stored pixel values of slice ``index`` of ``count`` (neck to vertex)."""
        # Height through the head in [-1, 1]; cross-section shrinks towards
        # both ends, like a head seen in axial slices.
        height = -0.9 + 1.8 * (index + 0.5) / max(count, 1)
        scale = float(np.sqrt(max(0.04, 1.0 - height * height)))
        level = min(_SHAPE_LEVELS - 1, int(scale * _SHAPE_LEVELS))
        base = self._level(level)
        offset = (index * 7) % _NOISE_ROWS_EXTRA
        out = base + self._noise[offset : offset + self.rows]
        # A one-pixel drift every few slices: neighbouring slices differ.
        shift = (index // 5) % 3 - 1
        if shift:
            out = np.roll(out, shift, axis=1)
        return out


def _check_size(rows: int, columns: int) -> None:
    if rows < 8 or columns < 8 or rows > 4096 or columns > 4096:
        raise ValueError(f"rows and columns must be in 8..4096, got {rows}x{columns}")


def _pixel_spacing(rows: int, columns: int) -> list[float]:
    return [
        round(_FIELD_OF_VIEW_MM / rows, 6),
        round(_FIELD_OF_VIEW_MM / columns, 6),
    ]


def _common_attributes(
    ds: Dataset, *, study_index: int, seed: int, study_uid: str, rows: int, columns: int
) -> None:
    """Patient, study, equipment and image-pixel attributes shared by both IODs."""
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.StudyDate = "20240115"
    ds.StudyTime = "083000"
    ds.ContentDate = "20240115"
    ds.ContentTime = "083012"
    ds.AccessionNumber = f"GWP{seed:04d}{study_index:05d}"
    ds.Modality = "CT"
    ds.Manufacturer = "GatewayPool"
    ds.InstitutionName = "Synthetic Data"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT HEAD WO CONTRAST (SYNTHETIC)"
    ds.ManufacturerModelName = "gatewaypool_local.synth"
    ds.PatientName = f"DEMO^PATIENT^{study_index:02d}"
    ds.PatientID = f"DEMO-{seed:04d}-{study_index:05d}"
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "HEAD"
    ds.KVP = "120"
    ds.StudyInstanceUID = study_uid
    ds.StudyID = str(study_index + 1)
    ds.FrameOfReferenceUID = _uid("frame-of-reference", seed, study_index)
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1


def _file_meta(sop_class: UID, sop_instance: str, transfer_syntax: UID) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "GWP_SYNTH_1"
    return meta


def generate_study(
    out_dir: Path | str,
    *,
    study_index: int,
    instances: int,
    rows: int = 512,
    columns: int = 512,
    transfer_syntax: str = ExplicitVRLittleEndian,
    seed: int = 0,
) -> Study:
    """Write one axial head-CT series as CT Image Storage Part-10 files.

    Parameters
    ----------
    out_dir : Path or str
        Folder to write into; created if missing. Files are named
        ``<study_index>-<slice>.dcm`` so several studies can share a folder.
    study_index : int
        Which study of a run this is: part of the UIDs, the synthetic patient
        name and ID.
    instances : int
        Number of slices (one instance each).
    rows, columns : int
        Image size; 512x512 is what scanners send, 64x64 keeps tests fast.
    transfer_syntax : str
        One of :data:`SUPPORTED_TRANSFER_SYNTAXES`.
    seed : int
        Distinguishes runs; the same seed and index give identical files.

    Returns
    -------
    Study
        The UIDs and the files written.

    Notes
    -----
    No element is a sequence and none has an undefined length, so DCMTK's
    ``storescu`` (which re-encodes what it reads, with explicit lengths) sends
    exactly the dataset bytes of the file. That is what lets the tests compare
    the received bytes with the files byte for byte.
    """
    _check_size(rows, columns)
    if instances < 1:
        raise ValueError(f"instances must be at least 1, got {instances}")
    ts = UID(transfer_syntax)
    if ts not in SUPPORTED_TRANSFER_SYNTAXES:
        raise ValueError(f"transfer syntax {ts} is not one of {list(SUPPORTED_TRANSFER_SYNTAXES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    study_uid = study_uid_for(study_index=study_index, seed=seed)
    series_uid = _uid("series", seed, study_index)
    phantom = _Phantom(rows, columns, np.random.default_rng([seed, study_index]))

    ds = Dataset()
    _common_attributes(
        ds, study_index=study_index, seed=seed, study_uid=study_uid, rows=rows, columns=columns
    )
    _head_ct_series(ds, series_uid=series_uid, rows=rows, columns=columns)

    half_fov = _FIELD_OF_VIEW_MM / 2.0
    encoder = _SliceEncoder(
        ds,
        ts,
        ["SOPInstanceUID", "InstanceNumber", "ImagePositionPatient", "SliceLocation", "PixelData"],
    )
    files: list[Path] = []
    sop_uids: list[str] = []
    total = 0
    for i in range(instances):
        sop_uid = _uid("instance", seed, study_index, i)
        z = round(i * _SLICE_SPACING_MM - 60.0, 3)
        varying = Dataset()
        varying.SOPInstanceUID = sop_uid
        varying.InstanceNumber = i + 1
        varying.ImagePositionPatient = [-half_fov, -half_fov, z]
        varying.SliceLocation = str(z)
        _set_pixel_data(varying, phantom.slice(i, instances), ts)
        path = out / f"{study_index:05d}-{i:05d}.dcm"
        data = encoder.encode(varying, _file_meta(CTImageStorage, sop_uid, ts))
        path.write_bytes(data)
        files.append(path)
        sop_uids.append(sop_uid)
        total += len(data)
    return Study(
        study_uid=study_uid,
        series_uid=series_uid,
        files=files,
        sop_instance_uids=sop_uids,
        transfer_syntax=str(ts),
        total_bytes=total,
    )


def _head_ct_series(ds: Dataset, *, series_uid: str, rows: int, columns: int) -> None:
    """The attributes every slice of the axial head-CT series shares."""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = ds.StudyTime
    ds.SeriesDescription = "HEAD 1.0 mm"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.SliceThickness = str(_SLICE_SPACING_MM)
    ds.ConvolutionKernel = "H30s"
    ds.PatientPosition = "HFS"
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = _pixel_spacing(rows, columns)
    ds.RescaleIntercept = str(_RESCALE_INTERCEPT)
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "80"
    ds.WindowCenterWidthExplanation = "BRAIN"


def _set_pixel_data(ds: Dataset, pixels: npt.NDArray[np.int16], ts: UID) -> None:
    if ts == RLELossless:
        rows, columns = pixels.shape
        frame = RLELosslessEncoder.encode(
            pixels,
            encoding_plugin="pydicom",
            rows=rows,
            columns=columns,
            samples_per_pixel=1,
            bits_allocated=16,
            bits_stored=16,
            pixel_representation=1,
            photometric_interpretation="MONOCHROME2",
            number_of_frames=1,
        )
        ds.PixelData = encapsulate([frame])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    else:
        # Native pixel data is written as given: byte order is ours to set.
        native = pixels.byteswap() if ts == ExplicitVRBigEndian else pixels
        ds.PixelData = native.tobytes()
        ds["PixelData"].VR = "OW"


class _SliceEncoder:
    """Encode the slices of a series from one pre-encoded template.

    Why: ``pydicom.dcmwrite`` spends ~5 ms per slice encoding ~45 elements
    that are the same in every slice, which made a 1000-slice study take
    7 s. Here the constant elements are encoded once, in runs between the
    tags that vary per slice; each slice encodes only its few varying
    elements (with pydicom, so the encoding rules stay pydicom's) and the
    runs and elements are joined in tag order. Deflated datasets are
    deflated after joining, as the transfer syntax defines.
    """

    def __init__(self, constant: Dataset, ts: UID, varying: Sequence[str]) -> None:
        self._ts = ts
        self._implicit = ts.is_implicit_VR
        self._little = ts.is_little_endian
        self._tags = sorted(Tag(keyword) for keyword in varying)
        # Constant elements in len(tags) + 1 runs, split at the varying tags.
        bounds = [-1, *self._tags, 0x100000000]
        self._runs: list[bytes] = []
        for low, high in itertools.pairwise(bounds):
            run = Dataset()
            for elem in constant:
                if low < elem.tag < high:
                    run.add(elem)
            buf = self._buffer()
            write_dataset(buf, run)
            self._runs.append(buf.getvalue())

    def _buffer(self) -> DicomBytesIO:
        buf = DicomBytesIO()
        buf.is_implicit_VR = self._implicit
        buf.is_little_endian = self._little
        return buf

    def encode(self, varying: Dataset, meta: FileMetaDataset) -> bytes:
        """Return the Part-10 bytes of ``constant`` merged with ``varying``."""
        if sorted(varying.keys()) != self._tags:
            raise ValueError("varying elements differ from those the encoder was built for")
        parts: list[bytes] = []
        for run, tag in zip(self._runs, self._tags, strict=False):
            parts.append(run)
            buf = self._buffer()
            write_data_element(buf, varying[tag])
            parts.append(buf.getvalue())
        parts.append(self._runs[-1])
        body = b"".join(parts)
        if self._ts == DeflatedExplicitVRLittleEndian:
            compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
            body = compressor.compress(body) + compressor.flush()
            if len(body) % 2:
                body += b"\x00"
        head = DicomBytesIO()
        head.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(head, meta, enforce_standard=True)
        return head.getvalue() + body


def _frame_item(**keywords: object) -> Dataset:
    item = Dataset()
    for keyword, value in keywords.items():
        setattr(item, keyword, value)
    return item


def _enhanced_ct_header(
    *, study_index: int, seed: int, rows: int, columns: int, frames: int
) -> tuple[Dataset, str, str]:
    """Enhanced CT Image dataset without Pixel Data, and its study and SOP UIDs."""
    study_uid = study_uid_for(study_index=study_index, seed=seed)
    sop_uid = _uid("multiframe", seed, study_index)
    ds = Dataset()
    _common_attributes(
        ds, study_index=study_index, seed=seed, study_uid=study_uid, rows=rows, columns=columns
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "VOLUME", "NONE"]
    ds.SOPClassUID = EnhancedCTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.AcquisitionDateTime = "20240115083005"
    ds.SeriesInstanceUID = _uid("multiframe-series", seed, study_index)
    ds.SeriesNumber = 3
    ds.SeriesDescription = "HEAD VOLUME (SYNTHETIC MULTI-FRAME)"
    ds.InstanceNumber = 1
    ds.NumberOfFrames = frames
    ds.ContentQualification = "RESEARCH"
    ds.PixelPresentation = "MONOCHROME"
    ds.VolumetricProperties = "VOLUME"
    ds.VolumeBasedCalculationTechnique = "NONE"
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    dimension_uid = _uid("dimension", seed, study_index)
    ds.DimensionOrganizationSequence = DicomSequence(
        [_frame_item(DimensionOrganizationUID=dimension_uid)]
    )
    ds.DimensionIndexSequence = DicomSequence(
        [
            _frame_item(
                DimensionOrganizationUID=dimension_uid,
                DimensionIndexPointer=0x00209057,  # In-Stack Position Number
                FunctionalGroupPointer=0x00209111,  # Frame Content Sequence
            )
        ]
    )
    shared = Dataset()
    shared.PixelMeasuresSequence = DicomSequence(
        [
            _frame_item(
                PixelSpacing=_pixel_spacing(rows, columns),
                SliceThickness=str(_SLICE_SPACING_MM),
            )
        ]
    )
    shared.PlaneOrientationSequence = DicomSequence(
        [_frame_item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])]
    )
    shared.PixelValueTransformationSequence = DicomSequence(
        [_frame_item(RescaleIntercept=str(_RESCALE_INTERCEPT), RescaleSlope="1", RescaleType="HU")]
    )
    shared.FrameVOILUTSequence = DicomSequence([_frame_item(WindowCenter="40", WindowWidth="80")])
    ds.SharedFunctionalGroupsSequence = DicomSequence([shared])
    half_fov = _FIELD_OF_VIEW_MM / 2.0
    per_frame = []
    for i in range(frames):
        z = round(i * _SLICE_SPACING_MM - 60.0, 3)
        item = Dataset()
        item.FrameContentSequence = DicomSequence(
            [_frame_item(StackID="1", InStackPositionNumber=i + 1, DimensionIndexValues=[i + 1])]
        )
        item.PlanePositionSequence = DicomSequence(
            [_frame_item(ImagePositionPatient=[-half_fov, -half_fov, z])]
        )
        per_frame.append(item)
    ds.PerFrameFunctionalGroupsSequence = DicomSequence(per_frame)
    return ds, study_uid, sop_uid


def generate_multiframe(
    path: Path | str,
    *,
    size_bytes: int,
    rows: int = 512,
    columns: int = 512,
    study_index: int = 0,
    seed: int = 0,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> MultiframeInstance:
    """Write one Enhanced CT Image instance of about ``size_bytes``.

    The number of frames is ``size_bytes`` divided by the frame size
    (``rows * columns * 2``), at least 1. The instance belongs to the study
    :func:`study_uid_for` gives ``study_index`` and ``seed`` (a new series).

    Parameters
    ----------
    path : Path or str
        File to write; its folder must exist.
    size_bytes : int
        Wanted size of the pixel data; below 4 GiB (a native Pixel Data
        element has a 32-bit length).
    rows, columns : int
        Frame size.
    study_index, seed : int
        As for :func:`generate_study`.
    transfer_syntax : str
        One of :data:`MULTIFRAME_TRANSFER_SYNTAXES`.

    Returns
    -------
    MultiframeInstance

    Notes
    -----
    Why the Pixel Data element is written by hand: pydicom encodes an element
    from a value that is either ``bytes`` in memory or a seekable buffer of
    known length, so a 1 GiB instance would need 1 GiB of memory, or a second
    1 GiB temporary file to read back. Here pydicom writes the file meta and
    every other element; then the (7FE0,0010) header (tag, VR ``OW``, 32-bit
    length, as the transfer syntax wants) is packed with :mod:`struct` and the
    frames are generated and written one at a time, so memory stays at one
    frame whatever the size. Pixel Data is the last element of the dataset
    (nothing else has a larger tag), so appending it keeps the tag order.
    """
    _check_size(rows, columns)
    ts = UID(transfer_syntax)
    if ts not in MULTIFRAME_TRANSFER_SYNTAXES:
        raise ValueError(f"transfer syntax {ts} is not one of {list(MULTIFRAME_TRANSFER_SYNTAXES)}")
    frame_bytes = rows * columns * 2
    frames = max(1, size_bytes // frame_bytes)
    pixel_length = frames * frame_bytes
    if pixel_length >= 0xFFFFFFFF:
        raise ValueError(f"size_bytes {size_bytes} too large for native Pixel Data (< 4 GiB)")

    ds, study_uid, sop_uid = _enhanced_ct_header(
        study_index=study_index, seed=seed, rows=rows, columns=columns, frames=frames
    )
    implicit = ts == ImplicitVRLittleEndian
    phantom = _Phantom(rows, columns, np.random.default_rng([seed, study_index, 1]))
    out = Path(path)
    with out.open("wb") as fp:
        _write_header(fp, ds, _file_meta(EnhancedCTImageStorage, sop_uid, ts), implicit=implicit)
        fp.write(_pixel_data_header(pixel_length, implicit=implicit))
        for frame in _frames(phantom, frames):
            fp.write(frame.tobytes())
    return MultiframeInstance(
        path=out,
        study_uid=study_uid,
        sop_instance_uid=sop_uid,
        frames=frames,
        total_bytes=out.stat().st_size,
    )


def _write_header(fp: BinaryIO, ds: Dataset, meta: FileMetaDataset, *, implicit: bool) -> None:
    """Write preamble, file meta and ``ds`` (which has no Pixel Data)."""
    fp.write(b"\x00" * 128 + b"DICM")
    buf = DicomBytesIO()
    write_file_meta_info(buf, meta, enforce_standard=True)
    buf.is_implicit_VR = implicit
    buf.is_little_endian = True
    write_dataset(buf, ds)
    fp.write(buf.getvalue())


def _pixel_data_header(length: int, *, implicit: bool) -> bytes:
    if implicit:
        return struct.pack("<HHI", 0x7FE0, 0x0010, length)
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)


def _frames(phantom: _Phantom, frames: int) -> Iterator[npt.NDArray[np.int16]]:
    # The volume spans the head whatever the frame count, in at most a few
    # hundred distinct positions; beyond that frames repeat with new noise.
    positions = min(frames, 400)
    for i in range(frames):
        yield phantom.slice(i % positions, positions)


def dataset_offset(source: Path | str | bytes) -> int:
    """Return where the dataset starts in a Part-10 file (after group 0002).

    ``source`` is a path, or the file's bytes. Works on files with or without
    the 128-byte preamble, and on files that hold only a dataset (offset 0).
    The file meta group is always explicit VR little endian, so it is walked
    element by element rather than trusting (0002,0000) group length, which
    some writers get wrong.
    """
    if isinstance(source, bytes):
        return _meta_end(BytesIO(source))
    with Path(source).open("rb") as fp:
        return _meta_end(fp)


_LONG_VRS = frozenset({b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"SQ", b"UC", b"UN", b"UR", b"UT"})


def _meta_end(fp: BinaryIO) -> int:
    head = fp.read(_PREAMBLE_AND_MAGIC)
    if head[128:132] == b"DICM":
        offset = _PREAMBLE_AND_MAGIC
    elif head[:4] == b"DICM":
        offset = 4
    else:
        return 0
    fp.seek(offset)
    while True:
        raw = fp.read(8)
        if len(raw) < 8:
            return offset
        group = struct.unpack("<H", raw[:2])[0]
        if group != _FILE_META_GROUP:
            return offset
        if raw[4:6] in _LONG_VRS:
            extra = fp.read(4)
            if len(extra) < 4:
                return offset
            offset += 12 + struct.unpack("<I", extra)[0]
        else:
            offset += 8 + struct.unpack("<H", raw[6:8])[0]
        fp.seek(offset)


def dataset_bytes(path: Path | str) -> bytes:
    """Return the exact bytes of the dataset part of a Part-10 file.

    That is everything after the file meta group (0002,xxxx): what travels in
    a C-STORE. Gateways rewrite the file meta as they like, so tests compare
    this part byte for byte.
    """
    p = Path(path)
    offset = dataset_offset(p)
    with p.open("rb") as fp:
        fp.seek(offset)
        return fp.read()


def dataset_sha256(path: Path | str) -> str:
    """SHA-256 of :func:`dataset_bytes`, read in chunks (for multi-GiB files)."""
    p = Path(path)
    digest = hashlib.sha256()
    with p.open("rb") as fp:
        fp.seek(dataset_offset(p))
        while chunk := fp.read(_COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
