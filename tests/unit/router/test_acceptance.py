"""What the router accepts from senders, as a function of the gateways' answers.

The policy is pure data, so its rules are checked here exhaustively; the
integration tests (test_router_interop) check that real gateways' answers
reach it.
"""

from __future__ import annotations

import pytest
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
    classes: set[str],
    syntaxes: tuple[str, ...] | None,
    asked: set[str] | None = None,
    *,
    per_class: dict[str, tuple[str, ...]] | None = None,
) -> GatewayAccepts:
    """A probed gateway: it takes ``syntaxes`` for each of ``classes`` (or ``per_class``).

    Every pair of its classes was asked about; its first choice is the
    first syntax listed for its first class in UID order (CT before MR).
    """
    taken = dict.fromkeys(sorted(classes), syntaxes or ()) | (per_class or {})
    return GatewayAccepts(
        asked=frozenset(KNOWN_STORAGE_CLASSES if asked is None else asked),
        sop_classes=frozenset(classes),
        pairs_asked=frozenset((c, ts) for c in taken for ts in SUPPORTED_TRANSFER_SYNTAXES),
        pairs=frozenset((c, ts) for c, accepted in taken.items() for ts in accepted),
        first_choice=next((ts[0] for ts in taken.values() if ts), None),
    )


def test_with_nothing_known_every_storage_class_in_every_readable_syntax() -> None:
    policy = Policy()
    assert policy.syntaxes_for(CT) == SUPPORTED_TRANSFER_SYNTAXES
    assert policy.syntaxes_for(VERIFICATION_SOP_CLASS) == SUPPORTED_TRANSFER_SYNTAXES
    # Not storage as far as anyone knows: refused, marked or not (no gateway said yes).
    assert policy.syntaxes_for(PRIVATE) == ()
    assert policy.syntaxes_for(PRIVATE, marked_storage=True) == ()
    assert policy.syntaxes_for("1.2.840.10008.5.1.4.1.2.2.1") == ()  # C-FIND, not storage


def test_only_what_every_gateway_accepts_first_choice_first() -> None:
    first = gateway({CT, MR}, (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN, JPEG_LS))
    second = gateway({CT}, (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN))
    policy = Policy(gateways=(first, second))
    assert policy.syntaxes_for(CT) == (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN)
    assert policy.syntaxes_for(MR) == ()  # the second gateway refused MR


# Per gateway: (classes it takes, {class: syntaxes it takes}); the last
# columns: what the router accepts for CT and for MR.
JPEG_LS_FOR_CT_ONLY = {CT: (JPEG_LS, *UNCOMPRESSED), MR: UNCOMPRESSED}
EVERYTHING = {CT: (JPEG_LS, *UNCOMPRESSED), MR: (JPEG_LS, *UNCOMPRESSED)}
PLAIN = {CT: UNCOMPRESSED, MR: UNCOMPRESSED}
PAIR_TABLE = [
    # One gateway taking JPEG-LS for CT only: MR in JPEG-LS is refused, CT not.
    ([JPEG_LS_FOR_CT_ONLY], (JPEG_LS, *UNCOMPRESSED), UNCOMPRESSED),
    # Two gateways: a pair is accepted only where both take it.
    ([EVERYTHING, JPEG_LS_FOR_CT_ONLY], (JPEG_LS, *UNCOMPRESSED), UNCOMPRESSED),
    ([EVERYTHING, PLAIN], UNCOMPRESSED, UNCOMPRESSED),
    ([EVERYTHING, EVERYTHING], (JPEG_LS, *UNCOMPRESSED), (JPEG_LS, *UNCOMPRESSED)),
    # A gateway refusing MR altogether: MR refused (result 3), CT as the pairs say.
    ([EVERYTHING, {CT: UNCOMPRESSED}], UNCOMPRESSED, ()),
]


