"""Find the StudyInstanceUID of a data set while it streams through the router.

The router must pick a gateway from the top-level StudyInstanceUID (0020,000D)
before it can forward the first byte of an instance, yet it may never hold a
whole instance: a multi-frame instance can be gigabytes. So the data set is
scanned as it arrives, in PDV fragments of any size (a fragment may end in the
middle of a tag or a length), by a parser that keeps only the bytes of the
element header it is reading and the short value of (0020,000D). Every other
value is skipped by counting bytes, which makes the work per element constant
and the work per fragment inside a large value a single subtraction.

The same scan tells, at the end, whether the data set ended exactly on a
top-level element boundary with no sequence or item left open. The router
refuses a truncated or malformed instance instead of passing it on, because the
gateway would otherwise store something that no longer matches what the
sender believes it sent.

Design: the parser is a generator, nested with ``yield from`` for sequences and
items, that reads element headers straight out of the current fragment. It
yields only when the fragment is used up, with the number of bytes still to be
skipped past its end; :meth:`DatasetScanner.feed` counts those down without
waking the parser, so a fragment inside pixel data costs one subtraction. A
header or UID value split across fragments is assembled in a small buffer.
No detail string ever contains a value read from the data set, only tags,
lengths and offsets, so logging it cannot leak patient data.

Two implementations, one contract: :class:`DatasetScanner` (this module, the
specification and the fallback) and the same state machine in Rust
(``router/native``, imported as ``gatewaypool_router._native``), which
scans the non-deflated transfer syntaxes. :func:`new_scanner` makes the
router's scanners: the native one where it was built, unless
``GATEWAYPOOL_HOT_PATH=python`` says otherwise (``native`` insists on it,
and fails at import where it is missing). The differential test and the PDU
fuzzer run both (:data:`IMPLEMENTATIONS`).
"""

from __future__ import annotations

import enum
import functools
import importlib.util
import os
import re
import struct
import zlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Final, Protocol

import pydicom.datadict
import pydicom.uid

from gatewaypool.contract import study_uid_problem

__all__ = [
    "HOT_PATH",
    "IMPLEMENTATIONS",
    "MAX_NESTING_DEPTH",
    "MAX_STUDY_UID_BYTES",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "DatasetScanner",
    "ScanState",
    "Scanner",
    "is_valid_uid",
    "new_scanner",
]

#: A (0020,000D) value longer than this is refused as invalid without being
#: read: a UID has at most 64 characters, and the bound keeps memory constant.
MAX_STUDY_UID_BYTES: Final = 256

#: Deepest nesting of undefined-length sequences accepted. Each level costs a
#: parser frame, so without a bound a sender could make memory grow with the
#: size of the instance; real data sets nest a handful of levels.
MAX_NESTING_DEPTH: Final = 128

# Transfer syntaxes that pydicom 3.0 knows in its UID dictionary but has no
# named constant for. The JPIP "Deflate" ones deflate the whole data set like
# Deflated Explicit VR Little Endian does (PS3.5 A.7, A.12), although
# pydicom 3.0's UID.is_deflated says otherwise.
_ENCAPSULATED_UNCOMPRESSED: Final = "1.2.840.10008.1.2.1.98"
_JPIP_REFERENCED: Final = "1.2.840.10008.1.2.4.94"
_JPIP_REFERENCED_DEFLATE: Final = "1.2.840.10008.1.2.4.95"

_DEFLATED: Final = frozenset(
    {
        pydicom.uid.DeflatedExplicitVRLittleEndian,
        _JPIP_REFERENCED_DEFLATE,
        pydicom.uid.JPIPHTJ2KReferencedDeflate,
    }
)

# Retired transfer syntaxes that pydicom calls "encapsulated" but whose data
# set is not Explicit VR Little Endian: treating them as such would refuse
# every instance, so they are refused when the scanner is made.
_NOT_SCANNABLE: Final = frozenset(
    {
        "1.2.840.10008.1.2.6.1",  # RFC 2557 MIME encapsulation
        "1.2.840.10008.1.2.6.2",  # XML Encoding
        "1.2.840.10008.1.20",  # Papyrus 3 Implicit VR Little Endian
    }
)

