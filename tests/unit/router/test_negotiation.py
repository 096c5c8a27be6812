"""Association negotiation, both sides, against pynetdicom's PDU codecs.

pynetdicom plays the sender (it encodes the A-ASSOCIATE-RQ and decodes our
AC) and the gateway (it encodes the AC we parse), so a field we put in the
wrong place would fail to decode or decode to something else.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
)
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    ImplementationVersionNameNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, build_context

from gatewaypool.bucketmap import Gateway
from gatewaypool_router import negotiation
from gatewaypool_router.config import CallerSubject, RouterConfig
from gatewaypool_router.negotiation import AcceptedContext
from gatewaypool_router.scanner import SUPPORTED_TRANSFER_SYNTAXES
from support import rawdicom
from support.rawdicom import context, max_length

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
VERIFICATION = "1.2.840.10008.1.1"
PATIENT_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.1.1"

ACCEPTANCE = 0x00
ABSTRACT_SYNTAX_NOT_SUPPORTED = 0x03
TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04


def role(uid: str, *, scu: bool, scp: bool) -> SCP_SCU_RoleSelectionNegotiation:
    item = SCP_SCU_RoleSelectionNegotiation()
    item.sop_class_uid = UID(uid)
    item.scu_role = scu
    item.scp_role = scp
    return item


def sender_contexts() -> list[PresentationContext]:
    return [
        context(1, CT_IMAGE_STORAGE, [JPEGBaseline8Bit, ExplicitVRLittleEndian]),
        context(3, VERIFICATION),  # pynetdicom's default transfer syntaxes
        context(5, PATIENT_ROOT_FIND),  # a query: not ours to serve
        context(7, MR_IMAGE_STORAGE, ["1.2.3.4"]),  # storage, but no TS we can read
        context(9, CT_IMAGE_STORAGE, [JPEG2000Lossless]),  # same class again, other TS
    ]


def association_rq(
    *,
    contexts: list[PresentationContext] | None = None,
    max_pdu: int = 32768,
    extra: Sequence[object] = (),
    calling: str = "MODALITY",
    called: str = "GATEWAYPOOL",
) -> bytes:
    return rawdicom.association_rq(
        contexts=contexts if contexts is not None else sender_contexts(),
        max_pdu=max_pdu,
        extra=extra,
        calling=calling,
        called=called,
    )


def decode_ac(raw: bytes) -> A_ASSOCIATE:
    pdu = A_ASSOCIATE_AC()
    pdu.decode(raw)
    return pdu.to_primitive()


def results_by_id(primitive: A_ASSOCIATE) -> dict[int, PresentationContext]:
    return {int(cx.context_id): cx for cx in primitive.presentation_context_definition_results_list}


def preferred(proposed: Sequence[str]) -> str:
    """The transfer syntax the acceptor's order picks among `proposed`."""
    return next(ts for ts in SUPPORTED_TRANSFER_SYNTAXES if ts in proposed)


# --- the sender's A-ASSOCIATE-RQ ---------------------------------------------


def test_parse_request_fields() -> None:
    request = negotiation.parse_request(
        association_rq(max_pdu=32768, calling="CT01 ", called="ROUTER")
    )
    assert request.calling_ae == "CT01"
    assert request.called_ae == "ROUTER"
    assert request.application_context == negotiation.APPLICATION_CONTEXT
    assert request.max_pdu == 32768
    assert request.roles == {}
    proposed = request.primitive.presentation_context_definition_list
    assert [int(cx.context_id) for cx in proposed] == [1, 3, 5, 7, 9]


def test_parse_request_unlimited_pdu_and_roles() -> None:
    raw = association_rq(
        max_pdu=0,
        extra=[
            role(CT_IMAGE_STORAGE, scu=True, scp=False),
            role(MR_IMAGE_STORAGE, scu=True, scp=True),
        ],
    )
    request = negotiation.parse_request(raw)
    assert request.max_pdu == 0
    assert request.roles == {
        UID(CT_IMAGE_STORAGE): (True, False),
        UID(MR_IMAGE_STORAGE): (True, True),
    }


