"""Every DICOM status the router itself answers, each with a name.

Statuses a gateway answers are passed back to the sender unchanged; these are
the ones the router produces when no gateway answered, or when the instance
was refused before it reached one. Codes in 0xA7xx ("Refused: out of
resources") tell senders the failure is transient and worth a retry; codes in
0xC2xx ("Cannot understand") tell them the instance itself is at fault.
"""

from __future__ import annotations

import enum


class Status(enum.IntEnum):
    """DIMSE status codes answered by the router."""

    SUCCESS = 0x0000
    #: The presentation context is not accepted by the instance's gateway.
    SOP_CLASS_NOT_SUPPORTED = 0x0122
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
    #: The data set has no top-level StudyInstanceUID (0020,000D), or it is empty.
    STUDY_UID_MISSING = 0xC211
    #: The StudyInstanceUID is not a valid UID (characters, length, components).
    STUDY_UID_INVALID = 0xC212
    #: The StudyInstanceUID did not appear within the configured header limit.
    HEADER_TOO_LARGE = 0xC213
    #: The C-STORE request carries no data set, or its command is unusable.
    REQUEST_MALFORMED = 0xC214


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
