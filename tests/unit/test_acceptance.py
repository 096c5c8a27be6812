"""What the router accepts from senders, as a function of the gateways' answers.

The policy is pure data, so its rules are checked here exhaustively; the
integration tests (test_router_interop) check that real gateways' answers
reach it.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from pydicom.uid import UID
from pynetdicom.pdu import A_ASSOCIATE_AC
from pynetdicom.pdu_primitives import SOPClassCommonExtendedNegotiation

from gatewaypool_router import negotiation
from gatewaypool_router.acceptance import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    KNOWN_STORAGE_CLASSES,
    VERIFICATION_SOP_CLASS,
    GatewayAccepts,
    Policy,
    preference,
)
from gatewaypool_router.scanner import SUPPORTED_TRANSFER_SYNTAXES
from support import rawdicom

CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
PRIVATE = "1.3.12.2.1107.5.9.1"  # Siemens CSA Non-Image Storage
JPEG_LS = "1.2.840.10008.1.2.4.80"
UNCOMPRESSED = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)


def gateway(
    classes: set[str], syntaxes: tuple[str, ...] | None, asked: set[str] | None = None
) -> GatewayAccepts:
    return GatewayAccepts(
        asked=frozenset(KNOWN_STORAGE_CLASSES if asked is None else asked),
        sop_classes=frozenset(classes),
        transfer_syntaxes=syntaxes,
    )


def test_with_nothing_known_every_storage_class_in_every_readable_syntax() -> None:
    policy = Policy()
    assert policy.syntaxes_for(CT) == SUPPORTED_TRANSFER_SYNTAXES
    assert policy.syntaxes_for(VERIFICATION_SOP_CLASS) == SUPPORTED_TRANSFER_SYNTAXES
    # Not storage as far as anyone knows: refused, marked or not (no gateway said yes).
    assert policy.syntaxes_for(PRIVATE) == ()
    assert policy.syntaxes_for(PRIVATE, marked_storage=True) == ()
    assert policy.syntaxes_for("1.2.840.10008.5.1.4.1.2.2.1") == ()  # C-FIND, not storage


def test_only_what_every_gateway_accepts_in_the_first_ones_order() -> None:
    first = gateway({CT, MR}, (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, JPEG_LS))
    second = gateway({CT}, (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN))
    policy = Policy(gateways=(first, second))
    assert policy.syntaxes_for(CT) == (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN)
    assert policy.syntaxes_for(MR) == ()  # the second gateway refused MR


def test_configured_lists_take_precedence() -> None:
    probed = gateway({CT}, (EXPLICIT_VR_LITTLE_ENDIAN,))
    policy = Policy(
        configured_syntaxes=(JPEG_LS, "1.2.3.4", EXPLICIT_VR_LITTLE_ENDIAN),
        configured_classes=frozenset({PRIVATE, MR}),
        gateways=(gateway(set(), None, asked=set()),),
    )
    # The configured order, less what the router cannot read.
    assert policy.syntaxes_for(MR) == (JPEG_LS, EXPLICIT_VR_LITTLE_ENDIAN)
    assert policy.syntaxes_for(PRIVATE) == (JPEG_LS, EXPLICIT_VR_LITTLE_ENDIAN)
    assert policy.syntaxes_for(CT) == ()  # not listed
    assert policy.syntaxes_for(VERIFICATION_SOP_CLASS) == SUPPORTED_TRANSFER_SYNTAXES
    assert Policy(configured_syntaxes=(JPEG_LS,), gateways=(probed,)).syntaxes_for(CT) == (JPEG_LS,)


def test_a_private_class_needs_the_mark_and_every_gateways_yes() -> None:
    yes = gateway({CT, PRIVATE}, UNCOMPRESSED, asked={CT, PRIVATE})
    no = gateway({CT}, UNCOMPRESSED, asked={CT, PRIVATE})
    never_asked = gateway({CT}, UNCOMPRESSED, asked={CT})
    assert Policy(gateways=(yes,)).syntaxes_for(PRIVATE, marked_storage=True) == UNCOMPRESSED
    assert Policy(gateways=(yes,)).syntaxes_for(PRIVATE) == ()  # not marked Storage
    assert Policy(gateways=(yes, no)).syntaxes_for(PRIVATE, marked_storage=True) == ()
    assert Policy(gateways=(yes, never_asked)).syntaxes_for(PRIVATE, marked_storage=True) == ()
    assert Policy(gateways=(yes, never_asked)).unknown_to(PRIVATE)


def test_preference_puts_the_gateways_choice_first() -> None:
    accepted = [JPEG_LS, IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN]
    assert preference(accepted, JPEG_LS) == (JPEG_LS, *UNCOMPRESSED)
    assert preference(accepted, None) == (*UNCOMPRESSED, JPEG_LS)
    assert preference(accepted, "1.2.3") == (*UNCOMPRESSED, JPEG_LS)


syntax_sets = st.lists(st.sampled_from(SUPPORTED_TRANSFER_SYNTAXES), unique=True, max_size=8)


@given(st.lists(syntax_sets, min_size=1, max_size=4))
def test_accepted_syntaxes_are_readable_and_taken_by_every_gateway(
    probed: list[list[str]],
) -> None:
    policy = Policy(gateways=tuple(gateway({CT}, tuple(s)) for s in probed))
    chosen = policy.syntaxes_for(CT)
    for syntaxes in probed:
        assert set(chosen) <= set(syntaxes)
    assert list(chosen) == [ts for ts in probed[0] if ts in chosen]
    assert set(chosen) == set(probed[0]).intersection(*probed[1:])


def _results(raw_request: bytes, policy: Policy) -> dict[int, tuple[int, str]]:
    request = negotiation.parse_request(raw_request)
    pdu_bytes, _ = negotiation.accept(request, max_pdu=65536, policy=policy)
    ac = A_ASSOCIATE_AC()
    ac.decode(pdu_bytes)
    return {
        int(cx.context_id or 0): (int(cx.result or 0), str(cx.transfer_syntax[0]))
        for cx in ac.to_primitive().presentation_context_definition_results_list
    }


def test_refused_contexts_say_why_and_the_choice_follows_the_policy() -> None:
    policy = Policy(gateways=(gateway({CT}, UNCOMPRESSED),))
    raw = rawdicom.association_rq(
        contexts=[
            rawdicom.context(1, CT, [JPEG_LS]),
            rawdicom.context(
                3, CT, [JPEG_LS, IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN]
            ),
            rawdicom.context(5, MR, [EXPLICIT_VR_LITTLE_ENDIAN]),
        ]
    )
    results = _results(raw, policy)
    assert results[1][0] == negotiation.RESULT_TRANSFER_SYNTAXES_NOT_SUPPORTED
    # Of the sender's syntaxes, the one the gateway prefers, whatever the sender's order.
    assert results[3] == (0, EXPLICIT_VR_LITTLE_ENDIAN)
    assert results[5][0] == negotiation.RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED


def test_a_sender_marking_a_private_class_storage_is_heard() -> None:
    item = SOPClassCommonExtendedNegotiation()
    item.sop_class_uid = UID(PRIVATE)
    item.service_class_uid = UID("1.2.840.10008.4.2")
    contexts = [rawdicom.context(1, PRIVATE, [EXPLICIT_VR_LITTLE_ENDIAN])]
    marked = rawdicom.association_rq(contexts=contexts, extra=[item])
    unmarked = rawdicom.association_rq(contexts=contexts)
    policy = Policy(gateways=(gateway({PRIVATE}, UNCOMPRESSED, asked={PRIVATE}),))
    assert negotiation.parse_request(marked).storage_marked == {PRIVATE}
    assert _results(marked, policy)[1] == (0, EXPLICIT_VR_LITTLE_ENDIAN)
    assert _results(unmarked, policy)[1][0] == negotiation.RESULT_ABSTRACT_SYNTAX_NOT_SUPPORTED
