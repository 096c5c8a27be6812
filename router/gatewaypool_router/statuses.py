"""Every DICOM status the router itself answers, each with a name.

Statuses a gateway answers are passed back to the sender unchanged; these are
the ones the router produces when no gateway answered, or when the instance
was refused before it reached one. Codes in 0xA7xx ("Refused: out of
resources") tell senders the failure is transient and worth a retry; the
others are not, and a retry fails alike until someone fixes something:
0xA9xx and 0xC2xx ("Data set does not match SOP class", "Cannot
understand") say the instance itself is at fault, 0x0110 and 0x0124 that a
gateway refuses the router for good, 0x0122 that the gateway does not take
this SOP class in this transfer syntax.

Where PS3.4 Table B.2-1 lists Offending Element (0000,0901) for a status
(0xA9xx, 0xCxxx), the router's response carries it: :data:`OFFENDING`, the
command element at fault for REQUEST_MALFORMED, and for DATASET_MALFORMED
the element at which the data set broke, or, for one that ends early, the
top-level element it ends inside (none when it ends inside the first 8
bytes of a top-level element, its tag not yet whole: there is no element to
name).
"""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """DIMSE status codes answered by the router."""

    SUCCESS = 0x0000
    #: The gateway rejected the router's association permanently for another
    #: reason than the calling AE title (called AE title not recognized, no
    #: reason given, ...): "Processing failure", not worth a retry.
    GATEWAY_REJECTED = 0x0110
    #: The presentation context is not accepted by the instance's gateway.
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    #: The gateway rejected the router's association permanently: calling AE
    #: title not recognized ("Refused: not authorized").
    GATEWAY_REFUSED_CALLER = 0x0124
    #: The spool cannot take the instance: ``--spool-max-bytes`` reached, or
    #: its volume failed a write ("Refused: out of resources").
    SPOOL_FULL = 0xA700
    #: No association to the gateway could be opened (refused, unreachable).
    GATEWAY_UNREACHABLE = 0xA701
    #: The gateway did not answer within the configured timeout.
    GATEWAY_TIMEOUT = 0xA702
    #: The gateway aborted or closed the association while the instance was in flight.
    GATEWAY_ABORTED = 0xA703
    #: The bucket map has no usable gateway (no map loaded yet).
    NO_MAP = 0xA704
    #: The TLS connection to the gateway failed (``--gateway-tls-ca``): its
    #: certificate did not verify against the CA or did not name its host, or
    #: the handshake failed. A gateway's certificate is an operator's fix, but a
    #: sender's retry after it is worth making, hence "out of resources".
    GATEWAY_TLS_FAILED = 0xA705
    #: The data set is truncated or structurally malformed.
    DATASET_MALFORMED = 0xC210
    #: The data set has no top-level StudyInstanceUID (0020,000D), or it is
    #: empty: a Type 1 attribute of every composite IOD missing ("Data set
    #: does not match SOP class").
    STUDY_UID_MISSING = 0xA900
    #: The StudyInstanceUID is not a valid UID (characters, length, components).
    STUDY_UID_INVALID = 0xC212
    #: The StudyInstanceUID did not appear within the configured header limit.
    HEADER_TOO_LARGE = 0xC213
    #: The C-STORE request carries no data set, or its command is unusable.
    REQUEST_MALFORMED = 0xC214


STUDY_INSTANCE_UID = 0x0020000D

#: Offending Element (0000,0901) of the router's own statuses that PS3.4
#: Table B.2-1 gives one; REQUEST_MALFORMED names the command element at
#: fault, and DATASET_MALFORMED the element the scanner broke at, case by case.
OFFENDING: dict[Status, tuple[int, ...]] = {
    Status.STUDY_UID_MISSING: (STUDY_INSTANCE_UID,),
    Status.STUDY_UID_INVALID: (STUDY_INSTANCE_UID,),
    Status.HEADER_TOO_LARGE: (STUDY_INSTANCE_UID,),
}


def retryable(status: int) -> bool:
    """Whether a sender should send the instance again later (0xA7xx, out of resources)."""
    return status >> 8 == 0xA7


def outcome(status: int) -> str:
    """Classify a DIMSE status as ``success``, ``warning`` or ``failure``.

    Parameters
    ----------
    status : int
        A C-STORE response status, ours or a gateway's.
    """
    if status == 0x0000:
        return "success"
    if status in (0x0001, 0x0107, 0x0116) or 0xB000 <= status <= 0xBFFF:
        return "warning"
    return "failure"
