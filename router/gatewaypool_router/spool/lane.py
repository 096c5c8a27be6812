"""One gateway's lane: the entries of the buckets it owns, sent one at a time over one association.

The lane asks the queue for its next entry (the oldest head among its
gateway's buckets that no other lane is sending), sends it over an
association of its own (opened with the contexts of the entries waiting,
reopened when the gateway, the calling AE title or a needed context
changes, released when idle), and hands the outcome to the forwarder,
which deletes, moves aside or keeps the entry. After a failed attempt it
waits `~gatewaypool_router.spool.decide.retry_delay`, growing with each
failure in a row. While the map source marks its gateway not Ready, the
lane sends nothing and holds no association to it; it starts again on the
readiness that says Ready (the forwarder wakes it), as after an outage.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from gatewaypool.bucketmap import Gateway
from gatewaypool.logs import log_event
from gatewaypool_router import pdus
from gatewaypool_router.negotiation import AcceptedContext
from gatewaypool_router.spool.decide import Verdict, retry_delay
from gatewaypool_router.spool.store import Entry
from gatewaypool_router.statuses import Status
from gatewaypool_router.upstream import GatewayError, Upstream

if TYPE_CHECKING:
    from gatewaypool_router.spool.forwarder import SpoolForwarder

log = logging.getLogger(__name__)

#: How long an idle lane waits for news before it looks again.
IDLE_SECONDS = 0.25
#: Contexts a lane proposes at most: one per (SOP class, transfer syntax) waiting.
_MAX_CONTEXTS = 64
_READ_CHUNK = 1 << 20


class Lane(threading.Thread):
    """Sends the entries of one gateway's buckets, one at a time, over one association."""

    def __init__(self, forwarder: SpoolForwarder, gateway: str) -> None:
        super().__init__(name=f"spool-{gateway}", daemon=True)
        self._forwarder = forwarder
        self._gateway_name = gateway
        self._upstream: Upstream | None = None
        self._contexts: dict[tuple[str, str], int] = {}
        self._calling = ""
        self._failures = 0

    def run(self) -> None:
        forwarder = self._forwarder
        try:
            while not forwarder.stopping.is_set():
                if not self._step():
                    self._idle()
        finally:
            self._close(release=True)

    def _step(self) -> bool:
        """Send one entry if one is due; False when there was none."""
        forwarder = self._forwarder
        current = forwarder.maps.current
        if current is None:
            return False
        if not forwarder.maps.ready(self._gateway_name):
            self._close(release=True)
            return False
        owner_of = forwarder.owner_of()
        entry = forwarder.queue.take(owner_of, self._gateway_name)
        if entry is None:
            return False
        gateway = current.gateway_for(entry.meta.bucket)
        status, reason, resend = self._attempt(gateway, entry)
        verdict = forwarder.settle(
            entry, gateway=gateway.name, status=status, reason=reason, resend=resend
        )
        if verdict is Verdict.RETRY:
            self._failures += 1
            self._close(release=False)
            delay = retry_delay(self._failures)
            log_event(
                log,
                logging.WARNING,
                "spool.forward_failed",
                gateway=gateway.name,
                status=f"0x{status:04X}",
                reason=reason,
                failures=self._failures,
                retry_in=delay,
            )
            forwarder.stopping.wait(delay)
        else:
            if self._failures:
                log_event(log, logging.INFO, "spool.gateway_back", gateway=gateway.name)
            self._failures = 0
        return True

    def _idle(self) -> None:
        forwarder = self._forwarder
        queue = forwarder.queue
        with queue.changed:
            queue.changed.wait(IDLE_SECONDS)
        upstream = self._upstream
        config = forwarder.config
        if upstream is not None and time.monotonic() - upstream.last_used > min(
            config.gateway_idle_release, 5.0
        ):
            self._close(release=True)

    def _attempt(self, gateway: Gateway, entry: Entry) -> tuple[int, str, bool]:
        """Send `entry` to `gateway`: the status it ended with, why, and whether a resend.

        A send counts as begun (and any later one as a resend) once the
        association is open, just before the command goes out: the gateway
        may store what follows even if its answer never comes back.
        """
        meta = entry.meta
        resend = False
        try:
            context_id = self._context_for(gateway, entry)
            if context_id is None:
                return (
                    Status.SOP_CLASS_NOT_SUPPORTED,
                    "gateway did not accept this SOP class and transfer syntax",
                    False,
                )
            upstream = self._upstream
            assert upstream is not None
            resend = self._forwarder.store.mark_sending(entry)
            command = memoryview(meta.command)
            upstream.send_pdv(context_id, pdus.MCH_COMMAND | pdus.MCH_LAST, command)
            self._send_data_set(upstream, context_id, entry)
            _raw, response = upstream.read_response(meta.message_id)
        except GatewayError as exc:
            return int(exc.status), exc.reason, resend
        except OSError as exc:  # the entry file: it stays, and is tried again
            return Status.GATEWAY_ABORTED, f"spool read failed: {exc}", resend
        return response.status, response.error_comment, resend

    def _send_data_set(self, upstream: Upstream, context_id: int, entry: Entry) -> None:
        with open(entry.path, "rb") as file:
            left = entry.size
            if not left:
                upstream.send_pdv(context_id, pdus.MCH_LAST, memoryview(b""))
            while left:
                chunk = file.read(min(left, _READ_CHUNK))
                if not chunk:
                    raise OSError(f"{entry.path.name} ends early")
                left -= len(chunk)
                upstream.send_pdv(context_id, 0 if left else pdus.MCH_LAST, memoryview(chunk))

    def _context_for(self, gateway: Gateway, entry: Entry) -> int | None:
        """The context of an association to `gateway` that carries `entry`; opened if need be."""
        pair = (entry.meta.sop_class_uid, entry.meta.transfer_syntax)
        calling = self._calling_ae(entry)
        upstream = self._upstream
        if upstream is not None and (
            not upstream.is_open
            or upstream.gateway != gateway
            or self._calling != calling
            or not upstream.check_alive()
        ):
            self._close(release=upstream.is_open)
            upstream = None
        if upstream is not None and pair in self._contexts:
            return self._contexts[pair]
        if upstream is not None:
            self._close(release=True)
        return self._open(gateway, pair, calling)

    def _calling_ae(self, entry: Entry) -> str:
        config = self._forwarder.config
        return entry.meta.calling_ae if config.forward_calling_ae else config.ae_title

    def _open(self, gateway: Gateway, pair: tuple[str, str], calling: str) -> int | None:
        forwarder = self._forwarder
        config = forwarder.config
        pairs = [pair, *self._waiting_pairs(pair)][:_MAX_CONTEXTS]
        contexts = [
            AcceptedContext(context_id=2 * i + 1, abstract_syntax=sop, transfer_syntax=ts)
            for i, (sop, ts) in enumerate(pairs)
        ]
        gateway_tls = forwarder.gateway_tls
        upstream = Upstream(
            gateway=gateway,
            address=config.resolve(gateway.host, gateway.port),
            contexts=contexts,
            calling_ae=calling,
            max_pdu=config.max_pdu,
            timeout=config.gateway_timeout,
            connect_timeout=config.connect_timeout,
            tls=gateway_tls.current() if gateway_tls is not None else None,
        )
        upstream.open()
        self._upstream = upstream
        self._calling = calling
        self._contexts = {
            (cx.abstract_syntax, cx.transfer_syntax): cx.context_id
            for cx in contexts
            if cx.context_id in upstream.usable_contexts
        }
        return self._contexts.get(pair)

    def _waiting_pairs(self, first: tuple[str, str]) -> list[tuple[str, str]]:
        queue = self._forwarder.queue
        entries = [e for waiting in queue.entries().values() for e in waiting]
        seen = {first}
        pairs: list[tuple[str, str]] = []
        for entry in entries:
            pair = (entry.meta.sop_class_uid, entry.meta.transfer_syntax)
            if pair not in seen:
                seen.add(pair)
                pairs.append(pair)
        return pairs

    def _close(self, *, release: bool) -> None:
        upstream = self._upstream
        self._upstream = None
        self._contexts = {}
        if upstream is None:
            return
        if release and upstream.is_open:
            upstream.release()
        else:
            upstream.abort()
