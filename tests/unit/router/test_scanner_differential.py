"""The StudyInstanceUID scanner against pydicom, on data sets hypothesis makes.

:func:`support.datasets.cases` draws a data set (standard, private and UN
elements of every VR, sequences and items of defined and undefined length
nested up to three deep, native or encapsulated pixel data, a top-level
StudyInstanceUID that is valid, invalid, empty, absent or only nested) and
encodes it with pydicom in a transfer syntax the router offers. The reference
is pydicom reading the same bytes, element by element at the top level
(:func:`reference`), judged by the router's rules. The scanner, fed the bytes
in fragments, must reach the same verdict: complete or not, and the same
state and UID.

Where the two read a data set differently on purpose, the rule is written in
:func:`reference` or in :data:`STRICTER_THAN_PYDICOM`, with its reason, and
asserted like the rest.

Run length: by default each property runs a fixed, derandomized set of
examples (``derandomize=True``), so that a red CI run comes from the change
under test, not from the luck of the draw, and reproduces on any machine;
this module takes about 20 s of CPU. Exploring is the long run's job: 50
times as many examples, new random ones every time::

    ./dev.sh fuzz-scanner

(which runs this module with ``GATEWAYPOOL_FUZZ=long``, ``-p no:timeout``
and ``--hypothesis-show-statistics``).

A failure prints the shrunk example and a ``@reproduce_failure`` line that
replays it; the statistics say what the examples were made of.
"""

from __future__ import annotations

import io
import itertools
import os
import struct
import warnings
import zlib
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.filereader import data_element_generator
from pydicom.uid import ExplicitVRLittleEndian
from pydicom.valuerep import VR

from gatewaypool_router.scanner import (
    MAX_STUDY_UID_BYTES,
    ScanState,
    is_valid_uid,
)
from support import scanners
from support.datasets import DEFLATED_SYNTAXES, EXPLICIT_LE, Case, Family, cases, mutations

LONG_RUN = os.environ.get("GATEWAYPOOL_FUZZ") == "long"

# Every test runs against the Python scanner and the native one.
pytestmark = pytest.mark.usefixtures("implementation")


