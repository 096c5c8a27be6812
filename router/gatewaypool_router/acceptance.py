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
  (:mod:`gatewaypool_router.catalog`): the SOP classes each accepted, and
  per SOP class the transfer syntaxes each accepted, as (SOP class,
  transfer syntax) pairs, each asked in a context of its own. A gateway
  may take JPEG-LS for CT and not for MR: MR in JPEG-LS is then refused at
  negotiation (result 4) and the sender falls back, as it would with that
  gateway. A pair a gateway was never asked about counts as refused; the
  catalog asks about a sender's proposed pairs before answering it
  (:meth:`Policy.to_learn`). Among the syntaxes every gateway takes, the
  first gateway's own pick comes first, then the router's order;
- a gateway not probed yet (unreachable, or refusing the router's AE title)
  does not narrow the set; with no gateway known, the router accepts every
  storage SOP class in every transfer syntax it can read.

Everything here is a function of data: no I/O.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, replace

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


#: A (SOP class UID, transfer syntax UID) pair: what a presentation context agrees on.
Pair = tuple[str, str]


@dataclass(frozen=True, slots=True)
class GatewayAccepts:
    """What one gateway accepted in its probe associations.

    Attributes
    ----------
    asked : frozenset[str]
        The SOP classes it was asked about (in uncompressed syntaxes); about
        the others nothing is known at the class level.
    sop_classes : frozenset[str]
        Those of ``asked`` it accepted.
    pairs_asked : frozenset[Pair]
        The (SOP class, transfer syntax) pairs it was asked about, each in a
        context of its own.
    pairs : frozenset[Pair]
        Those of ``pairs_asked`` it accepted.
    first_choice : str or None
        The transfer syntax it picked from a context offering every one:
        its preference, put first when the router chooses among a sender's.
    """

    asked: frozenset[str]
    sop_classes: frozenset[str]
    pairs_asked: frozenset[Pair] = frozenset()
    pairs: frozenset[Pair] = frozenset()
    first_choice: str | None = None

    def refuses_class(self, sop_class: str) -> bool:
        """Asked about ``sop_class`` and refused it."""
        return sop_class in self.asked and sop_class not in self.sop_classes

    def learnt(self, asked: Iterable[Pair], accepted: Iterable[Pair]) -> GatewayAccepts:
        """This knowledge plus the answer to one more pair probe."""
        return replace(
            self,
            pairs_asked=self.pairs_asked | frozenset(asked),
            pairs=self.pairs | frozenset(accepted),
        )


@dataclass(frozen=True, slots=True)
class Policy:
    """The sender-side negotiation rules for the current map and configuration.

    ``gateways`` holds what each probed gateway of the map accepts; a
    gateway not probed yet is left out (it does not narrow the set).
    """

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

    def class_allowed(self, sop_class: str, *, marked_storage: bool = False) -> bool:
        """Whether ``sop_class`` may be accepted in some transfer syntax (storage classes)."""
        if self.configured_classes is not None:
            return sop_class in self.configured_classes
        if not self.is_storage(sop_class, marked_storage=marked_storage):
            return False
        if any(g.refuses_class(sop_class) for g in self.gateways):
            return False
        # A private or new class: accepted only where every gateway said yes to it.
        if is_known_storage(sop_class):
            return True
        return bool(self.gateways) and not self.unknown_to(sop_class)

    def syntaxes_for(self, sop_class: str, *, marked_storage: bool = False) -> tuple[str, ...]:
        """Transfer syntaxes accepted for ``sop_class``, preferred first; () refuses the class.

        A syntax is accepted when every probed gateway accepted the pair
        (``sop_class``, syntax); a pair a gateway was not asked about counts
        as refused (:meth:`to_learn` says which to ask before deciding).
        """
        return _syntaxes_for(self, sop_class, marked_storage=marked_storage)

    def to_learn(
        self,
        gateway: GatewayAccepts,
        proposed: Iterable[Pair],
        *,
        marked: frozenset[str] = frozenset(),
    ) -> tuple[Pair, ...]:
        """The proposed pairs ``gateway`` must be asked about before the router answers.

        None when a configured transfer syntax list decides, for a class
        refused anyway (by configuration, by some gateway, or not storage),
        for a syntax the router cannot read, or for a pair already asked.
        """
        if self.configured_syntaxes is not None:
            return ()
        readable = set(SUPPORTED_TRANSFER_SYNTAXES)
        wanted: list[Pair] = []
        for pair in proposed:
            sop_class, syntax = pair
            if (
                pair in wanted
                or pair in gateway.pairs_asked
                or syntax not in readable
                or is_verification(sop_class)
                or not self.class_allowed(sop_class, marked_storage=sop_class in marked)
            ):
                continue
            wanted.append(pair)
        return tuple(wanted)


@functools.lru_cache(maxsize=4096)
def _syntaxes_for(policy: Policy, sop_class: str, *, marked_storage: bool) -> tuple[str, ...]:
    """:meth:`Policy.syntaxes_for`, cached: the policy of every association is
    rebuilt from the same answers, and a sender may propose 128 contexts."""
    if is_verification(sop_class):
        return SUPPORTED_TRANSFER_SYNTAXES
    if not policy.class_allowed(sop_class, marked_storage=marked_storage):
        return ()
    if policy.configured_syntaxes is not None:
        supported = set(SUPPORTED_TRANSFER_SYNTAXES)
        return tuple(ts for ts in policy.configured_syntaxes if ts in supported)
    if not policy.gateways:
        return SUPPORTED_TRANSFER_SYNTAXES
    common = [
        ts
        for ts in SUPPORTED_TRANSFER_SYNTAXES
        if all((sop_class, ts) in g.pairs for g in policy.gateways)
    ]
    return preference(common, policy.gateways[0].first_choice)


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
