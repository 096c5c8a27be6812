"""Random DICOM data sets for property tests, encoded as a C-STORE carries them.

:func:`cases` draws a pydicom :class:`~pydicom.dataset.Dataset` and a
transfer syntax the router accepts, and encodes the data set the way a sender
puts it on the wire: no preamble, no file meta, deflated if the transfer
syntax says so. The data sets are small (so that a test can cut their
encoding at every byte) but have what makes a data set hard to scan:

- top-level elements of every VR, standard ones at random tags before and
  after (0020,000D) and private ones under a private creator;
- values of 32-bit length VRs (OB, OW, UN, UT, ...);
- sequences of items several levels deep, each sequence and each item of
  defined or undefined length, holding decoy StudyInstanceUIDs;
- UN of undefined length (a sequence whose VR the sender did not know,
  PS3.5 6.2.2), holding implicit VR little endian items;
- native pixel data, or encapsulated fragments with or without a basic
  offset table for an encapsulated transfer syntax;
- a top-level StudyInstanceUID that is valid, invalid, empty, absent, or
  present only inside a sequence item (:class:`UidPlacement`).

What a data set *means* is left to the test's reference reader (pydicom):
the strategies only say what they meant to build.
"""

from __future__ import annotations

import enum
import string
import zlib
from dataclasses import dataclass
from functools import cache
from typing import Literal

import pydicom.config
import pydicom.uid
from hypothesis import strategies as st
from pydicom._dicom_dict import DicomDictionary  # pydicom.datadict does not re-export it
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_sequence_item
from pydicom.sequence import Sequence

from gatewaypool_router.scanner import SUPPORTED_TRANSFER_SYNTAXES

__all__ = [
    "DEFLATED",
    "DEFLATED_SYNTAXES",
    "ENCAPSULATED",
    "EXPLICIT_BE",
    "EXPLICIT_LE",
    "IMPLICIT_LE",
    "Case",
    "Family",
    "UidPlacement",
    "cases",
    "datasets",
    "encode",
    "family_of",
    "mutations",
    "transfer_syntaxes",
]

STUDY_UID_TAG = 0x0020000D
PIXEL_DATA_TAG = 0x7FE00010


# -- transfer syntaxes ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Family:
    """How the data set of one transfer syntax is laid out on the wire."""

    name: str
    implicit: bool
    little: bool
    deflated: bool
    encapsulated: bool


IMPLICIT_LE = Family("implicit-le", implicit=True, little=True, deflated=False, encapsulated=False)
EXPLICIT_LE = Family("explicit-le", implicit=False, little=True, deflated=False, encapsulated=False)
EXPLICIT_BE = Family(
    "explicit-be", implicit=False, little=False, deflated=False, encapsulated=False
)
DEFLATED = Family("deflated", implicit=False, little=True, deflated=True, encapsulated=False)
ENCAPSULATED = Family(
    "encapsulated", implicit=False, little=True, deflated=False, encapsulated=True
)

# Deflated per PS3.5 A.5, A.7 and A.12 (pydicom 3.0 misses the JPIP Deflate
# ones; the scanner module says more).
DEFLATED_SYNTAXES = frozenset(
    {
        pydicom.uid.DeflatedExplicitVRLittleEndian,
        "1.2.840.10008.1.2.4.95",
        pydicom.uid.JPIPHTJ2KReferencedDeflate,
    }
)


def family_of(transfer_syntax: str) -> Family:
    """The wire layout of a transfer syntax the scanner accepts."""
    if transfer_syntax == pydicom.uid.ImplicitVRLittleEndian:
        return IMPLICIT_LE
    if transfer_syntax == pydicom.uid.ExplicitVRLittleEndian:
        return EXPLICIT_LE
    if transfer_syntax == pydicom.uid.ExplicitVRBigEndian:
        return EXPLICIT_BE
    if transfer_syntax in DEFLATED_SYNTAXES:
        return DEFLATED
    # Every other syntax the scanner accepts carries an explicit VR little
    # endian data set with encapsulated pixel data (JPIP Referenced: none).
    return ENCAPSULATED


def transfer_syntaxes() -> st.SearchStrategy[str]:
    """Any transfer syntax the router offers, each family equally often.

    The encapsulated syntaxes (and the deflated ones) share a layout, so
    they are drawn as one family, then one of them; the plain families come
    first, which is what hypothesis shrinks towards.
    """
    plain = [
        pydicom.uid.ImplicitVRLittleEndian,
        pydicom.uid.ExplicitVRLittleEndian,
        pydicom.uid.ExplicitVRBigEndian,
    ]
    deflated = sorted(DEFLATED_SYNTAXES)
    encapsulated = [ts for ts in SUPPORTED_TRANSFER_SYNTAXES if family_of(ts) is ENCAPSULATED]
    groups = [[ts] for ts in plain] + [deflated, encapsulated]
    return st.sampled_from(groups).flatmap(st.sampled_from)