# --- accept ------------------------------------------------------------------


def test_accept_results_per_context() -> None:
    request = negotiation.parse_request(association_rq())
    raw, accepted = negotiation.accept(request, max_pdu=65536)
    results = results_by_id(decode_ac(raw))
    assert sorted(results) == [1, 3, 5, 7, 9]
    assert {cid: cx.result for cid, cx in results.items()} == {
        1: ACCEPTANCE,
        3: ACCEPTANCE,
        5: ABSTRACT_SYNTAX_NOT_SUPPORTED,
        7: TRANSFER_SYNTAXES_NOT_SUPPORTED,
        9: ACCEPTANCE,
    }
    chosen = {cid: str(cx.transfer_syntax[0]) for cid, cx in results.items() if cx.result == 0}
    assert chosen == {
        1: preferred([JPEGBaseline8Bit, ExplicitVRLittleEndian]),
        3: preferred([ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian]),
        9: JPEG2000Lossless,
    }
    assert accepted == [
        AcceptedContext(1, CT_IMAGE_STORAGE, chosen[1]),
        AcceptedContext(3, VERIFICATION, chosen[3]),
        AcceptedContext(9, CT_IMAGE_STORAGE, JPEG2000Lossless),
    ]
    assert [cx.is_verification for cx in accepted] == [False, True, False]


@pytest.mark.parametrize(
    "proposed",
    [
        [JPEGBaseline8Bit, ExplicitVRLittleEndian],
        [ExplicitVRLittleEndian, JPEGBaseline8Bit],
        [ImplicitVRLittleEndian, ExplicitVRLittleEndian],
        [JPEGBaseline8Bit, ImplicitVRLittleEndian],
        [JPEG2000Lossless, JPEGBaseline8Bit],
    ],
)
def test_accept_chooses_by_the_acceptors_order(proposed: list[str]) -> None:
    request = negotiation.parse_request(
        association_rq(contexts=[context(1, CT_IMAGE_STORAGE, proposed)])
    )
    raw, accepted = negotiation.accept(request, max_pdu=16384)
    expected = preferred(proposed)
    assert str(results_by_id(decode_ac(raw))[1].transfer_syntax[0]) == expected
    assert accepted == [AcceptedContext(1, CT_IMAGE_STORAGE, expected)]
    # The order of the proposal does not matter, only ours.
    reversed_request = negotiation.parse_request(
        association_rq(contexts=[context(1, CT_IMAGE_STORAGE, proposed[::-1])])
    )
    assert negotiation.accept(reversed_request, max_pdu=16384)[1] == accepted


def test_accept_user_information() -> None:
    request = negotiation.parse_request(association_rq(max_pdu=16384))
    raw, _ = negotiation.accept(request, max_pdu=131072)
    primitive = decode_ac(raw)
    items = {type(item): item for item in primitive.user_information}
    assert items[MaximumLengthNotification].maximum_length_received == 131072
    assert items[ImplementationClassUIDNotification].implementation_class_uid == (
        negotiation.IMPLEMENTATION_CLASS_UID
    )
    version = items[ImplementationVersionNameNotification].implementation_version_name
    assert version == negotiation.IMPLEMENTATION_VERSION
    assert 1 <= len(negotiation.IMPLEMENTATION_VERSION) <= 16
    assert str(primitive.calling_ae_title).strip() == "MODALITY"
    assert str(primitive.called_ae_title).strip() == "GATEWAYPOOL"
    assert primitive.application_context_name == negotiation.APPLICATION_CONTEXT
    assert primitive.result == 0x00


