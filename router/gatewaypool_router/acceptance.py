"""Which SOP classes and transfer syntaxes the router accepts from senders.

The router forwards each instance in the transfer syntax the sender used, to
a gateway it only knows once the StudyInstanceUID has gone by. A context
the router accepts and the instance's gateway refuses fails every instance
on it (0x0122), where the sender, talking to that gateway directly, would
have fallen back to another context at negotiation. So the router accepts
only what every gateway of the pool accepts, and prefers what they prefer:

- configured lists (``--accepted-transfer-syntax``, ``--sop-class``; the pool's
  ``spec.gateway.acceptedTransferSyntaxes`` and ``spec.gateway.sopClasses``)
  take precedence: a configured transfer syntax list is also the order of
  preference, a configured SOP class list is the whole set of classes (and
  may name private ones);
- otherwise what the gateways answered to probe associations
  (:mod:`gatewaypool_router.catalog`): the SOP classes each accepted, the
  transfer syntaxes each accepted, ordered by the first gateway's choice.
  A gateway's transfer syntaxes are learnt for one SOP class (CT Image
  Storage where it takes it) and assumed for every class it takes: the
  gateways tested (DCMTK storescp, Orthanc, dicom-rs, pynetdicom) set them
  for the whole gateway, not class by class;
- a gateway not probed yet (unreachable, or refusing the router's AE title)
  does not narrow the set; with no gateway known, the router accepts every
  storage SOP class in every transfer syntax it can read.

Everything here is a function of data: no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pynetdicom.service_class import StorageServiceClass, VerificationServiceClass
from pynetdicom.sop_class import _STORAGE_CLASSES, uid_to_service_class

from gatewaypool_router.scanner import SUPPORTED_TRANSFER_SYNTAXES

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
#: The Storage Service Class, as SOP Class Common Extended Negotiation names it (PS3.7 D.3.3.6).
STORAGE_SERVICE_CLASS = "1.2.840.10008.4.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"

#: Every storage SOP class pynetdicom knows: what the probes ask gateways about.
KNOWN_STORAGE_CLASSES: tuple[str, ...] = tuple(
    sorted({str(uid) for uid in _STORAGE_CLASSES.values()})
)


@functools.lru_cache(maxsize=4096)
def is_known_storage(sop_class: str) -> bool:
    """A storage SOP class in pynetdicom's table (the DICOM standard's, as of its release)."""
    return uid_to_service_class(sop_class) is StorageServiceClass


def is_verification(sop_class: str) -> bool:
    return uid_to_service_class(sop_class) is VerificationServiceClass


@dataclass(frozen=True, slots=True)
class GatewayAccepts:
    """What one gateway accepted in its probe associations.

    Attributes
    ----------
    asked : frozenset[str]
        The SOP classes it was asked about; about the others nothing is known.
    sop_classes : frozenset[str]
        Those of ``asked`` it accepted.
    transfer_syntaxes : tuple[str, ...] or None
        The transfer syntaxes it accepted, its preferred first; None when not
        probed (a configured list applies).
    """

    asked: frozenset[str]
    sop_classes: frozenset[str]
    transfer_syntaxes: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class Policy:
    """The sender-side negotiation rules for the current map and configuration."""

    configured_syntaxes: tuple[str, ...] | None = None
    configured_classes: frozenset[str] | None = None
    gateways: tuple[GatewayAccepts, ...] = ()

    def is_storage(self, sop_class: str, *, marked_storage: bool = False) -> bool:
        """A class the router may accept as storage: known, configured, or marked by the sender.

        ``marked_storage``: the sender named it a Storage Service Class SOP
        class with SOP Class Common Extended Negotiation.
        """
        if self.configured_classes is not None and sop_class in self.configured_classes:
            return True
        return marked_storage or is_known_storage(sop_class)

    def unknown_to(self, sop_class: str) -> bool:
        """Whether some known gateway was never asked about ``sop_class``."""
        return any(sop_class not in g.asked for g in self.gateways)

    def syntaxes_for(self, sop_class: str, *, marked_storage: bool = False) -> tuple[str, ...]:
        """Transfer syntaxes accepted for ``sop_class``, preferred first; () refuses the class."""
        if is_verification(sop_class):
            return SUPPORTED_TRANSFER_SYNTAXES
        if self.configured_classes is not None:
            if sop_class not in self.configured_classes:
                return ()
        elif not self.is_storage(sop_class, marked_storage=marked_storage):
            return ()
        if any(sop_class in g.asked and sop_class not in g.sop_classes for g in self.gateways):
            return ()
        # A private or new class: accepted only where every gateway said yes to it.
        if (
            self.configured_classes is None
            and not is_known_storage(sop_class)
            and (not self.gateways or self.unknown_to(sop_class))
        ):
            return ()
        return self.transfer_syntaxes()

    def transfer_syntaxes(self) -> tuple[str, ...]:
        """Transfer syntaxes every gateway accepts, in the order they prefer."""
        supported = set(SUPPORTED_TRANSFER_SYNTAXES)
        if self.configured_syntaxes is not None:
            return tuple(ts for ts in self.configured_syntaxes if ts in supported)
        probed = [g.transfer_syntaxes for g in self.gateways if g.transfer_syntaxes is not None]
        if not probed:
            return SUPPORTED_TRANSFER_SYNTAXES
        common = set(probed[0]).intersection(*probed[1:]) & supported
        return tuple(ts for ts in probed[0] if ts in common)


def preference(accepted: Iterable[str], first_choice: str | None) -> tuple[str, ...]:
    """Order a gateway's accepted transfer syntaxes: its own first choice, then ours.

    A probe learns the gateway's pick among all of them; the rest keep the
    router's order (uncompressed first, as most gateways rank them).
    """
    accepted_set = set(accepted)
    ordered = [ts for ts in SUPPORTED_TRANSFER_SYNTAXES if ts in accepted_set]
    if first_choice is not None and first_choice in accepted_set:
        ordered.remove(first_choice)
        ordered.insert(0, first_choice)
    return tuple(ordered)


def storage_marks(items: Mapping[str, str]) -> frozenset[str]:
    """SOP classes a sender marked as Storage: {sop_class: service_class} from its RQ."""
    return frozenset(uid for uid, service in items.items() if service == STORAGE_SERVICE_CLASS)