def encode(ds: Dataset, family: Family) -> bytes:
    """The data set as the P-DATA fragments of a C-STORE carry it."""
    fp = DicomBytesIO()
    fp.is_implicit_VR = family.implicit
    fp.is_little_endian = family.little
    write_dataset(fp, ds)
    data = fp.getvalue()
    if not family.deflated:
        return data
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    stream = compressor.compress(data) + compressor.flush()
    return stream + b"\0" * (len(stream) % 2)  # pydicom pads to even length, as here


# -- values -----------------------------------------------------------------------

_TEXT = string.ascii_letters + string.digits + " .-_^"
_UPPER = string.ascii_uppercase + string.digits + " _"


def _text(max_size: int, alphabet: str = _TEXT) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, max_size=max_size)


def _binary(max_size: int, *, multiple: int = 1) -> st.SearchStrategy[bytes]:
    """Random bytes (64 at most), or zeros up to `max_size`, in whole `multiple`s."""
    random = st.binary(max_size=min(max_size, 64))
    zeros = st.integers(0, max_size).map(bytes)
    return st.one_of(random, zeros).map(lambda b: b[: len(b) - len(b) % multiple])


def _long_text(max_size: int) -> st.SearchStrategy[str]:
    return st.one_of(_text(min(max_size, 64)), st.integers(0, max_size).map(lambda n: "A" * n))


def _ints(bits: int, *, signed: bool) -> st.SearchStrategy[list[int]]:
    low, high = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    return st.lists(st.integers(low, high), min_size=1, max_size=3)


uid_components = st.one_of(
    st.integers(0, 10**12).map(str), st.from_regex(r"0[0-9]{1,4}", fullmatch=True)
)
#: UIDs the router accepts (:func:`~gatewaypool_router.scanner.is_valid_uid`),
#: leading zeros included.
valid_uids = (
    st.lists(uid_components, min_size=1, max_size=8)
    .map(".".join)
    .filter(lambda uid: len(uid) <= 64)
)
#: Values of (0020,000D) that no router may route by.
invalid_uids = st.one_of(
    st.sampled_from(["1.2.abc", "1..2", "1.2.", ".1.2", "1.2.3\\1.2.4", "1.2 .3", " 1.2"]),
    st.text(alphabet="0123456789.", min_size=65, max_size=80).filter(lambda u: len(u) > 64),
    st.just("9" * 300),  # longer than the scanner reads
    st.text(alphabet=_TEXT, min_size=1, max_size=20),
)


@cache
def _value_strategies(max_value: int) -> dict[str, st.SearchStrategy[object]]:
    """A value strategy per VR; VRs of 32-bit length get up to `max_value` bytes."""
    floats = st.floats(allow_nan=False, width=32)
    return {
        "AE": _text(16, _UPPER).map(str.strip),
        "AS": st.sampled_from(["045Y", "003M", "010D"]),
        "AT": st.lists(st.integers(0, 0xFFFFFFFF), min_size=1, max_size=3),
        "CS": _text(16, _UPPER),
        "DA": st.sampled_from(["20240102", "19991231", ""]),
        "DS": st.lists(st.sampled_from(["0", "1.5", "-2.25e3", "42"]), min_size=1, max_size=3),
        "DT": st.sampled_from(["20240102123456.5", "2024"]),
        "FD": st.lists(floats, min_size=1, max_size=3),
        "FL": st.lists(floats, min_size=1, max_size=3),
        "IS": st.lists(st.integers(-(2**31), 2**31 - 1).map(str), min_size=1, max_size=3),
        "LO": _text(64),
        "LT": _text(min(max_value, 1000)),
        "OB": _binary(max_value),
        "OD": _binary(max_value, multiple=8),
        "OF": _binary(max_value, multiple=4),
        "OL": _binary(max_value, multiple=4),
        "OV": _binary(max_value, multiple=8),
        "OW": _binary(max_value, multiple=2),
        "PN": _text(32),
        "SH": _text(16),
        "SL": _ints(32, signed=True),
        "SS": _ints(16, signed=True),
        "ST": _text(min(max_value, 1000)),
        "SV": _ints(64, signed=True),
        "TM": st.sampled_from(["123456", "0102", "235959.999"]),
        "UC": _long_text(max_value),
        "UI": valid_uids,
        "UL": _ints(32, signed=False),
        "UN": _binary(max_value),
        "UR": st.sampled_from(["http://example.org/a", ""]),
        "US": _ints(16, signed=False),
        "UT": _long_text(max_value),
        "UV": _ints(64, signed=False),
    }