def test_accept_nothing_supported_still_answers_an_ac() -> None:
    contexts = [context(1, PATIENT_ROOT_FIND), context(3, "1.2.3.4.5.6")]
    request = negotiation.parse_request(association_rq(contexts=contexts))
    raw, accepted = negotiation.accept(request, max_pdu=16384)
    assert accepted == []
    results = results_by_id(decode_ac(raw))
    assert {cid: cx.result for cid, cx in results.items()} == {
        1: ABSTRACT_SYNTAX_NOT_SUPPORTED,
        3: ABSTRACT_SYNTAX_NOT_SUPPORTED,
    }


def test_a_context_without_transfer_syntax_is_refused_not_a_crash() -> None:
    # Found by the PDU fuzzer: pynetdicom's negotiation indexed the missing syntax.
    bare = context(5, MR_IMAGE_STORAGE, [ExplicitVRLittleEndian])
    bare.transfer_syntax = []
    contexts = [context(1, CT_IMAGE_STORAGE, [ExplicitVRLittleEndian]), bare]
    request = negotiation.parse_request(association_rq(contexts=contexts))
    raw, accepted = negotiation.accept(request, max_pdu=16384)
    assert [cx.context_id for cx in accepted] == [1]
    results = results_by_id(decode_ac(raw))
    assert {cid: cx.result for cid, cx in results.items()} == {
        1: ACCEPTANCE,
        5: TRANSFER_SYNTAXES_NOT_SUPPORTED,
    }


def test_a_context_without_abstract_syntax_is_refused_not_a_crash() -> None:
    # Found by the PDU fuzzer: the abstract syntax sub-item's type turned into 0x40.
    contexts = [
        context(1, CT_IMAGE_STORAGE, [ExplicitVRLittleEndian]),
        context(5, MR_IMAGE_STORAGE, [ExplicitVRLittleEndian]),
    ]
    item = struct.pack(">BxH", 0x30, len(MR_IMAGE_STORAGE)) + MR_IMAGE_STORAGE.encode()
    raw = association_rq(contexts=contexts)
    assert raw.count(item) == 1
    request = negotiation.parse_request(raw.replace(item, b"\x40" + item[1:]))
    raw_ac, accepted = negotiation.accept(request, max_pdu=16384)
    assert [cx.context_id for cx in accepted] == [1]
    results = results_by_id(decode_ac(raw_ac))
    assert results[5].result == ABSTRACT_SYNTAX_NOT_SUPPORTED


def test_accept_with_roles_proposed_still_accepts() -> None:
    extra = [role(CT_IMAGE_STORAGE, scu=True, scp=False), role(VERIFICATION, scu=True, scp=True)]
    request = negotiation.parse_request(association_rq(extra=extra))
    raw, accepted = negotiation.accept(request, max_pdu=16384)
    assert [cx.context_id for cx in accepted] == [1, 3, 9]
    assert decode_ac(raw).result == 0x00


def test_accept_echoes_role_selection_items() -> None:
    extra = [role(CT_IMAGE_STORAGE, scu=True, scp=False), role(VERIFICATION, scu=True, scp=True)]
    request = negotiation.parse_request(association_rq(extra=extra))
    raw, _ = negotiation.accept(request, max_pdu=16384)
    replies = {
        str(item.sop_class_uid): (item.scu_role, item.scp_role)
        for item in decode_ac(raw).user_information
        if isinstance(item, SCP_SCU_RoleSelectionNegotiation)
    }
    # The sender may be SCU (accepted); the router is never the SCU of a storage
    # class, so a proposed SCP role of the sender is turned down.
    assert replies == {CT_IMAGE_STORAGE: (True, False), VERIFICATION: (True, False)}


def test_accept_no_role_items_unless_proposed() -> None:
    request = negotiation.parse_request(association_rq())
    raw, _ = negotiation.accept(request, max_pdu=16384)
    assert not any(
        isinstance(item, SCP_SCU_RoleSelectionNegotiation)
        for item in decode_ac(raw).user_information
    )


