"""Association negotiation on both sides, through pynetdicom's PDU codecs.

The router accepts Verification and the storage SOP classes and transfer
syntaxes its :class:`~gatewaypool_router.acceptance.Policy` allows (what
every gateway accepts, or configured lists; with no policy, every storage
SOP class in each transfer syntax whose data set it can read a
StudyInstanceUID from), choosing among a context's transfer syntaxes in
the policy's order of preference. It proposes to each gateway exactly the
contexts the sender got: same context IDs, same abstract syntaxes, same
single transfer syntax, with the sender's SOP Class Common Extended
Negotiation items. Keeping the IDs lets command and data PDVs pass through
unchanged.

Whether a caller may associate at all is :func:`admit`: one function of
the request, the configuration and what the connection and the process
know, with every rule in the order applied.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace

from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
    SOPClassCommonExtendedNegotiation,
)
from pynetdicom.presentation import PresentationContext, negotiate_as_acceptor

from gatewaypool import __version__
from gatewaypool_router.acceptance import (
    IMPLICIT_VR_LITTLE_ENDIAN,
    STORAGE_SERVICE_CLASS,
    VERIFICATION_SOP_CLASS,
    Policy,
)
from gatewaypool_router.config import RouterConfig

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
#: Presentation context results (PS3.8 9.3.3.2).
RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED = 0x03
RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04
IMPLEMENTATION_CLASS_UID = "2.25.270128384620245611785306214180733185433"
IMPLEMENTATION_VERSION = f"GATEWAYPOOL_{__version__.replace('.', '')}"[:16]

# A-ASSOCIATE-RJ fields (PS3.8 9.3.4).
RJ_PERMANENT = 0x01
RJ_TRANSIENT = 0x02
RJ_SOURCE_USER = 0x01
RJ_SOURCE_ACSE = 0x02
RJ_SOURCE_PRESENTATION = 0x03
RJ_USER_NO_REASON = 0x01
RJ_USER_APPLICATION_CONTEXT = 0x02
RJ_USER_CALLING_AE = 0x03
RJ_USER_CALLED_AE = 0x07
RJ_PRESENTATION_CONGESTION = 0x01
RJ_PRESENTATION_LOCAL_LIMIT = 0x02


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    """A presentation context as agreed: ID, abstract syntax, one transfer syntax."""

    context_id: int
    abstract_syntax: str
    transfer_syntax: str

    @property
    def is_verification(self) -> bool:
        return self.abstract_syntax == VERIFICATION_SOP_CLASS

    @property
    def transfer_syntaxes(self) -> tuple[str, ...]:
        return (self.transfer_syntax,)


@dataclass(frozen=True, slots=True)
class ProposedContext:
    """A context the router proposes with several transfer syntaxes (probes)."""

    context_id: int
    abstract_syntax: str
    transfer_syntaxes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class CommonExtended:
    """A SOP Class Common Extended Negotiation item (PS3.7 D.3.3.6)."""

    sop_class: str
    service_class: str
    related: tuple[str, ...] = ()

    def item(self) -> SOPClassCommonExtendedNegotiation:
        item = SOPClassCommonExtendedNegotiation()
        item.sop_class_uid = UID(self.sop_class)
        item.service_class_uid = UID(self.service_class)
        item.related_general_sop_class_identification = [UID(uid) for uid in self.related]
        return item


@dataclass(slots=True)
class AssociationRequest:
    """What the router needs from an A-ASSOCIATE-RQ."""

    calling_ae: str
    called_ae: str
    application_context: str
    primitive: A_ASSOCIATE
    max_pdu: int = 0
    roles: dict[UID, tuple[bool | None, bool | None]] = field(default_factory=dict)
    #: SOP Class Common Extended Negotiation items, by SOP class.
    extended: dict[str, CommonExtended] = field(default_factory=dict)

    @property
    def storage_marked(self) -> frozenset[str]:
        """SOP classes the sender named Storage Service Class classes."""
        marked = self.extended.items()
        return frozenset(uid for uid, i in marked if i.service_class == STORAGE_SERVICE_CLASS)


def parse_request(raw: bytes) -> AssociationRequest:
    """Decode an A-ASSOCIATE-RQ PDU (header included) with pynetdicom."""
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(raw)
    primitive = pdu.to_primitive()
    request = AssociationRequest(
        calling_ae=str(primitive.calling_ae_title).strip(),
        called_ae=str(primitive.called_ae_title).strip(),
        application_context=str(primitive.application_context_name or ""),
        primitive=primitive,
    )
    for item in primitive.user_information:
        if isinstance(item, MaximumLengthNotification):
            request.max_pdu = int(item.maximum_length_received or 0)
        elif isinstance(item, SCP_SCU_RoleSelectionNegotiation) and item.sop_class_uid:
            request.roles[UID(item.sop_class_uid)] = (item.scu_role, item.scp_role)
        elif (
            isinstance(item, SOPClassCommonExtendedNegotiation)
            and item.sop_class_uid
            and item.service_class_uid
        ):
            request.extended[str(item.sop_class_uid)] = CommonExtended(
                sop_class=str(item.sop_class_uid),
                service_class=str(item.service_class_uid),
                related=tuple(str(uid) for uid in item.related_general_sop_class_identification),
            )
    return request


@functools.lru_cache(maxsize=4096)
def _supported_context(
    abstract_syntax: str, transfer_syntaxes: tuple[str, ...]
) -> PresentationContext | None:
    """Our side of a context for ``abstract_syntax``, or None if we refuse it.

    Built once per SOP class and list: pynetdicom validates every UID it is
    given, and a sender proposing 128 contexts would otherwise cost tens of
    milliseconds per association. negotiate_as_acceptor only reads it, and
    picks the first of ``transfer_syntaxes`` the sender proposed.
    """
    if not transfer_syntaxes:
        return None
    ours = PresentationContext()
    ours.abstract_syntax = UID(abstract_syntax)
    ours.transfer_syntax = [UID(ts) for ts in transfer_syntaxes]
    # The sender may be the SCU (it stores, we answer); it may never be the
    # SCP: the router does not send instances back. Setting both lets
    # pynetdicom answer SCP/SCU Role Selection items when a sender proposes them.
    ours.scu_role = True
    ours.scp_role = False
    return ours


def _user_information(
    max_pdu: int,
) -> list[
    MaximumLengthNotification
    | ImplementationClassUIDNotification
    | ImplementationVersionNameNotification
]:
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = max_pdu
    class_uid = ImplementationClassUIDNotification()
    class_uid.implementation_class_uid = UID(IMPLEMENTATION_CLASS_UID)
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = IMPLEMENTATION_VERSION
    return [max_length, class_uid, version]


def accept(
    request: AssociationRequest, *, max_pdu: int, policy: Policy | None = None
) -> tuple[bytes, list[AcceptedContext]]:
    """Negotiate the presentation contexts and encode the A-ASSOCIATE-AC.

    A SOP class the policy refuses gets result 3 (abstract syntax not
    supported), a context none of whose transfer syntaxes it accepts gets 4.
    Returns the PDU and the contexts accepted (possibly none: the sender
    then learns from the AC that nothing it proposed is supported).
    """
    policy = policy or Policy()
    marked = request.storage_marked
    proposed: list[PresentationContext] = list(
        request.primitive.presentation_context_definition_list
    )
    # Every proposed context carries an abstract syntax and at least one
    # transfer syntax (PS3.8 9.3.2.2), and pynetdicom's negotiation uses both
    # unchecked: a context without them is refused here, not left to crash it.
    incomplete = [cx for cx in proposed if not cx.abstract_syntax or not cx.transfer_syntax]
    proposed = [cx for cx in proposed if cx.abstract_syntax and cx.transfer_syntax]
    supported: list[PresentationContext] = []
    seen: set[str] = set()
    for context in proposed:
        syntax = str(context.abstract_syntax)
        if syntax in seen:
            continue
        seen.add(syntax)
        ours = _supported_context(
            syntax, policy.syntaxes_for(syntax, marked_storage=syntax in marked)
        )
        if ours is not None:
            supported.append(ours)
    results, roles = negotiate_as_acceptor(proposed, supported, request.roles or None)
    for context in incomplete:
        refused = PresentationContext()
        refused.context_id = context.context_id
        refused.transfer_syntax = [UID(IMPLICIT_VR_LITTLE_ENDIAN)]  # not significant when refused
        refused.result = (
            RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED
            if context.abstract_syntax
            else RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED
        )
        results.append(refused)
    results.sort(key=lambda cx: int(cx.context_id or 0))

    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID(APPLICATION_CONTEXT)
    primitive.calling_ae_title = request.primitive.calling_ae_title
    primitive.called_ae_title = request.primitive.called_ae_title
    primitive.result = 0x00
    primitive.result_source = 0x01
    primitive.presentation_context_definition_results_list = results
    primitive.user_information = [*_user_information(max_pdu), *roles]
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(primitive)
    accepted = [
        AcceptedContext(
            int(cx.context_id or 0), str(cx.abstract_syntax), str(cx.transfer_syntax[0])
        )
        for cx in results
        if cx.result == 0x00
    ]
    return pdu.encode(), accepted


def reject(*, result: int, source: int, reason: int) -> bytes:
    """Encode an A-ASSOCIATE-RJ PDU."""
    primitive = A_ASSOCIATE()
    primitive.result = result
    primitive.result_source = source
    primitive.diagnostic = reason
    pdu = A_ASSOCIATE_RJ()
    pdu.from_primitive(primitive)
    return pdu.encode()


@dataclass(frozen=True, slots=True)
class Refusal:
    """An association the router refuses: the A-ASSOCIATE-RJ, and why.

    ``reason`` is the label of ``gatewaypool_router_refusals_total`` and the
    ``reason`` of the ``association.rejected`` log line; ``detail`` says more
    where one reason has several causes.
    """

    reason: str
    result: int
    source: int
    diagnostic: int
    detail: str = ""

    def pdu(self) -> bytes:
        """The A-ASSOCIATE-RJ answering the request."""
        return reject(result=self.result, source=self.source, reason=self.diagnostic)


CALLED_AE_BLANK = Refusal("called_ae_blank", RJ_PERMANENT, RJ_SOURCE_USER, RJ_USER_CALLED_AE)
CALLING_AE_BLANK = Refusal("calling_ae_blank", RJ_PERMANENT, RJ_SOURCE_USER, RJ_USER_CALLING_AE)
APPLICATION_CONTEXT_UNSUPPORTED = Refusal(
    "application_context", RJ_PERMANENT, RJ_SOURCE_USER, RJ_USER_APPLICATION_CONTEXT
)
CALLER_SUBJECT_MISMATCH = Refusal(
    "caller_subject_mismatch", RJ_PERMANENT, RJ_SOURCE_USER, RJ_USER_CALLING_AE
)
CALLING_AE_NOT_ALLOWED = Refusal(
    "calling_ae_not_allowed", RJ_PERMANENT, RJ_SOURCE_USER, RJ_USER_CALLING_AE
)
CALLED_AE_MISMATCH = Refusal("called_ae_mismatch", RJ_PERMANENT, RJ_SOURCE_USER, RJ_USER_CALLED_AE)
TOO_MANY_ASSOCIATIONS = Refusal(
    "too_many_associations", RJ_TRANSIENT, RJ_SOURCE_PRESENTATION, RJ_PRESENTATION_LOCAL_LIMIT
)


def unavailable(reason: str) -> Refusal:
    """The transient refusal while no gateway can take instances (``no_map``, ...)."""
    return Refusal(reason, RJ_TRANSIENT, RJ_SOURCE_PRESENTATION, RJ_PRESENTATION_CONGESTION)


def blank_ae_title(raw: bytes) -> Refusal | None:
    """The refusal of an A-ASSOCIATE-RQ whose called or calling AE title is all spaces.

    PS3.5 forbids an AE title of spaces only, and pynetdicom's decoder
    refuses one with an error; it is a request all the same, answered with
    an A-ASSOCIATE-RJ ("not recognized"), not an abort. So this looks at
    the raw PDU, before :func:`parse_request`.
    """
    if len(raw) < 42:
        return None
    if not raw[10:26].strip(b" \0"):
        return CALLED_AE_BLANK
    if not raw[26:42].strip(b" \0"):
        return CALLING_AE_BLANK
    return None


def admit(
    request: AssociationRequest,
    config: RouterConfig,
    *,
    secure: bool,
    client_subject: str | None,
    over_limit: bool,
    gateways_unavailable: Callable[[], str | None] | None = None,
) -> Refusal | None:
    """Why the router refuses `request`, or None to accept it.

    The rules, first match wins:

    1. an application context other than DICOM's;
    2. a calling AE title bound by ``--caller-subject``: refused unless the
       caller's verified certificate has a bound subject (so never on the
       plain port); an unbound one, with ``--allow-calling-aet``, refused
       unless listed;
    3. with ``--require-called-aet``, a called AE title other than ours;
    4. `over_limit`: ``--max-associations`` are being served already;
    5. `gateways_unavailable`, asked last because it may wait for a gateway's probe:
       why no gateway can take instances now (no map, none reachable).

    Parameters
    ----------
    secure
        The connection came in on the TLS port (its handshake is done).
    client_subject
        The subject (RFC 4514) of the caller's verified certificate, if any.
    over_limit
        Admitting it would exceed ``--max-associations``.
    gateways_unavailable
        Returns a reason (``no_map``, ``no_gateway_reachable``) or None;
        without it (no gateway catalog), gateways are not asked about.
    """
    if request.application_context != APPLICATION_CONTEXT:
        return APPLICATION_CONTEXT_UNSUPPORTED
    subjects = config.subjects_for(request.calling_ae)
    if subjects is not None:
        if client_subject not in subjects:
            if not secure:
                why = "AE title bound to a certificate subject, called on the plain port"
            elif client_subject is None:
                why = "AE title bound to a certificate subject, no client certificate"
            else:
                why = "client certificate subject is not the one bound to this AE title"
            return replace(CALLER_SUBJECT_MISMATCH, detail=why)
    elif config.allowed_calling_aes and request.calling_ae not in config.allowed_calling_aes:
        return CALLING_AE_NOT_ALLOWED
    if config.require_called_ae and request.called_ae != config.ae_title:
        return CALLED_AE_MISMATCH
    if over_limit:
        return TOO_MANY_ASSOCIATIONS
    if gateways_unavailable is not None:
        reason = gateways_unavailable()
        if reason is not None:
            return unavailable(reason)
    return None


def build_request(
    *,
    calling_ae: str,
    called_ae: str,
    contexts: Iterable[AcceptedContext | ProposedContext],
    max_pdu: int,
    extended: Iterable[CommonExtended] = (),
) -> bytes:
    """Encode the A-ASSOCIATE-RQ proposing the sender's contexts to a gateway.

    Cached: a modality reconnects with the same proposal over and over, and
    pynetdicom validates every UID of every context each time it encodes.
    """
    return _build_request(calling_ae, called_ae, tuple(contexts), max_pdu, tuple(extended))


@functools.lru_cache(maxsize=256)
def _build_request(
    calling_ae: str,
    called_ae: str,
    contexts: tuple[AcceptedContext | ProposedContext, ...],
    max_pdu: int,
    extended: tuple[CommonExtended, ...],
) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID(APPLICATION_CONTEXT)
    primitive.calling_ae_title = calling_ae
    primitive.called_ae_title = called_ae
    definitions: list[PresentationContext] = []
    for accepted in contexts:
        context = PresentationContext()
        context.context_id = accepted.context_id
        context.abstract_syntax = UID(accepted.abstract_syntax)
        context.transfer_syntax = [UID(ts) for ts in accepted.transfer_syntaxes]
        definitions.append(context)
    primitive.presentation_context_definition_list = definitions
    primitive.user_information = [*_user_information(max_pdu), *(e.item() for e in extended)]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return pdu.encode()


@dataclass(frozen=True, slots=True)
class GatewayAcceptance:
    """What a gateway agreed to: its maximum PDU, the usable context IDs and their syntaxes."""

    max_pdu: int
    context_ids: frozenset[int]
    #: Transfer syntax the gateway accepted, by context ID.
    syntaxes: dict[int, str] = field(default_factory=dict)


def parse_acceptance(
    raw: bytes, proposed: Sequence[AcceptedContext | ProposedContext]
) -> GatewayAcceptance:
    """Decode a gateway's A-ASSOCIATE-AC.

    A context counts as usable only if the gateway accepted it with a
    transfer syntax proposed (for the sender's contexts, the very one: anything
    else would change the bytes). Cached like :func:`build_request`: a
    gateway answers the same proposal alike.
    """
    return _parse_acceptance(raw, tuple(proposed))


@functools.lru_cache(maxsize=256)
def _parse_acceptance(
    raw: bytes, proposed: tuple[AcceptedContext | ProposedContext, ...]
) -> GatewayAcceptance:
    pdu = A_ASSOCIATE_AC()
    pdu.decode(raw)
    primitive = pdu.to_primitive()
    wanted = {cx.context_id: cx.transfer_syntaxes for cx in proposed}
    usable = set()
    syntaxes: dict[int, str] = {}
    for context in primitive.presentation_context_definition_results_list:
        cid = int(context.context_id or 0)
        if (
            context.result == 0x00
            and context.transfer_syntax
            and str(context.transfer_syntax[0]) in wanted.get(cid, ())
        ):
            usable.add(cid)
            syntaxes[cid] = str(context.transfer_syntax[0])
    max_pdu = 0
    for item in primitive.user_information:
        if isinstance(item, MaximumLengthNotification):
            max_pdu = int(item.maximum_length_received or 0)
    return GatewayAcceptance(max_pdu=max_pdu, context_ids=frozenset(usable), syntaxes=syntaxes)


@dataclass(frozen=True, slots=True)
class Rejection:
    """A gateway's A-ASSOCIATE-RJ (PS3.8 9.3.4)."""

    result: int
    source: int
    reason: int

    @property
    def permanent(self) -> bool:
        return self.result == RJ_PERMANENT

    @property
    def calling_ae_refused(self) -> bool:
        return self.source == RJ_SOURCE_USER and self.reason == RJ_USER_CALLING_AE

    def __str__(self) -> str:
        return f"result={self.result} source={self.source} reason={self.reason}"


def parse_rejection(raw: bytes) -> Rejection:
    """Decode a gateway's A-ASSOCIATE-RJ."""
    pdu = A_ASSOCIATE_RJ()
    pdu.decode(raw)
    return Rejection(int(pdu.result or 0), int(pdu.source or 0), int(pdu.reason_diagnostic or 0))


def describe_rejection(raw: bytes) -> str:
    """A readable reason from a gateway's A-ASSOCIATE-RJ."""
    return str(parse_rejection(raw))