@cache
def _dictionary_tags() -> dict[str, list[int]]:
    """Standard tags per VR, for elements at realistic places in a data set.

    Left out: file meta and command groups, group lengths, tags whose VR
    depends on other elements, the character set (its value would change
    how pydicom writes text), pixel data and (0020,000D), which
    the strategies place themselves.
    """
    tags: dict[str, list[int]] = {}
    for tag, (vr, _vm, _name, retired, _keyword) in DicomDictionary.items():
        if retired or tag >> 16 < 0x0008 or tag & 0xFFFF == 0 or len(vr) != 2:
            continue
        if tag in (0x00080005, STUDY_UID_TAG, PIXEL_DATA_TAG):
            continue
        tags.setdefault(vr, []).append(tag)
    return {vr: sorted(found) for vr, found in tags.items()}


def _element(tag: int, vr: str, value: object, *, undefined: bool = False) -> DataElement:
    """An element written as drawn: pydicom's value checks are not what is tested.

    pydicom turns a standard tag's UN into the tag's own VR when the element
    is made; a sender that does not know the tag writes UN, so this keeps it.
    """
    replace_un = pydicom.config.replace_un_with_known_vr
    pydicom.config.replace_un_with_known_vr = False
    try:
        return DataElement(
            tag, vr, value, is_undefined_length=undefined, validation_mode=pydicom.config.IGNORE
        )
    finally:
        pydicom.config.replace_un_with_known_vr = replace_un


# -- data sets -----------------------------------------------------------------------


class UidPlacement(enum.Enum):
    """What the strategy put at (0020,000D) at the top level."""

    VALID = "valid"
    #: A valid UID with VR UN: explicit VR senders that do not know the tag.
    VALID_AS_UN = "valid-as-un"
    INVALID = "invalid"
    EMPTY = "empty"
    ABSENT = "absent"
    #: Absent at the top level, present in an item of a sequence.
    NESTED_ONLY = "nested-only"


@dataclass(frozen=True)
class Case:
    """One drawn data set, the transfer syntax and the bytes a sender sends."""

    transfer_syntax: str
    family: Family
    dataset: Dataset
    placement: UidPlacement
    data: bytes


@dataclass(frozen=True)
class _Limits:
    family: Family
    max_elements: int
    max_value: int
    max_depth: int


def _sequence_element(tag: int, items: list[Dataset], *, undefined: bool) -> DataElement:
    return _element(tag, "SQ", Sequence(items), undefined=undefined)


def _private_creator(group: int) -> DataElement:
    return _element(group << 16 | 0x0010, "LO", "GATEWAYPOOL FUZZ")


@st.composite
def _items(draw: st.DrawFn, limits: _Limits, depth: int) -> Dataset:
    """A sequence item: a few elements, maybe a decoy UID, maybe a deeper sequence."""
    item = draw(_elements(limits, depth=depth, max_elements=3))
    if draw(st.booleans()):
        uid = draw(st.one_of(valid_uids, invalid_uids))
        item.add(_element(STUDY_UID_TAG, "UI", uid))  # a decoy: not the instance's
    item.is_undefined_length_sequence_item = draw(st.booleans())
    return item


def _sequences(limits: _Limits, depth: int) -> st.SearchStrategy[list[Dataset]]:
    if depth >= limits.max_depth:
        return st.just([])
    return st.lists(_items(limits, depth + 1), max_size=3)


@st.composite
def _un_sequence(draw: st.DrawFn, limits: _Limits, depth: int) -> bytes:
    """The value of a UN of undefined length: implicit VR LE items, no delimiter.

    Values stay under 0x4141 bytes: pydicom guesses the items' encoding from
    the first element, and an implicit VR length whose low bytes are two
    capitals ("AA" is 0x4141) makes it read explicit VR and fail (pydicom's
    fault, pinned by test_scanner_differential.py).
    """
    max_value = min(limits.max_value, 0x4140)
    implicit = _Limits(IMPLICIT_LE, limits.max_elements, max_value, limits.max_depth)
    fp = DicomBytesIO()
    fp.is_implicit_VR = True
    fp.is_little_endian = True
    for item in draw(_sequences(implicit, depth)):
        write_sequence_item(fp, item, ["iso8859"])
    return fp.getvalue()