# --- reject ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "source", "reason"),
    [
        (negotiation.RJ_PERMANENT, negotiation.RJ_SOURCE_USER, negotiation.RJ_USER_CALLING_AE),
        (negotiation.RJ_PERMANENT, negotiation.RJ_SOURCE_USER, negotiation.RJ_USER_CALLED_AE),
        (negotiation.RJ_PERMANENT, negotiation.RJ_SOURCE_USER, negotiation.RJ_USER_NO_REASON),
        (
            negotiation.RJ_PERMANENT,
            negotiation.RJ_SOURCE_USER,
            negotiation.RJ_USER_APPLICATION_CONTEXT,
        ),
        (
            negotiation.RJ_TRANSIENT,
            negotiation.RJ_SOURCE_PRESENTATION,
            negotiation.RJ_PRESENTATION_LOCAL_LIMIT,
        ),
    ],
)
def test_reject_round_trip(result: int, source: int, reason: int) -> None:
    raw = negotiation.reject(result=result, source=source, reason=reason)
    assert raw[0] == 0x03
    assert len(raw) == 10
    pdu = A_ASSOCIATE_RJ()
    pdu.decode(raw)
    assert (pdu.result, pdu.source, pdu.reason_diagnostic) == (result, source, reason)
    assert negotiation.describe_rejection(raw) == f"result={result} source={source} reason={reason}"


# --- admit: whether a caller may associate at all ---------------------------

# A-ASSOCIATE-RJ fields as PS3.8 9.3.4 numbers them, written out here so that
# the table checks the router's constants rather than restating them.
PERMANENT, TRANSIENT = 1, 2
BY_USER, BY_PRESENTATION = 1, 3
NO_CONTEXT, CALLING_AE, CALLED_AE = 2, 3, 7
CONGESTION, LOCAL_LIMIT = 1, 2
#: ``gateways`` of a case without a gateway catalog: nothing to ask.
NO_CATALOG = "no catalog"
CT01_SUBJECT = "CN=ct01,O=Radiology"


@dataclass(frozen=True)
class Admission:
    """One row: what the caller sent and what the router knows, and the answer."""

    case: str
    expected: tuple[str, int, int, int] | None
    calling: str = "CT01"
    called: str = "GATEWAYPOOL"
    application_context: str = negotiation.APPLICATION_CONTEXT
    config: dict[str, Any] = field(default_factory=dict)
    secure: bool = False
    subject: str | None = None
    over_limit: bool = False
    #: What the gateway catalog answers (a refusal reason or None), or NO_CATALOG.
    gateways: str | None = None
    #: Whether the catalog must have been asked (it may wait for a probe).
    asked: bool = False
    #: Words the refusal's detail must contain.
    detail: str = ""


ALLOW_CT02 = {"allowed_calling_aes": frozenset({"CT02"})}
REQUIRE_CALLED = {"require_called_ae": True}
BIND_CT01 = {
    "caller_subjects": (CallerSubject("CT01", CT01_SUBJECT),),
    "tls_cert": Path("router.pem"),
    "tls_key": Path("router.key"),
    "tls_client_ca": Path("ca.pem"),
}
BIND_CT02 = {**BIND_CT01, "caller_subjects": (CallerSubject("CT02", CT01_SUBJECT),)}

# Refusals as (reason, result, source, diagnostic).
WRONG_CONTEXT = ("application_context", PERMANENT, BY_USER, NO_CONTEXT)
CALLING_NOT_ALLOWED = ("calling_ae_not_allowed", PERMANENT, BY_USER, CALLING_AE)
CALLED_MISMATCH = ("called_ae_mismatch", PERMANENT, BY_USER, CALLED_AE)
OVER_LIMIT = ("too_many_associations", TRANSIENT, BY_PRESENTATION, LOCAL_LIMIT)
SUBJECT_MISMATCH = ("caller_subject_mismatch", PERMANENT, BY_USER, CALLING_AE)