@pytest.mark.parametrize(("gateways", "for_ct", "for_mr"), PAIR_TABLE)
def test_transfer_syntaxes_are_per_sop_class(
    gateways: list[dict[str, tuple[str, ...]]],
    for_ct: tuple[str, ...],
    for_mr: tuple[str, ...],
) -> None:
    policy = Policy(gateways=tuple(gateway(set(g), None, per_class=g) for g in gateways))
    assert policy.syntaxes_for(CT) == for_ct
    assert policy.syntaxes_for(MR) == for_mr


def test_a_pair_never_asked_is_refused_until_learnt() -> None:
    # MR was accepted by the class probe, but no MR pair was asked yet.
    unknown = GatewayAccepts(
        asked=frozenset(KNOWN_STORAGE_CLASSES),
        sop_classes=frozenset({CT, MR}),
        pairs_asked=frozenset((CT, ts) for ts in SUPPORTED_TRANSFER_SYNTAXES),
        pairs=frozenset((CT, ts) for ts in UNCOMPRESSED),
        first_choice=EXPLICIT_VR_LITTLE_ENDIAN,
    )
    policy = Policy(gateways=(unknown,))
    proposed = [(MR, JPEG_LS), (MR, EXPLICIT_VR_LITTLE_ENDIAN), (CT, JPEG_LS), (CT, "1.2.3.4")]
    assert policy.syntaxes_for(MR) == ()
    # CT's pairs were all asked; the unreadable syntax is never worth asking.
    assert policy.to_learn(unknown, proposed) == ((MR, JPEG_LS), (MR, EXPLICIT_VR_LITTLE_ENDIAN))
    learnt = unknown.learnt([(MR, JPEG_LS), (MR, EXPLICIT_VR_LITTLE_ENDIAN)], [(MR, JPEG_LS)])
    assert Policy(gateways=(learnt,)).syntaxes_for(MR) == (JPEG_LS,)
    assert Policy(gateways=(learnt,)).to_learn(learnt, proposed) == ()


def test_what_is_not_worth_learning() -> None:
    new = GatewayAccepts(asked=frozenset({CT, MR}), sop_classes=frozenset({CT}))
    proposed = [
        (MR, JPEG_LS),  # refused by the class probe: no syntax will change that
        (VERIFICATION_SOP_CLASS, JPEG_LS),  # the router answers it itself
        ("1.2.840.10008.5.1.4.1.2.2.1", JPEG_LS),  # C-FIND: not storage
        (PRIVATE, JPEG_LS),  # private and not marked Storage
        (CT, JPEG_LS),
        (CT, JPEG_LS),  # asked once
    ]
    assert Policy(gateways=(new,)).to_learn(new, proposed) == ((CT, JPEG_LS),)
    # A configured transfer syntax list decides alone: nothing to learn.
    configured = Policy(configured_syntaxes=(JPEG_LS,), gateways=(new,))
    assert configured.to_learn(new, proposed) == ()
    # A configured class list: its classes are learnt, whatever the class probe said.
    listed = Policy(configured_classes=frozenset({MR}), gateways=(new,))
    assert listed.to_learn(new, proposed) == ((MR, JPEG_LS),)


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
per_class_sets = st.fixed_dictionaries({CT: syntax_sets, MR: syntax_sets})


@given(st.lists(per_class_sets, min_size=1, max_size=4))
def test_accepted_pairs_are_readable_and_taken_by_every_gateway(
    probed: list[dict[str, list[str]]],
) -> None:
    gateways = tuple(
        gateway({CT, MR}, None, per_class={c: tuple(ts) for c, ts in g.items()}) for g in probed
    )
    policy = Policy(gateways=gateways)
    for sop_class in (CT, MR):
        chosen = policy.syntaxes_for(sop_class)
        taken = [set(g[sop_class]) for g in probed]
        assert set(chosen) == taken[0].intersection(*taken[1:])
        # The first gateway's own choice first, then the router's order.
        rest = [ts for ts in SUPPORTED_TRANSFER_SYNTAXES if ts in chosen]
        first = gateways[0].first_choice
        assert list(chosen) == ([first] if first in chosen else []) + [
            ts for ts in rest if ts != first
        ]


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
