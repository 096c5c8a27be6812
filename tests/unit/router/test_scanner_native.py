"""The native scanner against the Python one, byte for byte of what they say.

The differential tests hold each implementation to pydicom's reading; this
module holds the two to each other where pydicom has no opinion: the detail
string (with its data set offset), the Offending Element, the UID the router
would have routed by, and what is skippable after every fragment, on the
same mutated data sets and fragmentations. A difference here is a bug in the
port (router/native/src/scanner.rs), whichever verdict is right.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_scanner_differential import fragmentations, plain_bytes, redeflate, reference

from gatewaypool_router.scanner import IMPLEMENTATIONS, Scanner, ScanState
from support.datasets import Case, cases, mutations

if "native" not in IMPLEMENTATIONS:
    pytest.fail("gatewaypool_router._native is not built: run ./dev.sh to build it", pytrace=False)

python_scanner = IMPLEMENTATIONS["python"]
native_scanner = IMPLEMENTATIONS["native"]


def transcript(
    make: Callable[[str], Scanner], transfer_syntax: str, fragments: list[bytes], *, splice: bool
) -> list[object]:
    """Everything the router can read from a scan, after each fragment and at the end."""
    scanner = make(transfer_syntax)
    seen: list[object] = []
    for fragment in fragments:
        unseen = min(scanner.skippable, len(fragment)) if splice else 0
        scanner.skip(unseen)
        scanner.feed(fragment[unseen:])
        seen.append((scanner.state, scanner.study_uid, scanner.decided, scanner.skippable))
    complete = scanner.finish()
    seen.append(
        (complete, scanner.state, scanner.study_uid, scanner.detail, scanner.offending,
         scanner.bytes_seen)
    )  # fmt: skip
    return seen


@settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases(max_elements=8, max_value=64, max_depth=4), data=st.data())
def test_native_and_python_scans_say_the_same(case: Case, data: st.DataObject) -> None:
    family = case.family
    plain = plain_bytes(case)
    hot = list(reference(case.data, family).boundaries)
    mutated = redeflate(family, data.draw(mutations(plain, little=family.little, hot=hot)))
    fragments = data.draw(fragmentations(mutated), label="fragments")
    splice = data.draw(st.booleans(), label="splice")
    ts = case.transfer_syntax
    ours = transcript(native_scanner, ts, fragments, splice=splice)
    theirs = transcript(python_scanner, ts, fragments, splice=splice)
    assert ours == theirs


def test_native_scan_is_the_router_default_where_built() -> None:
    from gatewaypool_router import scanner

    assert scanner.HOT_PATH in ("native", "python")
    made = native_scanner("1.2.840.10008.1.2.1")
    assert made.state is ScanState.NEED_MORE


def test_the_transcripts_compare_details_offsets_and_offending_elements() -> None:
    # Not vacuous: what is compared holds the detail with its offset and the tag.
    bad = b"\x08\x00\x16\x00ZZ\x04\x001.2\0"  # (0008,0016) with an unknown VR
    ours = transcript(native_scanner, "1.2.840.10008.1.2.1", [bad[:5], bad[5:]], splice=False)
    theirs = transcript(python_scanner, "1.2.840.10008.1.2.1", [bad[:5], bad[5:]], splice=False)
    assert ours == theirs
    last = ours[-1]
    assert isinstance(last, tuple)
    complete, state, _, detail, offending, seen = last
    assert (complete, state, offending, seen) == (False, ScanState.MALFORMED, 0x00080016, 12)
    assert detail == "unknown VR in element (0008,0016) (data set offset 8)"