#: Every transfer syntax the scanner reads, for the router's presentation
#: contexts: the uncompressed and deflated ones and every current
#: encapsulated one that pydicom knows. (Retired JPEG processes are accepted
#: by :class:`DatasetScanner` too but are not offered.)
SUPPORTED_TRANSFER_SYNTAXES: Final[tuple[str, ...]] = tuple(
    str(ts)
    for ts in dict.fromkeys(
        [
            *pydicom.uid.UncompressedTransferSyntaxes,
            *pydicom.uid.AllTransferSyntaxes,
            _ENCAPSULATED_UNCOMPRESSED,
            _JPIP_REFERENCED,
            _JPIP_REFERENCED_DEFLATE,
        ]
    )
)


class ScanState(enum.Enum):
    """What the scan knows about the StudyInstanceUID so far."""

    #: Not decided yet: feed more bytes.
    NEED_MORE = "need-more"
    #: The top-level StudyInstanceUID was read and is a valid UID.
    FOUND = "found"
    #: A top-level tag after (0020,000D), or the end, came without it; or
    #: it is present with an empty value.
    MISSING = "missing"
    #: (0020,000D) is present but its value is not a usable UID.
    INVALID_UID = "invalid-uid"
    #: The data set cannot be parsed, or ended inside an element: the
    #: instance must be refused. Nothing after the fault is parsed.
    MALFORMED = "malformed"


_UID_BYTES_PATTERN: Final = re.compile(rb"[0-9]+(?:\.[0-9]+)*")
_UID_MAX_CHARS: Final = 64


def is_valid_uid(value: str) -> bool:
    """Tell whether `value` can serve as a StudyInstanceUID for routing.

    The rule is :data:`gatewaypool.contract.STUDY_UID_PATTERN`: the syntax of
    PS3.5 9.1 (digits and dots, no empty component, at most 64 characters)
    except that components with leading zeros are tolerated. ``gatewaypool
    locate`` checks the UIDs it is given by the same rule.

    Parameters
    ----------
    value : str
        The UID, without padding.

    Returns
    -------
    bool
        True if `value` is a usable UID.
    """
    return study_uid_problem(value) is None


@dataclass(frozen=True, slots=True)
class _Encoding:
    """How element headers are laid out in one part of a data set."""

    explicit: bool
    #: First 8 bytes of an element header: (group, element, VR, length16) in
    #: explicit VR, (group, element, length32) in implicit VR.
    header: struct.Struct
    #: An item or delimiter header: (group, element, length32).
    item: struct.Struct
    #: A 32-bit length.
    u32: struct.Struct


_IMPLICIT_LE: Final = _Encoding(
    explicit=False,
    header=struct.Struct("<HHL"),
    item=struct.Struct("<HHL"),
    u32=struct.Struct("<L"),
)
_EXPLICIT_LE: Final = _Encoding(
    explicit=True,
    header=struct.Struct("<HH2sH"),
    item=struct.Struct("<HHL"),
    u32=struct.Struct("<L"),
)
_EXPLICIT_BE: Final = _Encoding(
    explicit=True,
    header=struct.Struct(">HH2sH"),
    item=struct.Struct(">HHL"),
    u32=struct.Struct(">L"),
)

# VRs followed by 2 reserved bytes and a 32-bit length (PS3.5 7.1.2).
_LONG_VRS: Final = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)
# VRs with a 16-bit length.
_SHORT_VRS: Final = frozenset(
    {
        b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO",
        b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US",
    }
)  # fmt: skip

_UNDEFINED: Final = 0xFFFFFFFF
_STUDY_UID_TAG: Final = 0x0020000D
_PIXEL_DATA_TAG: Final = 0x7FE00010
_ITEM_GROUP: Final = 0xFFFE
_ITEM_TAG: Final = 0xFFFEE000
_ITEM_END_TAG: Final = 0xFFFEE00D
_SEQUENCE_END_TAG: Final = 0xFFFEE0DD

# The parser yields when it has used up the current fragment; the value is the
# number of bytes to skip before it needs to see data again (0: none).
_Parser = Generator[int, None, None]

# Most bytes accepted after the end of a deflate stream: see
# DatasetScanner._deflate_trailer_ok.
_MAX_DEFLATE_TRAILER: Final = 9

# Bound on inflated bytes produced per step, so that a small, highly
# compressed fragment never turns into a large buffer.
_INFLATE_STEP: Final = 64 * 1024


class _MalformedError(Exception):
    """Raised inside the parser; the scanner turns it into MALFORMED.

    ``tag``: the element at which the data set broke, when there is one to
    name (the router's response gives it as Offending Element).
    """

    def __init__(self, reason: str, *, tag: int | None = None) -> None:
        super().__init__(reason)
        self.tag = tag


