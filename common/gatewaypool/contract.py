"""What the operator and the routers must agree on, in one place.

The two formats they exchange have modules of their own: the bucket map
(:mod:`gatewaypool.bucketmap`), which the operator publishes and every
router applies, and the router report (:mod:`gatewaypool.reports`), which
each router writes and the operator reads. This module holds the rest of the
contract: the custom resource's API coordinates, where the map is kept, the
bucket limit, the one rule for an AE title that every part checks, and the
attribute names a caller's certificate subject may use.
"""

from __future__ import annotations

import re
from typing import Final

__all__ = [
    "AE_TITLE_MAX_LENGTH",
    "AE_TITLE_PATTERN",
    "API_GROUP",
    "API_GROUP_VERSION",
    "API_VERSION",
    "KIND",
    "MAP_KEY",
    "MAX_BUCKETS",
    "PLURAL",
    "READINESS_KEY",
    "STUDY_UID_PATTERN",
    "SUBJECT_ATTRIBUTE_TYPES",
    "UID_MAX_LENGTH",
    "UID_PATTERN",
    "ae_title_problem",
    "study_uid_problem",
    "uid_problem",
]

API_GROUP: Final = "gatewaypool.io"
API_VERSION: Final = "v1alpha1"
API_GROUP_VERSION: Final = f"{API_GROUP}/{API_VERSION}"
KIND: Final = "GatewayPool"
PLURAL: Final = "gatewaypools"

MAP_KEY: Final = "map.json"
"""The key of the bucket map in a pool's ``NAME-map`` ConfigMap."""

READINESS_KEY: Final = "readiness.json"
"""The key, beside `MAP_KEY`, of which of the map's gateways are not Ready
(`gatewaypool.bucketmap.Readiness`): written by the operator in the same
ConfigMap, outside the versioned map, so that a readiness change bumps no
version and routers that read only ``map.json`` are not affected."""

MAX_BUCKETS: Final = 65536
"""Upper bound of a pool's bucket count: ample for any pool, and it keeps a map small."""

AE_TITLE_MAX_LENGTH: Final = 16
AE_TITLE_PATTERN: Final = r"^[ -\[\]-~]{1,16}$"
"""An AE title: 1 to 16 printable ASCII characters, no backslash (PS3.5 6.2, AE VR).

The CRD's schema uses this pattern; `ae_title_problem` adds what a pattern
cannot say well: a title of spaces only, which no DICOM peer can be called by.
"""

_AE_TITLE: Final = re.compile(AE_TITLE_PATTERN)


def ae_title_problem(value: str) -> str | None:
    """Return why `value` is not a usable AE title, or None if it is one.

    The answer completes "… is not an AE title (<answer>)" in each caller's
    own error type: the operator's spec errors, the router's option errors
    and the bucket map's format errors say the same thing.
    """
    if not 1 <= len(value) <= AE_TITLE_MAX_LENGTH:
        return f"1 to {AE_TITLE_MAX_LENGTH} characters, has {len(value)}"
    if "\\" in value:
        return "no backslash"
    if not _AE_TITLE.fullmatch(value):  # match() would let a trailing newline through
        return "printable ASCII only, no control characters"
    if not value.strip(" "):
        return "all spaces"
    return None


UID_MAX_LENGTH: Final = 64
UID_PATTERN: Final = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$"
"""A UID (PS3.5 9.1): digits in dot-separated components, no leading zeros,
at most 64 characters. ``spec.gateway.acceptedTransferSyntaxes`` and
``sopClasses``, and the router's ``--accepted-transfer-syntax`` and
``--sop-class``, hold UIDs."""

_UID: Final = re.compile(UID_PATTERN)


def uid_problem(value: str) -> str | None:
    """Return why `value` is not a UID, or None if it is one (as `ae_title_problem`)."""
    if not 1 <= len(value) <= UID_MAX_LENGTH:
        return f"1 to {UID_MAX_LENGTH} characters, has {len(value)}"
    if not _UID.fullmatch(value):
        return "digits in dot-separated components, no leading zeros"
    return None


STUDY_UID_PATTERN: Final = r"^[0-9]+(\.[0-9]+)*$"
"""A StudyInstanceUID the router routes: the syntax of `UID_PATTERN`, except
that components with leading zeros (and a single component) are tolerated.
Real-world data has them, and refusing such a study would stop it without
making routing any safer. ``gatewaypool locate`` takes what the router routes."""

_STUDY_UID: Final = re.compile(STUDY_UID_PATTERN)


def study_uid_problem(value: str) -> str | None:
    """Return why the router would not route a study of UID `value`, or None if it would."""
    if not 1 <= len(value) <= UID_MAX_LENGTH:
        return f"1 to {UID_MAX_LENGTH} characters, has {len(value)}"
    if not _STUDY_UID.fullmatch(value):
        return "digits in dot-separated components"
    return None


SUBJECT_ATTRIBUTE_TYPES: Final = ("CN", "C", "L", "ST", "O", "OU", "STREET", "DC", "UID")
"""Attribute types a caller's certificate subject (``--caller-subject``,
``spec.router.tls.callerSubjects[].subject``) may name, in any case: those
RFC 4514 and the router's certificate library know by name. Any other
attribute is written as a dotted OID. The router parses by them; the
operator's and the CRD's pattern admits them."""