ADMISSIONS = [
    Admission("nothing configured", None, asked=True),
    Admission("no catalog: gateways not asked", None, gateways=NO_CATALOG),
    Admission("another application context", WRONG_CONTEXT, application_context="1.2.3.4"),
    Admission("calling AE listed", None, calling="CT02", config=ALLOW_CT02, asked=True),
    Admission("calling AE not listed", CALLING_NOT_ALLOWED, config=ALLOW_CT02),
    Admission("another called AE, not required", None, called="OTHER", asked=True),
    Admission("our called AE, required", None, config=REQUIRE_CALLED, asked=True),
    Admission(
        "another called AE, required",
        CALLED_MISMATCH,
        called="OTHER",
        config=REQUIRE_CALLED,
    ),
    Admission("over the limit", OVER_LIMIT, over_limit=True),
    Admission(
        "no map",
        ("no_map", TRANSIENT, BY_PRESENTATION, CONGESTION),
        gateways="no_map",
        asked=True,
    ),
    Admission(
        "no gateway reachable",
        ("no_gateway_reachable", TRANSIENT, BY_PRESENTATION, CONGESTION),
        gateways="no_gateway_reachable",
        asked=True,
    ),
    Admission(
        "bound AE on the plain port",
        SUBJECT_MISMATCH,
        config=BIND_CT01,
        detail="plain port",
    ),
    Admission(
        "bound AE without a client certificate",
        SUBJECT_MISMATCH,
        config=BIND_CT01,
        secure=True,
        detail="no client certificate",
    ),
    Admission(
        "bound AE with another subject",
        SUBJECT_MISMATCH,
        config=BIND_CT01,
        secure=True,
        subject="CN=ct02,O=Radiology",
        detail="not the one bound",
    ),
    Admission(
        "bound AE with its subject",
        None,
        config=BIND_CT01,
        secure=True,
        subject=CT01_SUBJECT,
        asked=True,
    ),
    Admission(
        "a bound AE needs no place in the allowed list",
        None,
        config={**BIND_CT01, **ALLOW_CT02},
        secure=True,
        subject=CT01_SUBJECT,
        asked=True,
    ),
    Admission(
        "an unbound AE still needs one",
        CALLING_NOT_ALLOWED,
        config={**BIND_CT02, **ALLOW_CT02},
        secure=True,
        subject=CT01_SUBJECT,
    ),
    Admission(
        "first rule first: application context before the calling AE",
        WRONG_CONTEXT,
        application_context="1.2.3.4",
        config=ALLOW_CT02,
    ),
    Admission(
        "the calling AE before the called AE",
        CALLING_NOT_ALLOWED,
        called="OTHER",
        config={**ALLOW_CT02, **REQUIRE_CALLED},
    ),
    Admission(
        "the called AE before the limit",
        CALLED_MISMATCH,
        called="OTHER",
        config=REQUIRE_CALLED,
        over_limit=True,
    ),
    Admission("the limit before the gateways", OVER_LIMIT, over_limit=True, gateways="no_map"),
]


@pytest.mark.parametrize("row", ADMISSIONS, ids=[row.case for row in ADMISSIONS])
def test_admit(row: Admission) -> None:
    gateway = Gateway(name="gw-0", host="127.0.0.1", port=11112, ae_title="GW")
    config = RouterConfig(gateways=(gateway,), **row.config)
    request = negotiation.parse_request(
        negotiation.build_request(
            calling_ae=row.calling,
            called_ae=row.called,
            contexts=[AcceptedContext(1, CT_IMAGE_STORAGE, ExplicitVRLittleEndian)],
            max_pdu=16384,
        )
    )
    request = dataclasses.replace(request, application_context=row.application_context)
    asked: list[bool] = []

    def gateways_unavailable() -> str | None:
        asked.append(True)
        assert row.gateways != NO_CATALOG
        return row.gateways

    refusal = negotiation.admit(
        request,
        config,
        secure=row.secure,
        client_subject=row.subject,
        over_limit=row.over_limit,
        gateways_unavailable=None if row.gateways == NO_CATALOG else gateways_unavailable,
    )

    assert bool(asked) == row.asked
    if row.expected is None:
        assert refusal is None
        return
    assert refusal is not None
    assert (refusal.reason, refusal.result, refusal.source, refusal.diagnostic) == row.expected
    assert row.detail in refusal.detail
    rj = A_ASSOCIATE_RJ()
    rj.decode(refusal.pdu())
    assert (rj.result, rj.source, rj.reason_diagnostic) == row.expected[1:]