def _tag_name(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _may_be_sequence(tag: int) -> bool:
    """Whether an implicit VR element of undefined length may be a sequence.

    Implicit VR puts no VR on the wire, so readers take it from their data
    dictionary. pydicom reads a standard element that is not a sequence, and
    has an undefined length, up to the first bytes that look like a sequence
    delimiter, even inside an item; DCMTK refuses it; the scan would read
    items. Three readers, three data sets: a StudyInstanceUID hidden where
    only pydicom looks would route the instance by one UID and store it
    under another. Private and unknown tags may be sequences.
    """
    if tag >> 16 & 1:
        return True
    try:
        vr = pydicom.datadict.dictionary_VR(tag)
    except KeyError:
        return True
    return vr in ("SQ", "UN")


@functools.lru_cache(maxsize=64)
def _resolve_transfer_syntax(transfer_syntax: str) -> tuple[_Encoding, bool]:
    """Return the encoding of the data set and whether it is deflated.

    Cached: every instance makes a scanner, and pydicom's UID checks cost
    more than the rest of its set-up (an unsupported syntax raises each
    time; a sender proposes few syntaxes, so the cache stays small).
    """
    value = transfer_syntax.rstrip("\0 ")
    if not is_valid_uid(value):
        raise ValueError("transfer syntax is not a UID")
    uid = pydicom.uid.UID(value)
    if uid == pydicom.uid.ImplicitVRLittleEndian:
        return _IMPLICIT_LE, False
    if uid == pydicom.uid.ExplicitVRLittleEndian:
        return _EXPLICIT_LE, False
    if uid == pydicom.uid.ExplicitVRBigEndian:
        return _EXPLICIT_BE, False
    if uid in _DEFLATED:
        return _EXPLICIT_LE, True
    if uid in _NOT_SCANNABLE:
        raise ValueError(f"transfer syntax {uid} ({uid.name}) is not supported by the scanner")
    try:
        encapsulated = uid.is_encapsulated
    except ValueError:  # pydicom: "UID is not a transfer syntax"
        encapsulated = False
    if not encapsulated:
        raise ValueError(f"unsupported transfer syntax {uid!s}")
    return _EXPLICIT_LE, False


class DatasetScanner:
    """Incremental scanner of one C-STORE data set (no file meta, no preamble).

    Feed every fragment of the data set, in order, to :meth:`feed`; read
    :attr:`state` after each to know whether the instance can be routed yet;
    call :meth:`finish` after the last fragment to learn whether the data set
    was complete. The scanner never raises on bad data: the sender's bytes
    decide the state, and the router turns the state into a DICOM status.

    Parameters
    ----------
    transfer_syntax : str
        The transfer syntax UID of the presentation context. The data set of
        an encapsulated transfer syntax is Explicit VR Little Endian; a
        deflated one is inflated on the fly and the inflated bytes are scanned.

    Raises
    ------
    ValueError
        If the transfer syntax is unknown or its data set encoding is not one
        the scanner reads; the router should not accept it at negotiation.

    Attributes
    ----------
    study_uid : str or None
        The top-level StudyInstanceUID, padding stripped, once it was found.
    detail : str
        Why the state is MISSING, INVALID_UID or MALFORMED. It names tags,
        lengths and offsets only, never a value, so it is safe to log.
    offending : int or None
        When MALFORMED, the tag of the element at which the data set broke:
        for one that ends early, the top-level element it ends inside (a
        value cut short, an open sequence); none when it ends inside the
        first 8 bytes of a top-level element, as no tag can be named.
    bytes_seen : int
        Raw (not inflated) bytes fed so far.
    transfer_syntax : str
        The transfer syntax UID the scanner was made for.

    Notes
    -----
    Memory stays bounded whatever the size of the instance: the scanner holds
    at most one element header or one (0020,000D) value
    (:attr:`buffered_bytes`), a few parser frames per open sequence of
    undefined length and open item in it (at most :data:`MAX_NESTING_DEPTH`
    sequences deep), and for deflated
    data an inflater window. It keeps no reference to a fragment after
    :meth:`feed` returns.

    The StudyInstanceUID must appear at most once at the top level and before
    any larger tag; a repeated one makes the data set MALFORMED, because the
    gateway could read a different UID from the one the router routed by.
    A sequence of defined length is skipped unread; one of undefined length
    is read item by item, and an item's elements must end exactly where its
    length, if defined, says. The UID inside any sequence (a Referenced Study
    Sequence, say) is not the instance's. An
    explicit VR element with an unknown VR is MALFORMED, since where its
    length is cannot be known.
    """

    __slots__ = (
        "_at_boundary",
        "_buf",
        "_complete",
        "_finished",
        "_inflater",
        "_malformed",
        "_open_tag",
        "_parser",
        "_pos",
        "_skip",
        "_total",
        "_trailer",
        "_uid_state",
        "_view",
        "bytes_seen",
        "detail",
        "offending",
        "study_uid",
        "transfer_syntax",
    )

    def __init__(self, transfer_syntax: str) -> None:
        encoding, deflated = _resolve_transfer_syntax(transfer_syntax)
        self.transfer_syntax: str = transfer_syntax.rstrip("\0 ")
        self.study_uid: str | None = None
        self.detail: str = ""
        self.offending: int | None = None
        self.bytes_seen: int = 0
        self._uid_state = ScanState.NEED_MORE
        self._malformed = False
        self._finished = False
        self._complete = False
        self._inflater = zlib.decompressobj(-15) if deflated else None
        self._trailer = bytearray()
        # Parser input: the current fragment and the parser's position in it.
        self._view = memoryview(b"")
        self._pos = 0
        # Data set bytes (inflated ones, if deflated) handed to _consume.
        self._total = 0
        # Bytes to skip before the parser must see data again.
        self._skip = 0
        # A header or UID value that straddles fragments.
        self._buf = bytearray()
        # True while the parser waits for a top-level element header.
        self._at_boundary = False
        # The top-level element being read (its header seen, not its end).
        self._open_tag: int | None = None
        self._parser: _Parser = self._dataset(encoding, depth=0)
        self._skip = next(self._parser)

    # -- public API ---------------------------------------------------------

    @property
    def state(self) -> ScanState:
        """The current state; MALFORMED overrides what was learned before."""
        return ScanState.MALFORMED if self._malformed else self._uid_state

    @property
    def decided(self) -> bool:
        """True once the router can act: the state is no longer NEED_MORE."""
        return self._malformed or self._uid_state is not ScanState.NEED_MORE

    @property
    def buffered_bytes(self) -> int:
        """Bytes held while waiting for the rest of a header or of the UID.

        Exposed so tests and metrics can check that memory stays bounded:
        it never exceeds :data:`MAX_STUDY_UID_BYTES`.
        """
        return len(self._buf)

    @property
    def deflated(self) -> bool:
        """Whether every byte must be inflated to be scanned (nothing is skippable)."""
        return self._inflater is not None

    @property
    def skippable(self) -> int:
        """How many of the next bytes the scan would pass over without looking.

        These bytes lie inside a value being skipped (pixel data, mostly), so
        the router may move them between sockets without reading them, and
        account for them with :meth:`skip`. Always 0 for a deflated data set,
        whose every byte must be inflated, and once the scan is malformed or
        finished.
        """
        if self._inflater is not None or self._malformed or self._finished:
            return 0
        return self._skip

    def skip(self, size: int) -> None:
        """Account for ``size`` bytes that went by unseen; at most :attr:`skippable`.

        The scan ends in exactly the state that :meth:`feed` of those bytes
        would have left, whatever they were, because feed would not have
        looked at them either.

        Raises
        ------
        ValueError
            If ``size`` exceeds :attr:`skippable`: that is a bug in the
            caller, and the bytes would have been scanned.
        """
        if not 0 <= size <= self.skippable:
            raise ValueError(f"skip({size}) beyond the {self.skippable} skippable bytes")
        self._skip -= size
        self._total += size
        self.bytes_seen += size

    def feed(self, fragment: bytes | bytearray | memoryview) -> None:
        """Scan the next fragment of the data set.

        Inside a skipped value (pixel data, most of the time) a call costs a
        comparison and a subtraction, so the router can keep feeding every
        fragment after the UID is known, which it must do for :meth:`finish`
        to judge completeness.

        Parameters
        ----------
        fragment : bytes, bytearray or memoryview
            The next bytes of the data set, of any length. It is not kept,
            and may be reused by the caller once the call returns.

        Raises
        ------
        RuntimeError
            If called after :meth:`finish`: that is a bug in the caller, not
            bad data.
        """
        size = fragment.nbytes if isinstance(fragment, memoryview) else len(fragment)
        skip = self._skip
        if skip > size and self._inflater is None:
            # The whole fragment lies inside a value being skipped.
            self._skip = skip - size
            self._total += size
            self.bytes_seen += size
            return
        if self._finished:
            raise RuntimeError("feed() called after finish()")
        self.bytes_seen += size
        if self._malformed or not size:
            return
        view = memoryview(fragment)
        if view.itemsize != 1 or view.ndim != 1:
            view = view.cast("B")
        if self._inflater is None:
            self._consume(view)
        else:
            self._inflate(view)

    def finish(self) -> bool:
        """Close the scan after the last fragment and judge completeness.

        Returns
        -------
        bool
            True iff the data set ended exactly at a top-level element
            boundary with no sequence or item open (and, if deflated, the
            deflate stream ended too) and nothing was malformed. When False,
            :attr:`state` is MALFORMED and :attr:`detail` says why. A data set
            that never had (0020,000D) ends in state MISSING.
        """
        if self._finished:
            return self._complete
        self._finished = True
        if not self._malformed:
            if self._skip:
                self._fail(
                    f"data set ends {self._skip} bytes before the end of a value",
                    tag=self._open_tag,
                )
            else:
                # A parser that stopped right after a skip has not looked for
                # the next header yet; let it, on no data.
                self._run(memoryview(b""))
        if not self._malformed:
            if self._inflater is not None and not self._inflater.eof:
                self._fail("deflate stream ends early")
            elif self._inflater is not None and not self._deflate_trailer_ok():
                self._fail("unexpected bytes after the end of the deflate stream")
            elif self._buf or not self._at_boundary:
                self._fail(
                    "data set ends inside an element header, sequence or item",
                    # Inside a top-level header no element can be named.
                    tag=None if self._at_boundary else self._open_tag,
                )
        if self._uid_state is ScanState.NEED_MORE:
            self._uid_state = ScanState.MISSING
            if not self._malformed:
                self.detail = "data set ends without a top-level StudyInstanceUID (0020,000D)"
        self._complete = not self._malformed
        self._skip = 0
        self._parser.close()
        return self._complete

    # -- driving the parser -------------------------------------------------

    def _fail(self, reason: str, *, offset: int | None = None, tag: int | None = None) -> None:
        self._malformed = True
        self.offending = tag
        self._skip = 0
        self._buf.clear()
        where = self._total if offset is None else offset
        self.detail = f"{reason} (data set offset {where})"

    def _consume(self, view: memoryview) -> None:
        """Hand data set bytes (raw or inflated) to the parser."""
        size = len(view)
        self._total += size
        skip = self._skip
        if skip:
            if skip >= size:
                self._skip = skip - size
                return
            view = view[skip:]
        self._run(view)

    def _run(self, view: memoryview) -> None:
        """Let the parser use up `view`; it yields what to skip after it."""
        self._view = view
        self._pos = 0
        try:
            self._skip = self._parser.send(None)
        except _MalformedError as exc:
            self._fail(str(exc), offset=self._total - len(view) + self._pos, tag=exc.tag)
        except StopIteration:  # pragma: no cover - the top level never returns
            self._fail("parser stopped")
        # The parser's frames still name the view: release it so that the
        # caller may resize or reuse its buffer.
        view.release()

    def _inflate(self, view: memoryview) -> None:
        inflater = self._inflater
        assert inflater is not None
        if inflater.eof:
            self._after_deflate_end(view)
            return
        data: bytes | memoryview = view
        try:
            while True:
                chunk = inflater.decompress(data, _INFLATE_STEP)
                self._consume(memoryview(chunk))
                # zlib leaves unconsumed_tail set after the end of the stream.
                if inflater.eof or self._malformed:
                    break
                data = inflater.unconsumed_tail
                # A full chunk may leave output pending even with no input left.
                if not data and len(chunk) < _INFLATE_STEP:
                    break
        except zlib.error:
            self._fail("deflate stream is corrupt")
            return
        if inflater.eof and inflater.unused_data and not self._malformed:
            self._after_deflate_end(memoryview(inflater.unused_data))

    def _after_deflate_end(self, view: memoryview) -> None:
        """Keep the few bytes a writer may append after the deflate stream."""
        if len(self._trailer) + len(view) > _MAX_DEFLATE_TRAILER:
            self._fail("bytes after the end of the deflate stream")
        else:
            self._trailer += view

    def _deflate_trailer_ok(self) -> bool:
        """Judge what followed the deflate stream, once the data set ended.

        Accepted: nothing; one NUL byte padding the stream to an even length
        (pydicom writes it); or the gzip-style trailer of CRC-32 and inflated
        size that some writers append (pydicom's own ``image_dfl.dcm`` has
        one), optionally padded. The size in the trailer must match, which
        costs nothing to check; the CRC is not computed.
        """
        trailer = bytes(self._trailer)
        if trailer in (b"", b"\0"):
            return True
        if len(trailer) in (8, 9) and trailer[8:] in (b"", b"\0"):
            (size,) = struct.unpack_from("<L", trailer, 4)
            return bool(size == self._total & 0xFFFFFFFF)
        return False

    # -- the parser ---------------------------------------------------------
    #
    # The parser reads self._view from self._pos. A parser function keeps the
    # view and its position in locals, stores the position back in self._pos
    # before every yield, ``yield from`` and raise, and reloads both after,
    # because the driver may have handed it a new view. It yields only once
    # the view is used up.

    def _read(self, size: int) -> Generator[int, None, bytes]:
        """Collect `size` bytes that straddle fragments (the slow path)."""
        buf = self._buf
        while True:
            view = self._view
            pos = self._pos
            take = min(size - len(buf), len(view) - pos)
            buf += view[pos : pos + take]
            self._pos = pos + take
            if len(buf) == size:
                data = bytes(buf)
                buf.clear()
                return data
            yield 0

    def _dataset(self, enc: _Encoding, *, depth: int, end: int | None = None) -> _Parser:
        """Parse elements to the end of input (depth 0) or of an item.

        An item of undefined length ends at its delimiter; one of defined
        length at `end`, the data set offset its length gives, which its last
        element must meet exactly.
        """
        top = depth == 0
        undecided = top  # no verdict on the StudyInstanceUID yet
        explicit = enc.explicit
        header = enc.header
        u32 = enc.u32
        view = self._view
        pos = self._pos
        while True:
            if end is not None:
                here = self._total - len(view) + pos
                if here == end:
                    self._pos = pos
                    return
                if here > end:
                    self._pos = pos
                    raise _MalformedError("an element runs past the end of its item")
            raw: bytes | memoryview
            if len(view) - pos >= 8:
                raw, at = view, pos
                pos += 8
            else:
                self._pos = pos
                if top:
                    self._at_boundary = True
                raw, at = (yield from self._read(8)), 0
                if top:
                    self._at_boundary = False
                view = self._view
                pos = self._pos
            vr = b""
            if explicit:
                group, elem, vr, length = header.unpack_from(raw, at)
                if top:
                    self._open_tag = group << 16 | elem
                if group == _ITEM_GROUP:
                    (length,) = u32.unpack_from(raw, at + 4)  # items have no VR
                elif vr in _LONG_VRS:
                    if len(view) - pos >= 4:
                        (length,) = u32.unpack_from(view, pos)
                        pos += 4
                    else:
                        self._pos = pos
                        (length,) = u32.unpack((yield from self._read(4)))
                        view = self._view
                        pos = self._pos
                elif vr not in _SHORT_VRS:
                    self._pos = pos
                    raise _MalformedError(
                        f"unknown VR in element {_tag_name(group << 16 | elem)}",
                        tag=group << 16 | elem,
                    )
            else:
                group, elem, length = header.unpack_from(raw, at)
                if top:
                    self._open_tag = group << 16 | elem
            tag = group << 16 | elem

            if group == _ITEM_GROUP:
                self._pos = pos
                if tag == _ITEM_END_TAG and not top and end is None:
                    return  # a non-zero delimiter length is ignored, as pydicom does
                raise _MalformedError(f"unexpected {_tag_name(tag)} among data elements", tag=tag)
            if top and tag == _STUDY_UID_TAG:
                undecided = False
                self._pos = pos
                consumed = yield from self._study_uid(length, vr)
                view = self._view
                pos = self._pos
                if consumed:
                    continue
            elif undecided and tag > _STUDY_UID_TAG:
                undecided = False
                self._uid_state = ScanState.MISSING
                self.detail = f"no StudyInstanceUID (0020,000D) before {_tag_name(tag)}"

            past_end = end is not None and self._total - len(view) + pos + length > end
            if past_end and length != _UNDEFINED:
                self._pos = pos
                raise _MalformedError(
                    f"element {_tag_name(tag)} runs past the end of its item", tag=tag
                )
            if length == _UNDEFINED:
                self._pos = pos
                yield from self._undefined_length(enc, tag, vr, depth=depth)
                view = self._view
                pos = self._pos
            elif length:
                if length <= len(view) - pos:
                    pos += length
                else:
                    self._pos = len(view)
                    yield length - (len(view) - pos)
                    view = self._view
                    pos = self._pos

    def _undefined_length(self, enc: _Encoding, tag: int, vr: bytes, *, depth: int) -> _Parser:
        """Parse the value of an element of undefined length."""
        if not enc.explicit:
            if tag != _PIXEL_DATA_TAG and not _may_be_sequence(tag):
                raise _MalformedError(
                    f"undefined length in element {_tag_name(tag)}, not a sequence"
                    " by the data dictionary",
                    tag=tag,
                )
            yield from self._items(enc, depth=depth + 1, fragments=tag == _PIXEL_DATA_TAG)
        elif vr == b"SQ":
            yield from self._items(enc, depth=depth + 1)
        elif vr == b"UN":
            # PS3.5 6.2.2: an undefined-length UN holds implicit VR LE items.
            yield from self._items(_IMPLICIT_LE, depth=depth + 1)
        elif vr in (b"OB", b"OW"):
            yield from self._items(enc, depth=depth + 1, fragments=True)
        else:
            raise _MalformedError(
                f"undefined length in element {_tag_name(tag)} of VR {vr!r}", tag=tag
            )

    def _items(self, enc: _Encoding, *, depth: int, fragments: bool = False) -> _Parser:
        """Parse the items of a sequence, or pixel data fragments, to the delimiter.

        An item is a nested data set that ends at its delimiter or, if its
        length is defined, exactly where its length says: readers that parse
        the item (pydicom) and readers that skip it must agree on where the
        sequence ends. Pixel data fragments have a defined length and are
        skipped unread.
        """
        if depth > MAX_NESTING_DEPTH:
            raise _MalformedError(f"sequences nested deeper than {MAX_NESTING_DEPTH}")
        item = enc.item
        view = self._view
        pos = self._pos
        while True:
            if len(view) - pos >= 8:
                group, elem, length = item.unpack_from(view, pos)
                pos += 8
            else:
                self._pos = pos
                group, elem, length = item.unpack((yield from self._read(8)))
                view = self._view
                pos = self._pos
            tag = group << 16 | elem
            if tag == _SEQUENCE_END_TAG:
                self._pos = pos
                return
            if tag != _ITEM_TAG:
                self._pos = pos
                raise _MalformedError(f"{_tag_name(tag)} where an item was expected", tag=tag)
            if length == _UNDEFINED:
                self._pos = pos
                if fragments:
                    raise _MalformedError("pixel data fragment of undefined length")
                yield from self._dataset(enc, depth=depth)
                view = self._view
                pos = self._pos
            elif length and not fragments:
                self._pos = pos
                end = self._total - len(view) + pos + length
                yield from self._dataset(enc, depth=depth, end=end)
                view = self._view
                pos = self._pos
            elif length:
                if length <= len(view) - pos:
                    pos += length
                else:
                    self._pos = len(view)
                    yield length - (len(view) - pos)
                    view = self._view
                    pos = self._pos

    def _study_uid(self, length: int, vr: bytes) -> Generator[int, None, bool]:
        """Judge a top-level (0020,000D); return True if its value was consumed."""
        if self._uid_state is not ScanState.NEED_MORE:
            raise _MalformedError(
                "StudyInstanceUID (0020,000D) repeated or after a later tag", tag=_STUDY_UID_TAG
            )
        if length == _UNDEFINED or vr == b"SQ":
            self._invalid("StudyInstanceUID (0020,000D) is encoded as a sequence")
            return False
        if length > MAX_STUDY_UID_BYTES:
            self._invalid(f"StudyInstanceUID (0020,000D) value is {length} bytes long")
            return False
        view = self._view
        pos = self._pos
        if length <= len(view) - pos:
            value = bytes(view[pos : pos + length])
            self._pos = pos + length
        else:
            value = yield from self._read(length)
        uid = value.rstrip(b"\0 ")
        if not uid:
            # An empty Type 1 value is a missing value (DIMSE status 0121H,
            # "Missing Attribute Value"), not a wrong one.
            self._uid_state = ScanState.MISSING
            self.detail = "StudyInstanceUID (0020,000D) is empty"
        elif len(uid) > _UID_MAX_CHARS or _UID_BYTES_PATTERN.fullmatch(uid) is None:
            self._invalid(f"StudyInstanceUID (0020,000D) is not a valid UID ({len(uid)} bytes)")
        else:
            self.study_uid = uid.decode("ascii")
            self._uid_state = ScanState.FOUND
        return True

    def _invalid(self, reason: str) -> None:
        self._uid_state = ScanState.INVALID_UID
        self.detail = reason


# -- the native implementation, and the choice between the two ---------------------


class Scanner(Protocol):
    """What the router uses of a scanner: :class:`DatasetScanner` documents each."""

    @property
    def study_uid(self) -> str | None: ...
    @property
    def detail(self) -> str: ...
    @property
    def offending(self) -> int | None: ...
    @property
    def bytes_seen(self) -> int: ...
    @property
    def transfer_syntax(self) -> str: ...
    @property
    def state(self) -> ScanState: ...
    @property
    def decided(self) -> bool: ...
    @property
    def buffered_bytes(self) -> int: ...
    @property
    def deflated(self) -> bool: ...
    @property
    def skippable(self) -> int: ...
    def skip(self, size: int) -> None: ...
    def feed(self, fragment: bytes | bytearray | memoryview) -> None: ...
    def finish(self) -> bool: ...


#: The environment variable that picks the implementation: ``auto`` (the
#: default: native where built), ``native`` or ``python``.
HOT_PATH_VARIABLE: Final = "GATEWAYPOOL_HOT_PATH"

# The native codes of an encoding (router/native/src/lib.rs).
_NATIVE_ENCODING: Final = {_IMPLICIT_LE: 0, _EXPLICIT_LE: 1, _EXPLICIT_BE: 2}
# state_code -> ScanState, in the order of the native UidState, then MALFORMED.
_NATIVE_STATES: Final = (
    ScanState.NEED_MORE,
    ScanState.FOUND,
    ScanState.MISSING,
    ScanState.INVALID_UID,
    ScanState.MALFORMED,
)


def _python_scanner(transfer_syntax: str) -> Scanner:
    return DatasetScanner(transfer_syntax)


IMPLEMENTATIONS: dict[str, Callable[[str], Scanner]] = {"python": _python_scanner}

# Not built (a source checkout without Rust): the Python scan is the fallback.
# Built but unloadable is an error, at import: it must not pass unnoticed.
if importlib.util.find_spec("gatewaypool_router._native") is not None:
    from gatewaypool_router import _native

    class _NativeScanner(_native.Scanner):
        """The Rust scan, with :attr:`state` as the enum the router reads."""

        __slots__ = ()

        @property
        def state(self) -> ScanState:
            return _NATIVE_STATES[self.state_code]

    def _native_scanner(transfer_syntax: str) -> Scanner:
        encoding, deflated = _resolve_transfer_syntax(transfer_syntax)
        if deflated:
            # Inflating is zlib's work either way, and a deflated data set is
            # never spliced: the Python scan serves it.
            return DatasetScanner(transfer_syntax)
        return _NativeScanner(
            _NATIVE_ENCODING[encoding], _may_be_sequence, transfer_syntax.rstrip("\0 ")
        )

    IMPLEMENTATIONS["native"] = _native_scanner


def _choose() -> str:
    wanted = os.environ.get(HOT_PATH_VARIABLE, "auto").strip().lower() or "auto"
    if wanted == "auto":
        return "native" if "native" in IMPLEMENTATIONS else "python"
    if wanted not in ("native", "python"):
        raise ValueError(f"{HOT_PATH_VARIABLE}={wanted!r}: expected auto, native or python")
    if wanted not in IMPLEMENTATIONS:
        raise ImportError(
            f"{HOT_PATH_VARIABLE}=native, but gatewaypool_router._native is not built"
        )
    return wanted


#: The implementation the router's scanners use in this process.
HOT_PATH: Final = _choose()

#: Make the scanner of one instance's data set: see :class:`DatasetScanner`.
new_scanner: Final[Callable[[str], Scanner]] = IMPLEMENTATIONS[HOT_PATH]