@st.composite
def _elements(
    draw: st.DrawFn, limits: _Limits, *, depth: int, max_elements: int | None = None
) -> Dataset:
    """Standard, private, UN and sequence elements (no (0020,000D), no pixel data)."""
    ds = Dataset()
    tags = _dictionary_tags()
    values = _value_strategies(limits.max_value)
    count = draw(st.integers(0, limits.max_elements if max_elements is None else max_elements))
    for _ in range(count):
        kind = draw(st.sampled_from(["standard", "standard", "sequence", "private", "un"]))
        if kind == "standard":
            vr = draw(st.sampled_from(sorted(values)))
            tag = draw(st.sampled_from(tags[vr]))
            ds.add(_element(tag, vr, draw(values[vr])))
        elif kind == "sequence":
            tag = draw(st.sampled_from(tags["SQ"]))
            items = draw(_sequences(limits, depth))
            ds.add(_sequence_element(tag, items, undefined=draw(st.booleans())))
        elif kind == "private":
            group = draw(st.sampled_from([0x0009, 0x0019, 0x0029, 0x0041]))
            ds.add(_private_creator(group))
            tag = group << 16 | 0x1000 | draw(st.integers(0, 0xFF))
            vr = draw(st.sampled_from(["LO", "OB", "UN", "UT", "SL", "DS", "UI", "SQ"]))
            if vr == "SQ":
                items = draw(_sequences(limits, depth))
                ds.add(_sequence_element(tag, items, undefined=draw(st.booleans())))
            else:
                ds.add(_element(tag, vr, draw(values[vr])))
        elif limits.family.little and draw(st.booleans()):
            # UN of undefined length. Not in big endian: pydicom writes the
            # delimiter big endian after little endian items, which no reader
            # can follow (PS3.5 6.2.2 wants the whole value implicit VR LE).
            tag = draw(st.sampled_from(tags["SQ"]))
            ds.add(_element(tag, "UN", draw(_un_sequence(limits, depth)), undefined=True))
        else:
            tag = draw(st.sampled_from(tags[draw(st.sampled_from(["LO", "US", "SQ", "OB"]))]))
            ds.add(_element(tag, "UN", draw(values["UN"])))
    return ds


@st.composite
def _pixel_data(draw: st.DrawFn, family: Family) -> DataElement:
    # At least 2 bytes per fragment, and up to 3 fragments per frame.
    frames = draw(st.lists(st.binary(min_size=6, max_size=64), min_size=1, max_size=3))
    if family.encapsulated:
        value = encapsulate(
            frames,
            fragments_per_frame=draw(st.integers(1, 3)),
            has_bot=draw(st.booleans()),
        )
        return _element(PIXEL_DATA_TAG, "OB", value, undefined=True)
    raw = b"".join(frames)
    return _element(PIXEL_DATA_TAG, draw(st.sampled_from(["OB", "OW"])), raw + bytes(len(raw) % 2))


@st.composite
def _study_uid_element(draw: st.DrawFn, placement: UidPlacement) -> DataElement | None:
    """The top-level element that carries `placement`, if any."""
    if placement is UidPlacement.VALID:
        padding = draw(st.sampled_from(["", "\0", " "])) * draw(st.integers(0, 2))
        return _element(STUDY_UID_TAG, "UI", draw(valid_uids) + padding)
    if placement is UidPlacement.VALID_AS_UN:
        return _element(STUDY_UID_TAG, "UN", draw(valid_uids).encode())
    if placement is UidPlacement.INVALID:
        return _element(STUDY_UID_TAG, "UI", draw(invalid_uids))
    if placement is UidPlacement.EMPTY:
        return _element(STUDY_UID_TAG, "UI", draw(st.sampled_from(["", "\0\0", "  "])))
    if placement is UidPlacement.NESTED_ONLY:
        item = Dataset()
        item.add(_element(STUDY_UID_TAG, "UI", draw(valid_uids)))
        item.is_undefined_length_sequence_item = draw(st.booleans())
        return _sequence_element(0x00081110, [item], undefined=draw(st.booleans()))
    return None