def _with_titles(called: bytes, calling: bytes) -> bytes:
    raw = bytearray(
        negotiation.build_request(
            calling_ae="CT01",
            called_ae="GATEWAYPOOL",
            contexts=[AcceptedContext(1, CT_IMAGE_STORAGE, ExplicitVRLittleEndian)],
            max_pdu=16384,
        )
    )
    raw[10:26] = called.ljust(16)
    raw[26:42] = calling.ljust(16)
    return bytes(raw)


@pytest.mark.parametrize(
    ("called", "calling", "expected"),
    [
        (b"GATEWAYPOOL", b"CT01", None),
        (b"", b"CT01", ("called_ae_blank", PERMANENT, BY_USER, CALLED_AE)),
        (b"GATEWAYPOOL", b"", ("calling_ae_blank", PERMANENT, BY_USER, CALLING_AE)),
        (b"", b"", ("called_ae_blank", PERMANENT, BY_USER, CALLED_AE)),
    ],
)
def test_a_blank_ae_title_is_refused_before_decoding(
    called: bytes, calling: bytes, expected: tuple[str, int, int, int] | None
) -> None:
    refusal = negotiation.blank_ae_title(_with_titles(called, calling))
    if expected is None:
        assert refusal is None
        assert negotiation.blank_ae_title(b"\x01\x00") is None  # too short to say
        return
    assert refusal is not None
    assert (refusal.reason, refusal.result, refusal.source, refusal.diagnostic) == expected


# --- the router's request to a gateway ---------------------------------------


def test_build_request_round_trip() -> None:
    contexts = [
        AcceptedContext(1, CT_IMAGE_STORAGE, JPEGBaseline8Bit),
        AcceptedContext(3, VERIFICATION, ExplicitVRLittleEndian),
        AcceptedContext(9, CT_IMAGE_STORAGE, JPEG2000Lossless),
        AcceptedContext(255, MR_IMAGE_STORAGE, ImplicitVRLittleEndian),
    ]
    raw = negotiation.build_request(
        calling_ae="GATEWAYPOOL", called_ae="GW-0", contexts=contexts, max_pdu=262144
    )
    pdu = A_ASSOCIATE_RQ()
    pdu.decode(raw)
    primitive = pdu.to_primitive()
    assert str(primitive.calling_ae_title).strip() == "GATEWAYPOOL"
    assert str(primitive.called_ae_title).strip() == "GW-0"
    assert primitive.application_context_name == negotiation.APPLICATION_CONTEXT
    proposed = [
        (int(cx.context_id), str(cx.abstract_syntax), [str(ts) for ts in cx.transfer_syntax])
        for cx in primitive.presentation_context_definition_list
    ]
    assert proposed == [(c.context_id, c.abstract_syntax, [c.transfer_syntax]) for c in contexts]
    items = {type(item): item for item in primitive.user_information}
    assert items[MaximumLengthNotification].maximum_length_received == 262144
    assert items[ImplementationClassUIDNotification].implementation_class_uid == (
        negotiation.IMPLEMENTATION_CLASS_UID
    )
    # The router's own request is what its own acceptor side would parse.
    request = negotiation.parse_request(raw)
    assert (request.calling_ae, request.called_ae, request.max_pdu) == (
        "GATEWAYPOOL",
        "GW-0",
        262144,
    )


