"""The router's own DIMSE statuses: classification, uniqueness and ranges.

Senders decide whether to retry from the status class alone, so a status
in the wrong range (a transient fault answered as 0xC2xx) would make a
sender give up on an instance that a retry would have delivered.
"""

from __future__ import annotations

import pytest

from gatewaypool_router.statuses import Status, outcome

TRANSIENT = {
    "GATEWAY_UNREACHABLE",
    "GATEWAY_TIMEOUT",
    "GATEWAY_ABORTED",
    "NO_MAP",
    "GATEWAY_TLS_FAILED",
}
DATA_FAULTS = {
    "DATASET_MALFORMED",
    "STUDY_UID_MISSING",
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


def test_every_member_is_classified() -> None:
    other = {"SUCCESS", "SOP_CLASS_NOT_SUPPORTED"}
    assert set(Status.__members__) == TRANSIENT | DATA_FAULTS | other
    assert Status.SUCCESS == 0x0000
    assert Status.SOP_CLASS_NOT_SUPPORTED == 0x0122
    # Nothing outside these two ranges may be 0xA7xx or 0xC2xx by accident.
    for member in Status:
        if member.name not in TRANSIENT:
            assert member >> 8 != 0xA7, member.name
        if member.name not in DATA_FAULTS:
            assert member >> 8 != 0xC2, member.name