def datasets(
    family: Family,
    *,
    max_elements: int = 8,
    max_value: int = 64,
    max_depth: int = 3,
) -> st.SearchStrategy[tuple[Dataset, UidPlacement]]:
    """A data set to send in `family`, and where its StudyInstanceUID went.

    Parameters
    ----------
    family : Family
        The wire layout; it decides whether pixel data is encapsulated and
        whether UN of undefined length can be written.
    max_elements : int
        Most random elements at the top level (each item has at most 3).
    max_value : int
        Most bytes in a value of a long VR.
    max_depth : int
        Deepest nesting of sequences.
    """
    limits = _Limits(family, max_elements, max_value, max_depth)

    @st.composite
    def build(draw: st.DrawFn) -> tuple[Dataset, UidPlacement]:
        ds = draw(_elements(limits, depth=0))
        placement = draw(st.sampled_from(UidPlacement))
        uid = draw(_study_uid_element(placement))
        if uid is not None:
            ds.add(uid)
        with_pixel_data = draw(st.booleans())
        if with_pixel_data or family.encapsulated:
            ds.add(draw(_pixel_data(family)))
            if draw(st.booleans()):
                ds.add(_element(0xFFFCFFFC, "OB", bytes(draw(st.integers(0, 4)) * 2)))
        return ds, placement

    return build()


@st.composite
def cases(
    draw: st.DrawFn,
    *,
    max_elements: int = 8,
    max_value: int = 64,
    max_depth: int = 3,
    syntaxes: st.SearchStrategy[str] | None = None,
) -> Case:
    """A data set, a transfer syntax the router accepts, and its encoding.

    `syntaxes` draws the transfer syntax; by default :func:`transfer_syntaxes`.
    The other parameters are those of :func:`datasets`.
    """
    transfer_syntax = draw(transfer_syntaxes() if syntaxes is None else syntaxes)
    family = family_of(transfer_syntax)
    ds, placement = draw(
        datasets(family, max_elements=max_elements, max_value=max_value, max_depth=max_depth)
    )
    return Case(transfer_syntax, family, ds, placement, encode(ds, family))


# -- byte-level mutations ------------------------------------------------------------


def _tag_bytes(tag: int, *, little: bool) -> bytes:
    order: Literal["little", "big"] = "little" if little else "big"
    return (tag >> 16).to_bytes(2, order) + (tag & 0xFFFF).to_bytes(2, order)


@st.composite
def mutations(draw: st.DrawFn, data: bytes, *, little: bool, hot: list[int]) -> bytes:
    """`data` with one to three byte-level edits, mostly where headers are.

    Each edit lands at one of the `hot` offsets (element starts, say) or at
    one of the item tags found in `data`, plus 0 to 11 bytes, or anywhere.
    It overwrites a tag, a VR or a length field with something a parser
    must judge (an undefined length, an item or delimiter tag, a length a
    little off), or inserts or deletes a few bytes.
    """
    buf = bytearray(data)
    order: Literal["little", "big"] = "little" if little else "big"
    item_group = _tag_bytes(0xFFFEE000, little=little)[:2]  # items and delimiters
    hot = sorted({*hot, *(i for i in range(len(data) - 1) if data[i : i + 2] == item_group)})
    tags = [0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD, STUDY_UID_TAG, PIXEL_DATA_TAG, 0x00081110]
    for _ in range(draw(st.integers(1, 3))):
        near_a_header = draw(st.booleans())
        if hot and near_a_header:
            pos = draw(st.sampled_from(hot)) + draw(st.integers(0, 11))
        else:
            pos = draw(st.integers(0, max(0, len(buf) - 1)))
        pos = min(pos, len(buf))
        edit = draw(
            st.sampled_from(["byte", "undefined", "tag", "length", "vr", "insert", "delete"])
        )
        if edit == "byte":
            new = bytes([draw(st.integers(0, 255))])
        elif edit == "undefined":
            new = b"\xff" * 4
        elif edit == "tag":
            new = _tag_bytes(draw(st.sampled_from(tags)), little=little)
        elif edit == "length":
            width = draw(st.sampled_from([2, 4]))
            old = int.from_bytes(buf[pos : pos + width].ljust(width, b"\0"), order)
            delta = draw(st.sampled_from([-8, -2, -1, 1, 2, 8, 1 << 12, 1 << 20]))
            new = ((old + delta) % (1 << (8 * width))).to_bytes(width, order)
        elif edit == "vr":
            new = draw(st.sampled_from([b"UN", b"SQ", b"OB", b"UT", b"ZZ", b"\0\0", b"  "]))
        elif edit == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
            continue
        else:
            del buf[pos : pos + draw(st.integers(1, 8))]
            continue
        buf[pos : pos + len(new)] = new
    return bytes(buf)