def fuzz_settings(examples: int) -> settings:
    """`examples` derandomized examples; 50 times as many random ones in a long run."""
    return settings(
        max_examples=examples * 50 if LONG_RUN else examples,
        derandomize=not LONG_RUN,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


STUDY_UID_TAG = 0x0020000D
PIXEL_DATA_TAG = 0x7FE00010
UNDEFINED = 0xFFFFFFFF
#: Every VR of PS3.5 6.2 (pydicom's list, less its "US or SS" kind).
KNOWN_VRS = frozenset(vr.value for vr in VR if len(vr.value) == 2)


# -- the reference: pydicom, and the router's rules -------------------------------


@dataclass(frozen=True)
class Verdict:
    """What a reader says about a whole data set."""

    complete: bool
    state: ScanState
    study_uid: str | None


@dataclass(frozen=True)
class Reference:
    """pydicom's reading of a data set, judged by the router's rules."""

    verdict: Verdict
    #: Why the data set is refused, if it is.
    why: str
    #: Offsets in the (inflated) data set at which a top-level element starts,
    #: as far as pydicom got, and the end of the last element it read.
    boundaries: tuple[int, ...]
    #: The valid top-level StudyInstanceUID pydicom read before any fault.
    seen_uid: str | None


def _inflate(data: bytes) -> tuple[bytes, str]:
    """Inflate a deflated data set: what zlib inflates, and what is wrong, if anything.

    zlib is the reference for the stream. What may follow the stream is the
    router's rule (see ``DatasetScanner._deflate_trailer_ok``): nothing, a
    NUL that pads it to even length (pydicom writes one), or CRC-32 and size
    as gzip has them (pydicom's own image_dfl.dcm), with the right size.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    plain = bytearray()
    used = 0
    while used < len(data) and not inflater.eof:  # byte by byte: keep what precedes a fault
        used += 1
        try:
            plain += inflater.decompress(data[used - 1 : used])
        except zlib.error:
            return bytes(plain), "corrupt deflate stream"
    if not inflater.eof:
        return bytes(plain), "deflate stream ends early"
    trailer = data[used:]
    if trailer in (b"", b"\0"):
        return bytes(plain), ""
    sized = len(trailer) in (8, 9) and trailer[8:] in (b"", b"\0")
    if sized and int.from_bytes(trailer[4:8], "little") == len(plain) & 0xFFFFFFFF:
        return bytes(plain), ""
    return bytes(plain), "bytes after the deflate stream"


def _uid_state(elem: RawDataElement) -> tuple[ScanState, str | None]:
    """Judge a top-level (0020,000D) by the router's rule (``is_valid_uid``).

    pydicom strips trailing NULs and spaces (``convert_UI``), as the router
    does. Router rules pydicom has no opinion on: a value longer than
    MAX_STUDY_UID_BYTES is invalid unread (no UID is that long), and so is a
    sequence; an empty value is a missing one (DIMSE 0121H).
    """
    if elem.length == UNDEFINED or elem.VR == "SQ" or elem.length > MAX_STUDY_UID_BYTES:
        return ScanState.INVALID_UID, None
    value = (elem.value or b"").rstrip(b"\0 ")
    if not value:
        return ScanState.MISSING, None
    text = value.decode("latin-1")
    if not is_valid_uid(text):
        return ScanState.INVALID_UID, None
    return ScanState.FOUND, text


def _fragments_fill(value: bytes | None, little: bool) -> bool:
    """Whether `value` is a run of items of defined length that ends with it.

    PS3.5 A.4: encapsulated pixel data is a sequence of fragments, each an
    item of defined length. pydicom finds the end of the value by searching
    for the delimiter's bytes and leaves the fragments alone; the router
    follows their lengths.
    """
    value = value or b""
    item = struct.Struct("<HHL" if little else ">HHL")
    pos = 0
    while pos < len(value):
        if len(value) - pos < item.size:
            return False
        group, elem, length = item.unpack_from(value, pos)
        if (group, elem) != (0xFFFE, 0xE000) or length == UNDEFINED:
            return False
        pos += item.size + length
    return pos == len(value)


def _element_fault(elem: RawDataElement | DataElement, family: Family) -> str:
    """What makes a top-level element pydicom read unreadable to the router."""
    if elem.tag >> 16 == 0xFFFE:
        return "an item or a delimiter at the top level"
    if not family.implicit and elem.VR not in KNOWN_VRS:
        return "no such VR"
    if isinstance(elem, DataElement):
        return ""  # a sequence of undefined length, read whole
    if elem.length != UNDEFINED:
        return "value cut short" if len(elem.value or b"") < elem.length else ""
    encapsulated = elem.tag == PIXEL_DATA_TAG or elem.VR in ("OB", "OW")
    if encapsulated and not _fragments_fill(elem.value, family.little):
        return "not a run of fragments"
    return ""


def reference(data: bytes, family: Family) -> Reference:
    """Read `data` with pydicom's element reader, at the top level.

    pydicom reads what it can and says little about what it could not; the
    router must refuse any instance it cannot prove whole and unambiguous.
    So on top of pydicom's reading, a data set is refused when:

    - an element's value is cut short, or bytes are left that make no
      element (pydicom stops quietly at a partial header, and at an item
      delimiter);
    - a top-level element is an item or a delimiter (group FFFE);
    - an explicit VR header names no VR of PS3.5 (pydicom guesses);
    - encapsulated pixel data is not a run of fragments (``_fragments_fill``);
    - (0020,000D) comes twice, or after a larger tag: the gateway could read
      another UID than the one the router routed by.
    """
    plain, stream_fault = _inflate(data) if family.deflated else (data, "")
    fp = io.BytesIO(plain)
    boundaries = [0]
    state, study_uid, seen_uid = ScanState.MISSING, None, None
    seen_study_tag = seen_later_tag = False

    def refused(why: str) -> Reference:
        return Reference(
            Verdict(False, ScanState.MALFORMED, None), why, tuple(boundaries), seen_uid
        )

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for elem in data_element_generator(fp, family.implicit, family.little):
                fault = _element_fault(elem, family)
                if fault:
                    return refused(f"{elem.tag}: {fault}")
                if elem.tag == STUDY_UID_TAG:
                    if seen_study_tag or seen_later_tag:
                        return refused("StudyInstanceUID repeated or after a later tag")
                    seen_study_tag = True
                    if isinstance(elem, RawDataElement):
                        state, study_uid = _uid_state(elem)
                    else:  # a sequence of undefined length
                        state = ScanState.INVALID_UID
                    seen_uid = study_uid
                elif elem.tag > STUDY_UID_TAG:
                    seen_later_tag = True
                boundaries.append(fp.tell())
    except Exception as exc:  # whatever pydicom raises, it could not read the data set
        return refused(f"pydicom: {type(exc).__name__}")
    if boundaries[-1] != len(plain):
        return refused(f"{len(plain) - boundaries[-1]} bytes after the last element")
    if stream_fault:
        return refused(stream_fault)
    return Reference(Verdict(True, state, study_uid), "", tuple(boundaries), seen_uid)


# -- the scanner -----------------------------------------------------------------------


@dataclass
class Scan:
    verdict: Verdict
    detail: str
    #: The UID the router would have routed by before the end, if any.
    routed_by: str | None


def scan(transfer_syntax: str, fragments: list[bytes], *, splice: bool = False) -> Scan:
    """Feed `fragments` as the router does, checking what must hold after each.

    With `splice`, bytes the scan would skip go by unseen, as on the router's
    splicing path (:meth:`DatasetScanner.skip`).
    """
    scanner = scanners.make(transfer_syntax)
    decided: tuple[ScanState, str | None] | None = None
    for fragment in fragments:
        unseen = min(scanner.skippable, len(fragment)) if splice else 0
        scanner.skip(unseen)
        scanner.feed(fragment[unseen:])
        # Memory: one element header or the (0020,000D) value at most.
        assert scanner.buffered_bytes <= MAX_STUDY_UID_BYTES
        state = scanner.state
        if state is not ScanState.MALFORMED:
            if decided is None and state is not ScanState.NEED_MORE:
                decided = (state, scanner.study_uid)
            # Once the router acted on a verdict, only MALFORMED may follow.
            assert decided in (None, (state, scanner.study_uid)), "a verdict changed"
    routed_by = scanner.study_uid
    complete = scanner.finish()
    assert scanner.bytes_seen == sum(map(len, fragments))
    # A refused data set has no UID to agree on (the scan may have found one
    # before the fault: that is `routed_by`).
    uid = scanner.study_uid if scanner.state is ScanState.FOUND else None
    return Scan(Verdict(complete, scanner.state, uid), scanner.detail, routed_by)


def split_at(data: bytes, points: set[int]) -> list[bytes]:
    cuts = sorted({0, len(data), *(p for p in points if 0 < p < len(data))})
    return [data[a:b] for a, b in itertools.pairwise(cuts)]


@st.composite
def fragmentations(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """`data` cut in one-byte fragments for its first 300 bytes, then at random."""
    ones = draw(st.integers(0, min(len(data), 300)))
    cuts = draw(st.lists(st.integers(ones, len(data)), max_size=40))
    return split_at(data, {*range(1, ones + 1), *cuts})


def plain_bytes(case: Case) -> bytes:
    if not case.family.deflated:
        return case.data
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(case.data)


def redeflate(family: Family, plain: bytes) -> bytes:
    if not family.deflated:
        return plain
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(plain) + compressor.flush()


def label(case: Case) -> None:
    """Tell ``--hypothesis-show-statistics`` what the examples were made of."""
    event(f"family: {case.family.name}")
    event(f"StudyInstanceUID: {case.placement.value}")
    event(f"size: under {1 << max(6, len(case.data).bit_length())} bytes")
    features = set()
    for elem in case.dataset.iterall():
        if elem.tag >> 16 & 1:
            features.add("private element")
        if elem.VR == "SQ":
            features.add(f"{'undefined' if elem.is_undefined_length else 'defined'}-length SQ")
            for item in elem.value:
                length = "undefined" if item.is_undefined_length_sequence_item else "defined"
                features.add(f"{length}-length item")
        elif elem.VR == "UN" and elem.is_undefined_length:
            features.add("undefined-length UN")
        elif elem.tag == PIXEL_DATA_TAG:
            features.add(f"{'encapsulated' if elem.is_undefined_length else 'native'} pixel data")
    for feature in sorted(features):
        event(f"has {feature}")


# -- well-formed data sets ----------------------------------------------------------------

small_cases = cases(max_elements=6, max_value=24, max_depth=3)


@fuzz_settings(150)
@given(case=small_cases)
def test_split_at_every_byte_the_scanner_agrees_with_pydicom(case: Case) -> None:
    """Every fragment boundary: each single cut, and all cuts at once."""
    label(case)
    ref = reference(case.data, case.family)
    assert ref.verdict.complete, f"pydicom cannot read what it wrote: {ref.why}"
    ts = case.transfer_syntax
    whole = scan(ts, [case.data])
    assert whole.verdict == ref.verdict, whole.detail
    assert whole.routed_by == ref.seen_uid
    one_byte_fragments = split_at(case.data, set(range(len(case.data))))
    assert scan(ts, one_byte_fragments).verdict == ref.verdict
    assert scan(ts, one_byte_fragments, splice=True).verdict == ref.verdict
    for cut in range(1, len(case.data)):
        assert scan(ts, [case.data[:cut], case.data[cut:]]).verdict == ref.verdict, cut


@fuzz_settings(100)
@given(case=cases(max_elements=14, max_value=100_000, max_depth=4), data=st.data())
def test_larger_data_sets_in_random_fragments_agree_with_pydicom(
    case: Case, data: st.DataObject
) -> None:
    label(case)
    ref = reference(case.data, case.family)
    assert ref.verdict.complete, f"pydicom cannot read what it wrote: {ref.why}"
    fragments = data.draw(fragmentations(case.data), label="fragments")
    splice = data.draw(st.booleans(), label="splice")
    result = scan(case.transfer_syntax, fragments, splice=splice)
    assert result.verdict == ref.verdict, result.detail


# -- truncated data sets --------------------------------------------------------------------


@fuzz_settings(120)
@given(case=small_cases, data=st.data())
def test_truncated_data_set_is_complete_only_at_a_top_level_element_boundary(
    case: Case, data: st.DataObject
) -> None:
    """A cut between two top-level elements leaves a whole, shorter data set.

    Nothing in a C-STORE data set says how long it is; the end is the last
    P-DATA fragment. So a data set cut exactly after a top-level element is
    complete to the scanner and to pydicom alike (it has the elements before
    the cut); cut anywhere else, it is never complete.
    """
    label(case)
    plain = plain_bytes(case)
    bounds = reference(case.data, case.family).boundaries
    cut = data.draw(
        st.one_of(
            st.sampled_from(bounds).flatmap(lambda b: st.integers(b - 2, b + 2)),
            st.integers(0, len(plain)),
        ).map(lambda c: min(max(c, 0), len(plain))),
        label="cut",
    )
    piece = redeflate(case.family, plain[:cut])
    ref = reference(piece, case.family)
    assert ref.verdict.complete is (cut in bounds), ref.why
    result = scan(case.transfer_syntax, data.draw(fragmentations(piece), label="fragments"))
    assert result.verdict == ref.verdict, result.detail
    if cut not in bounds:
        assert result.verdict.state is ScanState.MALFORMED


@fuzz_settings(40)
@given(
    case=cases(max_elements=6, max_value=24, syntaxes=st.sampled_from(sorted(DEFLATED_SYNTAXES))),
    data=st.data(),
)
def test_truncated_deflate_stream_is_never_complete(case: Case, data: st.DataObject) -> None:
    stream = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    body = stream.compress(plain_bytes(case)) + stream.flush()
    cut = data.draw(st.integers(0, len(body) - 1), label="cut")
    ref = reference(case.data[:cut], case.family)
    result = scan(case.transfer_syntax, data.draw(fragmentations(case.data[:cut])))
    assert result.verdict == ref.verdict == Verdict(False, ScanState.MALFORMED, None)


# -- mutated data sets ---------------------------------------------------------------------

#: Where the scan refuses what pydicom reads whole, and why the router is
#: right to. pydicom reads leniently by design; a refused instance costs the
#: sender a retry, a misread one costs a split study.
STRICTER_THAN_PYDICOM = {
    "undefined length in element": (
        "only SQ, UN, OB and OW (in implicit VR: sequences by the data dictionary, and"
        " private tags) may have an undefined length; pydicom reads any other up to the"
        " first bytes that look like a delimiter, wherever they are"
    ),
    "fragment of undefined length": "PS3.5 A.4: pixel data fragments have a defined length",
    "unknown VR": "pydicom guesses implicit VR inside a sequence (assume_implicit_vr_switch)",
    "where an item was expected": "pydicom takes any tag in a sequence for an item",
    "among data elements": "pydicom ends an item at an item delimiter whatever its length",
    "runs past the end of its item": (
        "pydicom reads a defined-length item past its length (test_scanner.py has the"
        " split study this allows)"
    ),
    "before the end of a value": "pydicom does not hold an item to its length",
    "ends inside an element header, sequence or item": "the same, at the end of the data set",
}


@fuzz_settings(300)
@given(case=small_cases, data=st.data())
def test_mutated_encoding_never_fools_the_scanner(case: Case, data: st.DataObject) -> None:
    """Edit tags, VRs and lengths: the scan may refuse, never mislead.

    The router acts on the scan twice: it routes by the first UID found, and
    it forwards the instance as complete at the end. Both must be what
    pydicom reads from the same bytes.
    """
    label(case)
    family = case.family
    plain = plain_bytes(case)
    hot = list(reference(case.data, family).boundaries)
    mutate_stream = family.deflated and data.draw(st.booleans(), label="mutate the stream")
    if mutate_stream:
        mutated = data.draw(mutations(case.data, little=True, hot=[]), label="mutated")
    else:
        mutated = redeflate(family, data.draw(mutations(plain, little=family.little, hot=hot)))
    ref = reference(mutated, family)
    result = scan(case.transfer_syntax, data.draw(fragmentations(mutated), label="fragments"))
    event(f"scanner: {result.verdict.state.value}, pydicom: {ref.verdict.state.value}")
    if result.routed_by is not None:
        assert result.routed_by == ref.seen_uid, "routed by a UID pydicom does not read"
    if result.verdict.complete:
        assert result.verdict == ref.verdict, ref.why
    elif ref.verdict.complete:
        assert result.verdict.state is ScanState.MALFORMED
        reasons = [r for r in STRICTER_THAN_PYDICOM if r in result.detail]
        assert reasons, f"refused what pydicom reads whole: {result.detail}"
        event(f"stricter than pydicom: {reasons[0]}")


def test_reference_refuses_what_it_must() -> None:
    """The reference can fail: each rule of :func:`reference` on a hand-made case."""
    head = b"\x08\x00\x16\x00UI\x04\x001.2\0"
    study = b"\x20\x00\x0d\x00UI\x06\x001.2.3\0"
    later = b"\x20\x00\x0e\x00UI\x04\x001.4\0"
    assert reference(head + study + later, EXPLICIT_LE).verdict == Verdict(
        True, ScanState.FOUND, "1.2.3"
    )
    for bad in [
        head + study + later[:-1],  # value cut short
        head + study + later + b"\x08\x00",  # bytes that make no element
        head + study + study + later,  # repeated
        head + later + study,  # after a later tag
        head + b"\xfe\xff\x00\xe0\x00\x00\x00\x00" + study,  # an item at the top level
        head + b"\x10\x00\x10\x00ZZ\x02\x00ab" + study,  # no such VR
    ]:
        assert reference(bad, EXPLICIT_LE).verdict.complete is False, bad


@pytest.mark.parametrize("long_value", [b"9" * 300, b"1.2.3" + b"\0" * 300])
def test_reference_judges_a_long_uid_by_the_router_rule(long_value: bytes) -> None:
    study = b"\x20\x00\x0d\x00UN\0\0" + len(long_value).to_bytes(4, "little") + long_value
    assert reference(study, EXPLICIT_LE).verdict.state is ScanState.INVALID_UID
    assert scan(ExplicitVRLittleEndian, [study]).verdict.state is ScanState.INVALID_UID


def test_pydicom_misreads_a_un_sequence_whose_first_length_looks_like_a_vr() -> None:
    """pydicom's fault, kept out of the strategy (``support.datasets._un_sequence``).

    A UN of undefined length holds implicit VR little endian items (PS3.5
    6.2.2). pydicom guesses the encoding of each item from its first element,
    and takes a length of 0x5942 ("BY") for an explicit VR: it cannot read
    the data set. The scanner reads it.
    """
    element = struct.pack("<HHL", 0x0008, 0x0100, 0x5942) + bytes(0x5942)
    items = struct.pack("<HHL", 0xFFFE, 0xE000, len(element)) + element
    un = struct.pack("<HH2s2xL", 0x0008, 0x0006, b"UN", UNDEFINED) + items
    study = b"\x20\x00\x0d\x00UI\x06\x001.2.3\0"
    data = un + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0) + study
    assert reference(data, EXPLICIT_LE).verdict.complete is False
    result = scan(ExplicitVRLittleEndian, [data])
    assert result.verdict == Verdict(True, ScanState.FOUND, "1.2.3")
