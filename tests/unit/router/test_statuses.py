"""The router's own DIMSE statuses: classification, uniqueness and ranges.

Senders decide whether to retry from the status class alone, so a status
in the wrong range (a transient fault answered as 0xC2xx) would make a
sender give up on an instance that a retry would have delivered.
"""

from __future__ import annotations

import pytest

from gatewaypool_router.statuses import OFFENDING, Status, outcome, retryable

TRANSIENT = {
    "GATEWAY_UNREACHABLE",
    "GATEWAY_TIMEOUT",
    "GATEWAY_ABORTED",
    "NO_MAP",
    "GATEWAY_TLS_FAILED",
    "SPOOL_FULL",
}
#: 0xA9xx, "Error: data set does not match SOP class": a Type 1 attribute missing.
DOES_NOT_MATCH = {"STUDY_UID_MISSING"}
#: The gateway refuses the router for good: a retry fails alike.
PERMANENT_REFUSALS = {"GATEWAY_REFUSED_CALLER", "GATEWAY_REJECTED"}
DATA_FAULTS = {
    "DATASET_MALFORMED",
    "STUDY_UID_INVALID",
    "HEADER_TOO_LARGE",
    "REQUEST_MALFORMED",
}


def test_success() -> None:
    assert outcome(0x0000) == "success"
    assert outcome(Status.SUCCESS) == "success"


@pytest.mark.parametrize(
    "status",
    [
        0x0001,  # warning: requested optional attributes not supported
        0x0107,  # attribute list error
        0x0116,  # attribute value out of range
        0xB000,  # coercion of data elements
        0xB006,  # elements discarded
        0xB007,  # data set does not match SOP class
        0xBFFF,  # top of the warning range
    ],
)
def test_warnings(status: int) -> None:
    assert outcome(status) == "warning"


@pytest.mark.parametrize(
    "status",
    [
        0xA700,  # refused: out of resources
        0xA701,
        0xA900,  # data set does not match SOP class (error)
        0xAFFF,  # just below the warning range
        0xC000,  # cannot understand, just above the warning range
        0xC211,
        0x0122,  # SOP class not supported
        0x0002,  # neither success nor a listed warning
        0x0110,  # processing failure
        0x0211,  # unrecognized operation
        0xFE00,  # cancel: never a stored instance
        0xFF00,  # pending: not a valid final C-STORE status
    ],
)
def test_failures(status: int) -> None:
    assert outcome(status) == "failure"


def test_every_member_has_its_own_value() -> None:
    # IntEnum turns a duplicated value into a silent alias that iteration hides.
    values = [member.value for member in Status.__members__.values()]
    assert len(values) == len(set(values))
    assert len(Status.__members__) == len(list(Status))


def test_every_non_success_member_is_a_failure() -> None:
    for member in Status:
        expected = "success" if member is Status.SUCCESS else "failure"
        assert outcome(member) == expected, member.name


@pytest.mark.parametrize("name", sorted(TRANSIENT))
def test_transient_statuses_are_refused_out_of_resources(name: str) -> None:
    assert Status[name] >> 8 == 0xA7


@pytest.mark.parametrize("name", sorted(DATA_FAULTS))
def test_data_statuses_are_cannot_understand(name: str) -> None:
    assert Status[name] >> 8 == 0xC2


@pytest.mark.parametrize("name", sorted(DOES_NOT_MATCH))
def test_missing_type_1_attributes_do_not_match_the_sop_class(name: str) -> None:
    assert Status[name] >> 8 == 0xA9


def test_only_out_of_resources_is_retryable() -> None:
    for member in Status:
        assert retryable(member) == (member.name in TRANSIENT), member.name
    assert Status.GATEWAY_REFUSED_CALLER == 0x0124  # Refused: not authorized (PS3.7 C.4)
    assert Status.GATEWAY_REJECTED == 0x0110  # Processing failure


def test_offending_element_only_where_ps3_4_lists_it() -> None:
    # PS3.4 Table B.2-1: (0000,0901) belongs to 0xA9xx and 0xCxxx, not to 0xA7xx.
    for status in OFFENDING:
        assert status >> 12 == 0xC or status >> 8 == 0xA9, status.name
    for name in DOES_NOT_MATCH | {"STUDY_UID_INVALID", "HEADER_TOO_LARGE"}:
        assert OFFENDING[Status[name]] == (0x0020000D,)


def test_every_member_is_classified() -> None:
    other = {"SUCCESS", "SOP_CLASS_NOT_SUPPORTED"}
    assert (
        set(Status.__members__)
        == TRANSIENT | DATA_FAULTS | DOES_NOT_MATCH | PERMANENT_REFUSALS | other
    )
    assert Status.SUCCESS == 0x0000
    assert Status.SOP_CLASS_NOT_SUPPORTED == 0x0122
    # Nothing outside these two ranges may be 0xA7xx or 0xC2xx by accident.
    for member in Status:
        if member.name not in TRANSIENT:
            assert member >> 8 != 0xA7, member.name
        if member.name not in DATA_FAULTS:
            assert member >> 8 != 0xC2, member.name
