"""What each gateway of the map accepts, and whether any can be reached.

For every gateway of the current map the router opens probe associations
(proposing at most 128 presentation contexts each, then released):

1. every storage SOP class pynetdicom knows (and the private ones senders
   asked for, see :meth:`GatewayCatalog.policy_for`), each in explicit and
   implicit VR little endian: the SOP classes the gateway accepts;
2. one SOP class it accepted in each transfer syntax the router can read,
   one context per syntax, plus one context offering them all: the syntaxes
   it accepts, and the one it prefers.

A configured list (``--accepted-transfer-syntax``, ``--sop-class``) replaces
the step it would answer. Results are cached per gateway (host, port, AE
title) while the map has that gateway, and every gateway is probed again
when the map's set of gateways changes; the probes run on a thread of
their own, never on a sender's.

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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gatewaypool.bucketmap import BucketMap, Gateway
from gatewaypool.logs import log_event
from gatewaypool_router.acceptance import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    KNOWN_STORAGE_CLASSES,
    STORAGE_SERVICE_CLASS,
    VERIFICATION_SOP_CLASS,
    GatewayAccepts,
    Policy,
    preference,
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
#: The SOP class a transfer syntax probe uses when the gateway accepts it.
_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def key_of(gateway: Gateway) -> GatewayKey:
    return (gateway.host, gateway.port, gateway.ae_title)


@dataclass(slots=True)
class _Entry:
    reachable: bool | None = None
    accepts: GatewayAccepts | None = None
    checked: float = 0.0


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

    def policy_for(self, proposed: Iterable[str], extended: dict[str, CommonExtended]) -> Policy:
        """The policy, after asking the gateways about private classes a sender marked Storage.

        A SOP class pynetdicom does not know, which the sender names a
        Storage Service Class SOP class (SOP Class Common Extended
        Negotiation), is asked about once per gateway, on the sender's
        thread: its association waits for that probe (bounded by the
        connect and gateway timeouts), later ones use the answer.
        """
        policy = self.policy()
        if policy.configured_classes is not None:
            return policy
        wanted = [
            extended[uid]
            for uid in proposed
            if uid in extended
            and extended[uid].service_class == STORAGE_SERVICE_CLASS
            and policy.syntaxes_for(uid, marked_storage=True) == ()
            and (policy.unknown_to(uid) or not policy.gateways)
        ]
        if not wanted:
            return policy
        with self._lock:
            for item in wanted:
                self._extra_classes.setdefault(item.sop_class, item)
        bucket_map = self._maps.current
        if bucket_map is None:
            return policy
        self._ask_about([i.sop_class for i in wanted], bucket_map.gateways)
        return self.policy()

    def _ask_about(self, classes: Sequence[str], gateways: Sequence[Gateway]) -> None:
        threads = [
            threading.Thread(target=self._probe_classes, args=(g, classes), daemon=True)
            for g in gateways
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

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
                entry.accepts = GatewayAccepts(
                    asked=old.asked | set(classes),
                    sop_classes=old.sop_classes | accepted,
                    transfer_syntaxes=old.transfer_syntaxes,
                )
        log_event(
            log,
            logging.INFO,
            "gateway.probed_classes",
            gateway=gateway.name,
            asked=sorted(classes),
            accepted=sorted(accepted),
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

    def reached(self, gateway: Gateway, *, reachable: bool) -> None:
        """What an association to the gateway just found (feeds :meth:`admit`)."""
        with self._lock:
            entry = self._entries.get(key_of(gateway))
            if entry is not None and entry.reachable != reachable:
                entry.reachable = reachable
                entry.checked = time.monotonic()
                self._changed.notify_all()

    # -- probing --------------------------------------------------------------

    def probe(self, gateway: Gateway) -> None:
        """Ask one gateway what it accepts; record it and whether it answered."""
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
            self._changed.notify_all()
        if accepts is not None:
            log_event(
                log,
                logging.INFO,
                "gateway.probed",
                gateway=gateway.name,
                sop_classes=len(accepts.sop_classes),
                asked=len(accepts.asked),
                transfer_syntaxes=list(accepts.transfer_syntaxes or ()),
                seconds=round(time.monotonic() - started, 3),
            )

    def _probe(self, gateway: Gateway, extra: dict[str, CommonExtended]) -> GatewayAccepts:
        config = self._config
        if config.sop_classes:
            # Configured classes take precedence: one association says it answers.
            self._associate(gateway, [ProposedContext(1, VERIFICATION_SOP_CLASS, _UNCOMPRESSED)])
            classes: frozenset[str] = frozenset()
            asked: frozenset[str] = frozenset()
        else:
            wanted = [*KNOWN_STORAGE_CLASSES, *sorted(set(extra) - set(KNOWN_STORAGE_CLASSES))]
            classes = self._accepted_classes(gateway, wanted, list(extra.values()))
            asked = frozenset(wanted)
        syntaxes: tuple[str, ...] | None = None
        if not config.accepted_transfer_syntaxes:
            if config.sop_classes:
                reference = config.sop_classes[0]
            elif _CT_IMAGE_STORAGE in classes:
                reference = _CT_IMAGE_STORAGE
            else:
                reference = min(classes, default="")
            if reference:
                # None when it took none (a configured class it does not accept): no answer.
                syntaxes = self._accepted_syntaxes(gateway, reference) or None
        return GatewayAccepts(asked=asked, sop_classes=classes, transfer_syntaxes=syntaxes)

    def _accepted_classes(
        self, gateway: Gateway, classes: Sequence[str], extended: Sequence[CommonExtended]
    ) -> frozenset[str]:
        accepted: set[str] = set()
        for start in range(0, len(classes), MAX_CONTEXTS):
            chunk = classes[start : start + MAX_CONTEXTS]
            contexts = [
                ProposedContext(2 * i + 1, uid, _UNCOMPRESSED) for i, uid in enumerate(chunk)
            ]
            mine = [e for e in extended if e.sop_class in chunk]
            usable = self._associate(gateway, contexts, mine)
            accepted.update(cx.abstract_syntax for cx in contexts if cx.context_id in usable)
        return frozenset(accepted)

    def _accepted_syntaxes(self, gateway: Gateway, sop_class: str) -> tuple[str, ...]:
        every = ProposedContext(1, sop_class, SUPPORTED_TRANSFER_SYNTAXES)
        singles = [
            ProposedContext(2 * index + 3, sop_class, (ts,))
            for index, ts in enumerate(SUPPORTED_TRANSFER_SYNTAXES)
        ]
        usable = self._associate(gateway, [every, *singles])
        accepted = [cx.transfer_syntaxes[0] for cx in singles if cx.context_id in usable]
        return preference(accepted, usable.get(1))

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