# --- the gateway's A-ASSOCIATE-AC --------------------------------------------


def result_context(
    context_id: int, abstract: str, transfer: str, result: int
) -> PresentationContext:
    cx = PresentationContext()
    cx.context_id = context_id
    cx.abstract_syntax = UID(abstract)
    cx.transfer_syntax = [UID(transfer)]
    cx.result = result
    return cx


def gateway_ac(results: list[PresentationContext], *, max_pdu: int) -> bytes:
    primitive = A_ASSOCIATE()
    primitive.application_context_name = UID(negotiation.APPLICATION_CONTEXT)
    primitive.calling_ae_title = "GATEWAYPOOL"
    primitive.called_ae_title = "GW-0"
    primitive.result = 0x00
    primitive.result_source = 0x01
    primitive.presentation_context_definition_results_list = results
    primitive.user_information = [max_length(max_pdu)]
    pdu = A_ASSOCIATE_AC()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def test_parse_acceptance_keeps_only_contexts_accepted_as_proposed() -> None:
    proposed = [
        AcceptedContext(1, CT_IMAGE_STORAGE, JPEGBaseline8Bit),
        AcceptedContext(3, CT_IMAGE_STORAGE, ExplicitVRLittleEndian),
        AcceptedContext(5, MR_IMAGE_STORAGE, ExplicitVRLittleEndian),
        AcceptedContext(7, VERIFICATION, ImplicitVRLittleEndian),
    ]
    raw = gateway_ac(
        [
            result_context(1, CT_IMAGE_STORAGE, JPEGBaseline8Bit, 0x00),  # as proposed
            result_context(3, CT_IMAGE_STORAGE, ImplicitVRLittleEndian, 0x00),  # other TS
            result_context(5, MR_IMAGE_STORAGE, ExplicitVRLittleEndian, 0x03),  # rejected
            result_context(7, VERIFICATION, ImplicitVRLittleEndian, 0x00),  # as proposed
            result_context(11, CT_IMAGE_STORAGE, JPEGBaseline8Bit, 0x00),  # never proposed
        ],
        max_pdu=16384,
    )
    acceptance = negotiation.parse_acceptance(raw, proposed)
    assert acceptance.context_ids == frozenset({1, 7})
    assert acceptance.max_pdu == 16384


@pytest.mark.parametrize("result", [0x01, 0x02, 0x03, 0x04])
def test_parse_acceptance_every_rejection_result(result: int) -> None:
    proposed = [AcceptedContext(1, CT_IMAGE_STORAGE, ExplicitVRLittleEndian)]
    raw = gateway_ac(
        [result_context(1, CT_IMAGE_STORAGE, ExplicitVRLittleEndian, result)], max_pdu=0
    )
    acceptance = negotiation.parse_acceptance(raw, proposed)
    assert acceptance.context_ids == frozenset()
    assert acceptance.max_pdu == 0


def test_router_request_and_pynetdicom_acceptor_agree() -> None:
    """The router's RQ, negotiated by pynetdicom as a gateway would, parses back whole."""
    from pynetdicom.presentation import negotiate_as_acceptor

    ours = [
        AcceptedContext(1, CT_IMAGE_STORAGE, JPEGBaseline8Bit),
        AcceptedContext(3, CT_IMAGE_STORAGE, ExplicitVRLittleEndian),
    ]
    rq = A_ASSOCIATE_RQ()
    rq.decode(
        negotiation.build_request(
            calling_ae="GATEWAYPOOL", called_ae="GW", contexts=ours, max_pdu=65536
        )
    )
    gateway_supports = [build_context(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])]
    results, _ = negotiate_as_acceptor(
        rq.to_primitive().presentation_context_definition_list, gateway_supports
    )
    acceptance = negotiation.parse_acceptance(gateway_ac(results, max_pdu=32768), ours)
    assert acceptance.context_ids == frozenset({3})
    assert acceptance.max_pdu == 32768
