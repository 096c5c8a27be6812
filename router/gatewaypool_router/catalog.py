"""What each gateway of the map accepts, and whether any can be reached.

For every gateway of the current map the router opens probe associations
(proposing at most 128 presentation contexts each, then released):

1. every storage SOP class pynetdicom knows (and the private ones senders
   asked for, see :meth:`GatewayCatalog.policy_for`), each in explicit and
   implicit VR little endian: the SOP classes the gateway accepts;
2. a seed of (SOP class, transfer syntax) pairs, each in a context of its
   own: the common storage classes it accepted (:data:`SEED_CLASSES`, or
   the configured ones) in each transfer syntax the router can read, plus
   one context offering them all (the syntax the gateway prefers);
3. on demand, when a sender proposes a pair some probed gateway was never
   asked about: one association per such gateway with those pairs (up to
   128 a association), every gateway at once, before the router answers
   the sender (:meth:`GatewayCatalog.policy_for`). The sender waits at most
   half of ``--acse-timeout``; a pair still unanswered then is refused
   (result 4, or 3 when no syntax of the class is left), the probe goes on
   and the next association gets its answer.

A configured list (``--accepted-transfer-syntax``, ``--sop-class``) replaces
the step it would answer. Results are cached per gateway (host, port, AE
title) while the map has that gateway; every gateway is probed again, and
what was learnt on demand forgotten, when the map's set of gateways
changes. Steps 1 and 2 run on a thread of their own, never on a sender's.
Each process has its own cache: with ``--workers``, each worker probes and
learns by itself (the answers are the gateways', so they agree).

A gateway whose probe got no answer (it was down, restarting, or not
listening yet; or it rejected the router's association) is probed again in
the background, without waiting for a sender: first after ``_RECHECK``
seconds, then at doubling intervals up to ``_REPROBE_MAX``, and at once
when a sender's association reaches it. Until it answers it does not
narrow what senders may send. A gateway that refuses, in a sender's
association, a pair its probe accepted (redeployed with other settings
under the same name) is probed again too, as soon as ``_RECHECK`` seconds
have passed since its last probe: its answers replace what was known.

The same probes say whether a gateway can be reached. An association from
a sender is refused (transient: A-ASSOCIATE-RJ 2/3/1) when no map is loaded
or no gateway of the map can be reached, so that a modality's "verify"
button (C-ECHO) tells the truth; a refused association re-checks the
unreachable gateways, at most every ``_RECHECK`` seconds.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

from gatewaypool.bucketmap import BucketMap, Gateway
from gatewaypool.logs import log_event
from gatewaypool_router.acceptance import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    KNOWN_STORAGE_CLASSES,
    STORAGE_SERVICE_CLASS,
    VERIFICATION_SOP_CLASS,
    GatewayAccepts,
    Pair,
    Policy,
)
from gatewaypool_router.config import RouterConfig
from gatewaypool_router.mapsource import MapHolder
from gatewaypool_router.negotiation import CommonExtended, ProposedContext
from gatewaypool_router.scanner import SUPPORTED_TRANSFER_SYNTAXES
from gatewaypool_router.tls import ReloadingContext
from gatewaypool_router.upstream import GatewayError, Upstream

log = logging.getLogger(__name__)

GatewayKey = tuple[str, int, str]

#: Presentation contexts per association: context IDs are odd numbers 1..255.
MAX_CONTEXTS = 128
#: The shortest time between two re-checks of unreachable gateways.
_RECHECK = 2.0
#: The longest time between two background probes of a gateway without an answer.
_REPROBE_MAX = 30.0
#: The share of ``--acse-timeout`` a sender's association may wait for on-demand probes.
LEARN_SHARE = 0.5
#: Storage SOP classes whose pairs the first probes learn (where the gateway
#: takes them), most common first: CT, MR, ultrasound, CR, digital X-ray
#: (for presentation), secondary capture. Six classes in 42 transfer syntaxes
#: fit two associations; the rest is learnt when a sender proposes it.
SEED_CLASSES: tuple[str, ...] = (
    "1.2.840.10008.5.1.4.1.1.2",
    "1.2.840.10008.5.1.4.1.1.4",
    "1.2.840.10008.5.1.4.1.1.6.1",
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.7",
)


def key_of(gateway: Gateway) -> GatewayKey:
    return (gateway.host, gateway.port, gateway.ae_title)


def reprobe_delay(failures: int) -> float:
    """How long after its last probe a gateway without an answer is probed again.

    ``failures``: its probes that failed in a row. Doubling from ``_RECHECK``
    up to ``_REPROBE_MAX``: a gateway that comes up late is heard within
    seconds, one that stays down costs a probe every half minute.
    """
    return min(_RECHECK * 2.0 ** max(failures - 1, 0), _REPROBE_MAX)


def _pair_name(pair: Pair) -> str:
    return f"{pair[0]}/{pair[1]}"


@dataclass(slots=True)
class _Entry:
    reachable: bool | None = None
    accepts: GatewayAccepts | None = None
    checked: float = 0.0
    #: Bumped when a full probe replaces ``accepts``: a pair probe started
    #: before then learnt about the previous gateway, and is dropped.
    generation: int = 0
    #: Pairs an on-demand probe is asking about right now.
    learning: set[Pair] = field(default_factory=set)
    #: Probes in a row that got no answer (see :func:`reprobe_delay`).
    failures: int = 0
    #: A sender's association found it refusing a pair it accepted when probed.
    stale: bool = False


class GatewayCatalog:
    """Probe results per gateway; the sender-side policy and admission built from them."""

    def __init__(
        self,
        config: RouterConfig,
        maps: MapHolder,
        *,
        gateway_tls: ReloadingContext | None = None,
    ) -> None:
        self._config = config
        self._maps = maps
        self._gateway_tls = gateway_tls
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._entries: dict[GatewayKey, _Entry] = {}
        #: Private SOP classes asked about so far (senders marked them Storage).
        self._extra_classes: dict[str, CommonExtended] = {}
        self._probing: set[GatewayKey] = set()
        self._recheck_lock = threading.Lock()
        self._last_recheck = 0.0

    # -- life cycle ---------------------------------------------------------

    def start(self) -> None:
        self._maps.subscribe(self._on_map)
        current = self._maps.current
        if current is not None:
            self._on_map(current)
        threading.Thread(target=self._reprobe_loop, name="gateway-reprobe", daemon=True).start()

    def _reprobe_loop(self) -> None:
        """Probe again, in the background, each gateway of the map without an answer."""
        while True:
            with self._lock:
                due, wait = self._due(time.monotonic())
                if not due:
                    self._changed.wait(wait)
                    continue
            self._probe_all(due)

    def _due(self, now: float) -> tuple[list[Gateway], float]:
        """The gateways to probe again now, and how long until the next one is due (lock held)."""
        bucket_map = self._maps.current
        due: list[Gateway] = []
        wait = _REPROBE_MAX
        for gateway in bucket_map.gateways if bucket_map is not None else ():
            key = key_of(gateway)
            entry = self._entries.get(key)
            # Not answered yet: its first probe (or another) is still under way.
            if entry is None or entry.reachable is None or key in self._probing:
                continue
            if entry.accepts is not None and not entry.stale:
                continue
            left = entry.checked + reprobe_delay(entry.failures) - now
            if left <= 0:
                due.append(gateway)
            else:
                wait = min(wait, left)
        return due, wait

    def _on_map(self, bucket_map: BucketMap) -> None:
        """Probe the gateways of a map whose set of gateways is new to us."""
        keys = {key_of(g): g for g in bucket_map.gateways}
        with self._lock:
            # Forget gateways the map no longer has: one that comes back (a
            # gateway redeployed with other settings, say) is probed anew.
            for key in set(self._entries) - set(keys):
                del self._entries[key]
            fresh = set(keys) - set(self._entries)
            for key in fresh:
                self._entries[key] = _Entry()
        # A new set of gateways: refresh what every one of them accepts.
        new = list(keys.values()) if fresh else []
        if new:
            threading.Thread(
                target=self._probe_all, args=(new,), name="gateway-probe", daemon=True
            ).start()

    def _probe_all(self, gateways: Sequence[Gateway]) -> None:
        threads = [
            threading.Thread(target=self.probe, args=(g,), name=f"probe-{g.name}", daemon=True)
            for g in gateways
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    # -- what senders may do --------------------------------------------------

    def policy(self) -> Policy:
        """The negotiation policy for the current map's gateways."""
        config = self._config
        bucket_map = self._maps.current
        known: list[GatewayAccepts] = []
        if bucket_map is not None:
            with self._lock:
                for gateway in bucket_map.gateways:
                    entry = self._entries.get(key_of(gateway))
                    if entry is not None and entry.accepts is not None:
                        known.append(entry.accepts)
        return Policy(
            configured_syntaxes=config.accepted_transfer_syntaxes or None,
            configured_classes=frozenset(config.sop_classes) or None,
            gateways=tuple(known),
        )

    def learn_wait(self) -> float:
        """How long a sender's association waits for on-demand probes."""
        return self._config.acse_timeout * LEARN_SHARE

    def policy_for(
        self, proposed: Sequence[Pair], extended: Mapping[str, CommonExtended]
    ) -> Policy:
        """The policy for a sender's proposal, once the gateways were asked what it needs.

        ``proposed``: the (SOP class, transfer syntax) pairs of the sender's
        contexts. First, a SOP class pynetdicom does not know, which the
        sender names a Storage Service Class SOP class (SOP Class Common
        Extended Negotiation), is asked about; then every pair some probed
        gateway was never asked about (:meth:`Policy.to_learn`). Both on the
        sender's thread, every gateway at once, for at most
        :meth:`learn_wait` in all; later associations use the answers.
        """
        deadline = time.monotonic() + self.learn_wait()
        policy = self.policy()
        bucket_map = self._maps.current
        if bucket_map is None:
            return policy
        classes = list(dict.fromkeys(uid for uid, _ in proposed))
        if policy.configured_classes is None:
            wanted = [
                extended[uid]
                for uid in classes
                if uid in extended
                and extended[uid].service_class == STORAGE_SERVICE_CLASS
                and not policy.class_allowed(uid, marked_storage=True)
                and (policy.unknown_to(uid) or not policy.gateways)
            ]
            if wanted:
                with self._lock:
                    for item in wanted:
                        self._extra_classes.setdefault(item.sop_class, item)
                self._ask_about([i.sop_class for i in wanted], bucket_map.gateways, deadline)
                policy = self.policy()
        marked = frozenset(
            uid for uid, item in extended.items() if item.service_class == STORAGE_SERVICE_CLASS
        )
        items = [extended[uid] for uid in sorted(marked)]
        self._learn(
            policy,
            proposed=proposed,
            marked=marked,
            extended=items,
            gateways=bucket_map.gateways,
            deadline=deadline,
        )
        return self.policy()

    def _ask_about(
        self, classes: Sequence[str], gateways: Sequence[Gateway], deadline: float
    ) -> None:
        threads = [
            threading.Thread(target=self._probe_classes, args=(g, classes), daemon=True)
            for g in gateways
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _probe_classes(self, gateway: Gateway, classes: Sequence[str]) -> None:
        key = key_of(gateway)
        with self._lock:
            entry = self._entries.get(key)
            extended = [self._extra_classes[uid] for uid in classes if uid in self._extra_classes]
        if entry is None or entry.accepts is None:
            return
        try:
            accepted = self._accepted_classes(gateway, classes, extended)
        except GatewayError as exc:
            name = gateway.name
            log_event(log, logging.WARNING, "gateway.probe_failed", gateway=name, reason=exc.reason)
            return
        with self._lock:
            old = entry.accepts
            if old is not None:
                entry.accepts = replace(
                    old.learnt(accepted.items(), accepted.items()),
                    asked=old.asked | set(classes),
                    sop_classes=old.sop_classes | set(accepted),
                )
            self._changed.notify_all()
        log_event(
            log,
            logging.INFO,
            "gateway.probed_classes",
            gateway=gateway.name,
            asked=sorted(classes),
            accepted=sorted(accepted),
        )

    def _learn(
        self,
        policy: Policy,
        *,
        proposed: Sequence[Pair],
        marked: frozenset[str],
        extended: Sequence[CommonExtended],
        gateways: Sequence[Gateway],
        deadline: float,
    ) -> None:
        """Ask each probed gateway about the proposed pairs it was never asked about.

        Pairs another association is already asking about are waited for,
        not asked twice. Returns when every pair is answered (or its probe
        failed), or at ``deadline``.
        """
        waiting: dict[GatewayKey, tuple[Pair, ...]] = {}
        starts: list[tuple[Gateway, list[Pair], int]] = []
        with self._lock:
            for gateway in gateways:
                key = key_of(gateway)
                entry = self._entries.get(key)
                # Not probed yet, or unreachable: it does not narrow the set
                # (not probed) or is re-checked by admission (unreachable).
                if entry is None or entry.accepts is None or entry.reachable is False:
                    continue
                wanted = policy.to_learn(entry.accepts, proposed, marked=marked)
                if not wanted:
                    continue
                waiting[key] = wanted
                new = [pair for pair in wanted if pair not in entry.learning]
                if new:
                    entry.learning.update(new)
                    starts.append((gateway, new, entry.generation))
        if not waiting:
            return
        for gateway, pairs, generation in starts:
            threading.Thread(
                target=self._probe_pairs,
                args=(gateway, pairs, extended, generation),
                name=f"pairs-{gateway.name}",
                daemon=True,
            ).start()
        with self._lock:
            while True:
                pending = self._pending(waiting)
                if not pending:
                    return
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
        log_event(
            log,
            logging.WARNING,
            "gateway.probe_pending",
            unanswered=pending,
            seconds=round(self.learn_wait(), 3),
        )

    def _pending(self, waiting: dict[GatewayKey, tuple[Pair, ...]]) -> int:
        """How many of the pairs waited for are still being asked (lock held)."""
        count = 0
        for key, pairs in waiting.items():
            entry = self._entries.get(key)
            if entry is not None:
                count += sum(1 for pair in pairs if pair in entry.learning)
        return count

    def _probe_pairs(
        self,
        gateway: Gateway,
        pairs: Sequence[Pair],
        extended: Sequence[CommonExtended],
        generation: int,
    ) -> None:
        """One on-demand probe: record which of ``pairs`` the gateway accepts."""
        key = key_of(gateway)
        started = time.monotonic()
        accepted: frozenset[Pair] | None = None
        failure: GatewayError | None = None
        try:
            accepted, _ = self._accepted_pairs(gateway, pairs, extended)
        except GatewayError as exc:
            failure = exc
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                entry.learning.difference_update(pairs)
                if (
                    accepted is not None
                    and entry.accepts is not None
                    and entry.generation == generation
                ):
                    entry.accepts = entry.accepts.learnt(pairs, accepted)
                if failure is not None and not failure.answered:
                    entry.reachable = False
                    entry.checked = time.monotonic()
            self._changed.notify_all()
        if accepted is None:
            reason = failure.reason if failure is not None else ""
            reachable = failure is not None and failure.answered
            log_event(
                log,
                logging.WARNING,
                "gateway.probe_failed",
                gateway=gateway.name,
                reason=reason,
                reachable=reachable,
            )
            return
        log_event(
            log,
            logging.INFO,
            "gateway.probed_pairs",
            gateway=gateway.name,
            asked=len(pairs),
            accepted=sorted(_pair_name(p) for p in accepted),
            refused=sorted(_pair_name(p) for p in set(pairs) - accepted),
            seconds=round(time.monotonic() - started, 3),
        )

    def admit(self) -> str | None:
        """Why a new association must be refused now (None: admit it).

        ``no_map``: no bucket map loaded. ``no_gateway_reachable``: every
        gateway of the map failed its last probe or connection (re-checked
        here, at most every few seconds). A gateway not yet probed counts as
        reachable once its probe, waited for up to ``--connect-timeout``, says so.
        """
        bucket_map = self._maps.current
        if bucket_map is None:
            return "no_map"
        keys = [key_of(g) for g in bucket_map.gateways]
        deadline = time.monotonic() + self._config.connect_timeout
        with self._lock:
            while True:
                states = [self._entries.get(k, _Entry()).reachable for k in keys]
                if any(state is True for state in states):
                    return None
                if None not in states:
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    return None  # still probing: let the instances say how it goes
                self._changed.wait(left)
        if self._recheck(bucket_map.gateways):
            return None
        return "no_gateway_reachable"

    def _recheck(self, gateways: Sequence[Gateway]) -> bool:
        """Probe the unreachable gateways again (one thread at a time); any reachable now?"""
        with self._recheck_lock:
            if time.monotonic() - self._last_recheck >= _RECHECK:
                self._probe_all(gateways)
                self._last_recheck = time.monotonic()
        with self._lock:
            return any(self._entries.get(key_of(g), _Entry()).reachable for g in gateways)

    def reached(self, gateway: Gateway, *, reachable: bool, associated: bool = False) -> None:
        """What an association to the gateway just found (feeds :meth:`admit`).

        ``associated``: the gateway accepted the association. If its last
        probe could not reach it, it is probed again at once.
        """
        with self._lock:
            entry = self._entries.get(key_of(gateway))
            if entry is None:
                return
            if associated and entry.accepts is None and entry.reachable is False:
                # Up again, and what it accepts is not known: ask it now.
                entry.checked = 0.0
                entry.failures = 0
                entry.reachable = True
                self._changed.notify_all()
            elif entry.reachable != reachable:
                entry.reachable = reachable
                entry.checked = time.monotonic()
                self._changed.notify_all()

    def contradicted(self, gateway: Gateway, refused: Sequence[Pair]) -> None:
        """A sender's association to the gateway had these pairs refused.

        Those its probes said it accepts make what is known of it stale: it
        is probed again (see :meth:`_due`), and its answers replace that.
        """
        with self._lock:
            entry = self._entries.get(key_of(gateway))
            if entry is None or entry.accepts is None or entry.stale:
                return
            wrong = sorted(_pair_name(pair) for pair in refused if pair in entry.accepts.pairs)
            if not wrong:
                return
            entry.stale = True
            self._changed.notify_all()
        log_event(
            log, logging.WARNING, "gateway.probe_contradicted", gateway=gateway.name, refused=wrong
        )

    # -- probing --------------------------------------------------------------

    def probe(self, gateway: Gateway) -> None:
        """Ask one gateway what it accepts; record it and whether it answered.

        What it answers replaces all that was known of it, pairs learnt on
        demand included.
        """
        key = key_of(gateway)
        with self._lock:
            self._probing.add(key)
            extra = dict(self._extra_classes)
        reachable: bool
        accepts: GatewayAccepts | None = None
        started = time.monotonic()
        try:
            accepts = self._probe(gateway, extra)
            reachable = True
        except GatewayError as exc:
            # A gateway that rejects the router's association answers all the same.
            reachable = exc.answered
            log_event(
                log,
                logging.WARNING,
                "gateway.probe_failed",
                gateway=gateway.name,
                reason=exc.reason,
                reachable=reachable,
            )
        with self._lock:
            self._probing.discard(key)
            # None: the map dropped the gateway while it was being probed.
            entry = self._entries.get(key)
            if entry is not None:
                entry.reachable = reachable
                entry.checked = time.monotonic()
                if accepts is not None:
                    entry.accepts = accepts
                    entry.generation += 1
                    entry.failures = 0
                    entry.stale = False
                else:
                    entry.failures += 1
            self._changed.notify_all()
        if accepts is not None:
            seeded: dict[str, list[str]] = {}
            for sop_class, syntax in sorted(accepts.pairs_asked):
                accepted = seeded.setdefault(sop_class, [])
                if (sop_class, syntax) in accepts.pairs:
                    accepted.append(syntax)
            log_event(
                log,
                logging.INFO,
                "gateway.probed",
                gateway=gateway.name,
                sop_classes=len(accepts.sop_classes),
                asked=len(accepts.asked),
                first_choice=accepts.first_choice,
                seeded=seeded,
                seconds=round(time.monotonic() - started, 3),
            )

    def _probe(self, gateway: Gateway, extra: dict[str, CommonExtended]) -> GatewayAccepts:
        config = self._config
        chosen: dict[str, str] = {}
        if config.sop_classes:
            # Configured classes take precedence: one association says it answers.
            self._associate(gateway, [ProposedContext(1, VERIFICATION_SOP_CLASS, _UNCOMPRESSED)])
            classes: frozenset[str] = frozenset()
            asked: frozenset[str] = frozenset()
            seed = list(config.sop_classes)
        else:
            wanted = [*KNOWN_STORAGE_CLASSES, *sorted(set(extra) - set(KNOWN_STORAGE_CLASSES))]
            chosen = self._accepted_classes(gateway, wanted, list(extra.values()))
            classes = frozenset(chosen)
            asked = frozenset(wanted)
            seed = [uid for uid in SEED_CLASSES if uid in classes] or sorted(classes)[:1]
        accepts = GatewayAccepts(
            asked=asked,
            sop_classes=classes,
            # What the class probe's contexts were accepted in is known too.
            pairs_asked=frozenset(chosen.items()),
            pairs=frozenset(chosen.items()),
        )
        if config.accepted_transfer_syntaxes or not seed:
            return accepts
        per_association = (MAX_CONTEXTS - 1) // len(SUPPORTED_TRANSFER_SYNTAXES)
        seed = seed[: 2 * per_association]
        pairs = [(uid, ts) for uid in seed for ts in SUPPORTED_TRANSFER_SYNTAXES]
        accepted, first_choice = self._accepted_pairs(gateway, pairs, (), choice_of=seed[0])
        return replace(accepts.learnt(pairs, accepted), first_choice=first_choice)

    def _accepted_classes(
        self, gateway: Gateway, classes: Sequence[str], extended: Sequence[CommonExtended]
    ) -> dict[str, str]:
        """{accepted SOP class: the uncompressed syntax the gateway chose for it}."""
        accepted: dict[str, str] = {}
        for start in range(0, len(classes), MAX_CONTEXTS):
            chunk = classes[start : start + MAX_CONTEXTS]
            contexts = [
                ProposedContext(2 * i + 1, uid, _UNCOMPRESSED) for i, uid in enumerate(chunk)
            ]
            mine = [e for e in extended if e.sop_class in chunk]
            usable = self._associate(gateway, contexts, mine)
            for cx in contexts:
                if cx.context_id in usable:
                    accepted[cx.abstract_syntax] = usable[cx.context_id]
        return accepted

    def _accepted_pairs(
        self,
        gateway: Gateway,
        pairs: Sequence[Pair],
        extended: Sequence[CommonExtended],
        *,
        choice_of: str | None = None,
    ) -> tuple[frozenset[Pair], str | None]:
        """Which ``pairs`` the gateway accepts, each in a context of its own.

        At most 128 contexts an association. With ``choice_of``, the first
        association also offers that SOP class in every readable syntax in
        one context: the one the gateway picks is returned as its choice.
        """
        accepted: set[Pair] = set()
        first_choice: str | None = None
        per = MAX_CONTEXTS - (1 if choice_of is not None else 0)
        for start in range(0, len(pairs), per):
            chunk = pairs[start : start + per]
            contexts = [ProposedContext(2 * i + 1, uid, (ts,)) for i, (uid, ts) in enumerate(chunk)]
            every: ProposedContext | None = None
            if choice_of is not None and start == 0:
                every = ProposedContext(2 * len(chunk) + 1, choice_of, SUPPORTED_TRANSFER_SYNTAXES)
            classes = {uid for uid, _ in chunk}
            mine = [e for e in extended if e.sop_class in classes]
            usable = self._associate(gateway, [*contexts, *([every] if every else [])], mine)
            accepted.update(
                pair for pair, cx in zip(chunk, contexts, strict=True) if cx.context_id in usable
            )
            if every is not None:
                first_choice = usable.get(every.context_id)
        return frozenset(accepted), first_choice

    def _associate(
        self,
        gateway: Gateway,
        contexts: Sequence[ProposedContext],
        extended: Sequence[CommonExtended] = (),
    ) -> dict[int, str]:
        """One probe association: {accepted context ID: transfer syntax}, then released."""
        config = self._config
        upstream = Upstream(
            gateway=gateway,
            address=config.resolve(gateway.host, gateway.port),
            contexts=contexts,
            extended=extended,
            calling_ae=config.ae_title,
            max_pdu=config.max_pdu,
            timeout=config.gateway_timeout,
            connect_timeout=config.connect_timeout,
            tls=self._gateway_tls.current() if self._gateway_tls is not None else None,
        )
        upstream.open()
        accepted = dict(upstream.accepted_syntaxes)
        upstream.release()
        return accepted


_UNCOMPRESSED = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
