"""One incoming association, served on its own thread, start to end.

The data path: each PDV of a C-STORE data set is fed to the scanner; until
the StudyInstanceUID is known the fragments wait in a short buffer, then the
command and the buffer go to the gateway that owns the study's bucket, and
every later fragment follows as soon as it arrives. The sender gets the
gateway's own response, or a named failure status when no gateway holds the
instance.

How the data set's bytes reach the gateway, copied or spliced in the
kernel, is :mod:`gatewaypool_router.forwarding`'s; this module decides.

With a spool (``--spool-dir``), an instance whose gateway cannot take it
now (or every instance, with ``--spool-when Always``) is written to the
spool and answered Success once it is durable there; see
:mod:`gatewaypool_router.spool`.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from gatewaypool.bucketmap import BucketMap, Gateway
from gatewaypool.hashing import study_bucket
from gatewaypool.logs import log_event
from gatewaypool_router import dimse, negotiation, pdus, tls
from gatewaypool_router.bucketusage import BucketUsage
from gatewaypool_router.catalog import GatewayCatalog
from gatewaypool_router.config import RouterConfig
from gatewaypool_router.forwarding import HEADERS_AHEAD, Forwarder, Instance, splicer_for
from gatewaypool_router.mapsource import MapHolder
from gatewaypool_router.metrics import RouterMetrics
from gatewaypool_router.negotiation import AcceptedContext, AssociationRequest
from gatewaypool_router.progress import Progress, pdu_name
from gatewaypool_router.scanner import ScanState, new_scanner
from gatewaypool_router.spool.decide import diverts
from gatewaypool_router.spool.intake import SpoolIntake
from gatewaypool_router.spool.store import Meta, SpoolFullError
from gatewaypool_router.statuses import Status, outcome
from gatewaypool_router.studiesinflight import StudiesInFlight
from gatewaypool_router.studyrecorder import StudyRecorder
from gatewaypool_router.tls import ReloadingContext
from gatewaypool_router.upstream import GatewayError, Upstream

log = logging.getLogger(__name__)

_MAX_COMMAND = 64 * 1024

#: After an A-ABORT to the sender, how long it may take to close its side.
_ABORT_DRAIN = 2.0
#: Command elements a REQUEST_MALFORMED names as Offending Element.
_AFFECTED_SOP_CLASS_UID = 0x00000002
_AFFECTED_SOP_INSTANCE_UID = 0x00001000
_COMMAND_DATA_SET_TYPE = 0x00000800


_SCAN_FAILURES = {
    ScanState.MISSING: Status.STUDY_UID_MISSING,
    ScanState.INVALID_UID: Status.STUDY_UID_INVALID,
    ScanState.MALFORMED: Status.DATASET_MALFORMED,
}


class _AbortError(Exception):
    """End the association with an A-ABORT; the message says why.

    ``source`` and ``reason`` are the A-ABORT's (PS3.8 Table 9-26): the
    upper-layer provider with a reason for a PDU that breaks PS3.8 (AA-8),
    the service user, reason not significant, for the router's own
    decisions (DIMSE faults, an idle sender: AA-1).
    """

    def __init__(
        self,
        message: str,
        *,
        source: int = pdus.ABORT_SOURCE_PROVIDER,
        reason: int = pdus.REASON_UNEXPECTED_PDU,
    ) -> None:
        super().__init__(message)
        self.source = source
        self.reason = reason if source == pdus.ABORT_SOURCE_PROVIDER else pdus.REASON_NOT_SPECIFIED

    @classmethod
    def by_user(cls, message: str) -> _AbortError:
        return cls(message, source=pdus.ABORT_SOURCE_USER)

    @classmethod
    def from_protocol(cls, exc: pdus.ProtocolError) -> _AbortError:
        return cls(str(exc), reason=exc.reason)


@dataclass(slots=True)
class _Tally:
    instances: int = 0
    failed: int = 0
    size: int = 0
    gateways: set[str] = field(default_factory=set)


class IncomingAssociation:
    """Serve one sender: negotiate, route its instances, release or abort."""

    def __init__(
        self,
        sock: socket.socket,
        peer: str,
        *,
        config: RouterConfig,
        metrics: RouterMetrics,
        maps: MapHolder,
        usage: BucketUsage,
        studies: StudiesInFlight,
        secure: bool = False,
        client_subject: str | None = None,
        gateway_tls: ReloadingContext | None = None,
        catalog: GatewayCatalog | None = None,
        spool: SpoolIntake | None = None,
        record: StudyRecorder | None = None,
    ) -> None:
        """Prepare to serve `sock`; nothing is read before :meth:`serve`.

        Parameters
        ----------
        secure
            `sock` is a TLS connection whose handshake is done.
        client_subject
            The subject (RFC 4514) of the caller's verified certificate, if it
            presented one.
        gateway_tls
            The context for TLS to gateways (``--gateway-tls-ca``), if any.
        catalog
            What the gateways accept and whether any is reachable: decides
            which contexts are accepted, and refuses associations while no
            map is loaded or no gateway can be reached. Without one every
            association is admitted and every storage context accepted.
        spool
            The router's spool (``--spool-dir``), if any.
        record
            The router's record of studies (``GET /studies/UID``), if any.
        """
        self._record = record
        self._catalog = catalog
        self._spool = spool
        self._sock = sock
        self._secure = secure
        self._client_subject = client_subject
        self._gateway_tls = gateway_tls
        self._peer = peer
        self._config = config
        self._metrics = metrics
        self._maps = maps
        self._usage = usage
        self._studies = studies
        self.progress = Progress()
        splicer = splicer_for(config, secure=secure, gateway_tls=gateway_tls)
        capacity = max(config.max_pdu + 6, 65536)
        self._reader = pdus.SocketReader(
            sock,
            capacity=capacity,
            read_ahead=capacity if splicer is None else HEADERS_AHEAD,
        )
        self._forwarder = Forwarder(
            self,
            sock=sock,
            reader=self._reader,
            splicer=splicer,
            progress=self.progress,
            max_pdu=config.max_pdu,
        )
        self._request: AssociationRequest | None = None
        self._contexts: dict[int, AcceptedContext] = {}
        self._upstreams: dict[tuple[str, int, str], Upstream] = {}
        self._command = bytearray()
        self._instance: Instance | None = None
        self._peer_max_pdu = 0
        self._tally = _Tally()
        self._started = time.monotonic()
        #: An A-ABORT went out: the connection ends gracefully after it.
        self._aborted = False

    # -- life cycle -------------------------------------------------------

    def serve(self, *, over_limit: bool) -> None:
        """Run the association to its end; never raises."""
        result = "aborted"
        try:
            if not self._negotiate(over_limit=over_limit):
                return
            self._metrics.active_associations.inc()
            try:
                result = self._data_phase()
            finally:
                self._metrics.active_associations.dec()
        except _AbortError as exc:
            result = "aborted"
            log_event(
                log, logging.WARNING, "association.protocol_error", **self.who(), reason=str(exc)
            )
            self._send_quietly(pdus.abort_pdu(exc.source, exc.reason))
            self._aborted = True
        except (pdus.PeerClosedError, OSError) as exc:
            result = "lost"
            log_event(log, logging.WARNING, "association.lost", **self.who(), reason=str(exc))
        except Exception:
            result = "aborted"
            log.exception("association.crashed peer=%s", self._peer)
            self._send_quietly(pdus.abort_pdu())
            self._aborted = True
        finally:
            if self._request is not None:
                self._finish(result)
            self._close(released=result == "released")

    def who(self) -> dict[str, object]:
        who: dict[str, object] = {"peer": self._peer}
        if self._request is not None:
            who["calling_ae"] = self._request.calling_ae
            who["called_ae"] = self._request.called_ae
        return who

    def _finish(self, result: str) -> None:
        for upstream in self._upstreams.values():
            if result == "released":
                upstream.release()
            else:
                upstream.abort()
        self._upstreams.clear()
        self._metrics.associations.labels(result=result).inc()
        now = time.monotonic()
        # How it ended is diagnosed from what it did last (issue 7: a sender
        # that aborts 30 s after our last response lost that response).
        state = self.progress.describe(now) if result != "released" else {}
        log_event(
            log,
            logging.INFO if result == "released" else logging.WARNING,
            f"association.{result}",
            **self.who(),
            instances=self._tally.instances,
            failed=self._tally.failed,
            bytes=self._tally.size,
            gateways=sorted(self._tally.gateways),
            seconds=round(now - self._started, 3),
            **state,
        )

    def _close(self, *, released: bool = False) -> None:
        if self._instance is not None and self._instance.spool is not None:
            self._instance.spool.discard()  # never acknowledged: never stored
        self._forwarder.close()
        if released:
            tls.close_notify(self._sock)
        if self._aborted:
            # Let the peer read the A-ABORT rather than a reset (PS3.8 Sta13).
            self._reader.close()
            pdus.drain_and_close(self._sock, timeout=_ABORT_DRAIN)
            return
        try:
            self._reader.close()
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def _send_quietly(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self._sock.sendall(data)

    # -- association establishment ---------------------------------------

    def _refuse(self, refusal: negotiation.Refusal) -> bool:
        self._metrics.refusals.labels(reason=refusal.reason).inc()
        self._metrics.associations.labels(result="rejected").inc()
        if refusal.reason == negotiation.CALLER_SUBJECT_MISMATCH.reason:
            self._log_subject_mismatch(refusal)
        log_event(log, logging.WARNING, "association.rejected", **self.who(), reason=refusal.reason)
        self._send_quietly(refusal.pdu())
        self._request = None  # nothing to summarise
        return False

    def _negotiate(self, *, over_limit: bool) -> bool:
        """Read the A-ASSOCIATE-RQ and answer it (PS3.8 Sta2, then Sta3).

        ``--acse-timeout`` bounds the whole request, however slowly its bytes
        come. Before a request there is no association to abort: when that
        time passes (the ARTIM timer), or the peer sends an A-ABORT, the
        connection is closed (AA-2); anything else that is not a request is
        answered with an A-ABORT (AA-1), then closed.
        """
        pdu = self._read_request()
        if pdu is None:
            return False
        blank = negotiation.blank_ae_title(pdu.raw())
        if blank is not None:
            return self._refuse(blank)
        try:
            request = negotiation.parse_request(pdu.raw())
        except Exception as exc:  # pynetdicom raises assorted errors on garbage
            return self._not_dicom(f"undecodable A-ASSOCIATE-RQ: {exc}")
        self._request = request
        self._peer_max_pdu = request.max_pdu
        config = self._config
        refusal = negotiation.admit(
            request,
            config,
            secure=self._secure,
            client_subject=self._client_subject,
            over_limit=over_limit,
            gateways_unavailable=self._admission_check(),
        )
        if refusal is not None:
            return self._refuse(refusal)
        policy = None
        if self._catalog is not None:
            proposed = request.primitive.presentation_context_definition_list
            policy = self._catalog.policy_for(
                [
                    (str(cx.abstract_syntax), str(ts))
                    for cx in proposed
                    if cx.abstract_syntax
                    for ts in cx.transfer_syntax
                ],
                request.extended,
            )
        accept_pdu, accepted = negotiation.accept(request, max_pdu=config.max_pdu, policy=policy)
        self._contexts = {cx.context_id: cx for cx in accepted}
        self.progress.read(pdu_name(pdu.type), len(pdu.body))
        self._sock.sendall(accept_pdu)
        self.progress.wrote("A-ASSOCIATE-AC", len(accept_pdu))
        log_event(
            log,
            logging.INFO,
            "association.accepted",
            **self.who(),
            contexts=len(accepted),
            max_pdu=request.max_pdu,
            tls=self._secure,
            client_subject=self._client_subject,
            forwarding="splice" if self._forwarder.splicing else "copy",
        )
        return True

    def _admission_check(self) -> Callable[[], str | None] | None:
        """What admission asks about the gateways: with a spool, only whether a map is loaded."""
        if self._spool is not None:
            maps = self._maps
            return lambda: "no_map" if maps.current is None else None
        return self._catalog.admit if self._catalog is not None else None

    def _read_request(self) -> pdus.Pdu | None:
        """The A-ASSOCIATE-RQ; None once anything else was answered (see `_negotiate`)."""
        self._reader.deadline = time.monotonic() + self._config.acse_timeout
        self.progress.wait("sender", "A-ASSOCIATE-RQ")
        try:
            pdu = pdus.read_pdu(self._reader, max_body=1 << 20)
        except pdus.PeerClosedError as exc:
            self._metrics.refusals.labels(reason="not_dicom").inc()
            log_event(log, logging.WARNING, "connection.closed", peer=self._peer, reason=str(exc))
            return None
        except TimeoutError:
            self._not_dicom("no association request in time", abort=False)
            return None
        except pdus.ProtocolError as exc:
            self._not_dicom(str(exc))
            return None
        finally:
            self._reader.deadline = None
        self._sock.settimeout(self._config.acse_timeout)
        if pdu.type == pdus.ABORT:
            self._not_dicom("A-ABORT instead of A-ASSOCIATE-RQ", abort=False)
            return None
        if pdu.type != pdus.ASSOCIATE_RQ:
            self._not_dicom(f"PDU type 0x{pdu.type:02X} instead of A-ASSOCIATE-RQ")
            return None
        return pdu

    def _log_subject_mismatch(self, refusal: negotiation.Refusal) -> None:
        """A calling AE title bound by ``--caller-subject`` came without its certificate."""
        assert self._request is not None
        subjects = self._config.subjects_for(self._request.calling_ae) or frozenset()
        log_event(
            log,
            logging.WARNING,
            "association.caller_subject_mismatch",
            **self.who(),
            reason=refusal.detail,
            subject=self._client_subject,
            expected=sorted(subjects),
        )

    def _not_dicom(self, reason: str, *, abort: bool = True) -> bool:
        self._metrics.refusals.labels(reason="not_dicom").inc()
        log_event(log, logging.WARNING, "connection.refused", peer=self._peer, reason=reason)
        if abort:
            # AA-1: the A-ABORT of Sta2 has the service-user source (PS3.8 9.2.2).
            self._send_quietly(pdus.abort_pdu(pdus.ABORT_SOURCE_USER))
            self._aborted = True
        return False

    # -- data transfer ----------------------------------------------------

    def _data_phase(self) -> str:
        self._sock.settimeout(self._config.idle_timeout)
        progress = self.progress
        while True:
            progress.wait("sender", "data set fragment" if self._instance else "next request")
            if self._instance is None and self._upstreams:
                self._await_sender()
            pdu = self._next_pdu()
            if pdu is None:
                continue  # a P-DATA-TF streamed as it came
            progress.read(pdu_name(pdu.type), len(pdu.body))
            if pdu.type == pdus.P_DATA_TF:
                try:
                    for pdv in pdus.iter_pdvs(pdu.body):
                        self.on_pdv(pdv)
                except pdus.ProtocolError as exc:
                    raise _AbortError.from_protocol(exc) from exc
            elif pdu.type == pdus.RELEASE_RQ:
                return self._release()
            elif pdu.type == pdus.ABORT:
                return "aborted"
            else:
                raise _AbortError(f"unexpected PDU type 0x{pdu.type:02X} during data transfer")

    def _next_pdu(self) -> pdus.Pdu | None:
        """The sender's next PDU; None when the splicing path streamed a P-DATA-TF itself."""
        try:
            return self._forwarder.next_pdu()
        except pdus.ProtocolError as exc:
            raise _AbortError.from_protocol(exc) from exc
        except TimeoutError as exc:
            raise _AbortError.by_user("idle timeout") from exc

    def _release(self) -> str:
        """Answer the sender's A-RELEASE-RQ, releasing every gateway's association first."""
        if self._instance is not None:
            raise _AbortError("release requested in the middle of a C-STORE")
        for upstream in self._upstreams.values():
            upstream.release()
        self._upstreams.clear()
        self._send_quietly(pdus.RELEASE_RP_PDU)
        return "released"

    # -- what the forwarder hands back (forwarding.Association) ------------

    @property
    def instance(self) -> Instance | None:
        return self._instance

    def data_set_sent(self, instance: Instance) -> None:
        self._instance = None
        self._answer(instance)

    def on_pdv(self, pdv: pdus.Pdv) -> None:
        context = self._contexts.get(pdv.context_id)
        if context is None:
            raise _AbortError(
                f"PDV on presentation context {pdv.context_id}, which was not accepted",
                reason=pdus.REASON_INVALID_PARAMETER,
            )
        if pdv.is_command:
            if self._instance is not None:
                raise _AbortError.by_user("command received before the data set in progress ended")
            self._command += pdv.data
            if len(self._command) > _MAX_COMMAND:
                raise _AbortError.by_user("command set larger than 64 KiB")
            if pdv.is_last:
                raw = bytes(self._command)
                self._command.clear()
                self._on_command(context, raw)
        else:
            instance = self._instance
            if instance is None or instance.context.context_id != pdv.context_id:
                raise _AbortError.by_user("data set fragment without a C-STORE request")
            self.on_data(instance, pdv)

    def _on_command(self, context: AcceptedContext, raw: bytes) -> None:
        try:
            command = dimse.parse_request(raw)
        except dimse.CommandError as exc:
            raise _AbortError.by_user(str(exc)) from exc
        if command.field == dimse.C_ECHO_RQ:
            self._reply(context, dimse.echo_response(request=command))
            return
        if command.field != dimse.C_STORE_RQ:
            raise _AbortError.by_user(f"unsupported DIMSE command 0x{command.field:04X}")
        self.progress.start_instance(command.sop_instance_uid)
        instance = Instance(
            context=context,
            command=command,
            raw_command=raw,
            scanner=new_scanner(context.transfer_syntax),
            started=time.monotonic(),
        )
        if context.is_verification:
            instance.fail(Status.SOP_CLASS_NOT_SUPPORTED, "C-STORE on Verification context")
        bad_uids = tuple(
            tag
            for tag, value in (
                (_AFFECTED_SOP_CLASS_UID, command.sop_class_uid),
                (_AFFECTED_SOP_INSTANCE_UID, command.sop_instance_uid),
            )
            if not dimse.is_uid(value)
        )
        if bad_uids:
            # No gateway can store it under that name (a gateway that cannot
            # decode the command would leave the sender waiting).
            instance.fail(
                Status.REQUEST_MALFORMED,
                "Affected SOP Class or Instance UID is no UID",
                offending=bad_uids,
            )
        if not command.has_data_set:
            instance.fail(
                Status.REQUEST_MALFORMED,
                "C-STORE request without a data set",
                offending=(_COMMAND_DATA_SET_TYPE,),
            )
            self._answer(instance)
            return
        self._instance = instance

    def on_data(self, instance: Instance, pdv: pdus.Pdv) -> None:
        instance.size += len(pdv.data)
        self.progress.received_bytes = instance.size
        complete = True
        if instance.failure is None:
            instance.scanner.feed(pdv.data)
            if pdv.is_last:
                complete = instance.scanner.finish()
        if instance.failure is None and not instance.routed:
            state = instance.scanner.state
            if state in _SCAN_FAILURES:
                instance.fail(_SCAN_FAILURES[state], instance.scanner.detail)
            else:
                instance.pending.append(pdv.data)
                instance.pending_bytes += len(pdv.data)
                if state is ScanState.FOUND:
                    self._route(instance, last=pdv.is_last, complete=complete)
                elif instance.pending_bytes > self._config.header_limit:
                    instance.fail(
                        Status.HEADER_TOO_LARGE,
                        f"no StudyInstanceUID in the first {self._config.header_limit} bytes",
                    )
        elif instance.failure is None:
            self._routed_data(instance, pdv, complete=complete)
        if pdv.is_last:
            self.data_set_sent(instance)

    def _routed_data(self, instance: Instance, pdv: pdus.Pdv, *, complete: bool) -> None:
        """A fragment of a routed instance: to its file (if any), and on to its gateway."""
        if instance.spool is not None:
            self._spool_write(instance, [pdv.data])
        if instance.upstream is not None:
            self._forwarder.forward(instance, pdv.data, last=pdv.is_last, complete=complete)
        elif pdv.is_last and not complete and instance.failure is None:
            instance.fail(Status.DATASET_MALFORMED, instance.scanner.detail or "truncated")

    def _spool_write(self, instance: Instance, fragments: list[memoryview]) -> None:
        writer = instance.spool
        assert writer is not None
        try:
            for fragment in fragments:
                writer.write(fragment)
        except OSError as exc:
            writer.discard()
            instance.spool = None
            if instance.spooled:
                instance.spooled = False
                instance.fail(Status.SPOOL_FULL, f"spool write failed: {exc.strerror}")

    def _to_spool(self, instance: Instance, *, last: bool, complete: bool) -> None:
        """Send a routed instance to the spool: what arrived so far goes to its file."""
        assert self._spool is not None
        writer = instance.spool or self._spool.writer()
        if writer is None:
            self._metrics.refusals.labels(reason="spool_full").inc()
            instance.fail(Status.SPOOL_FULL, "spool full")
            return
        pending = instance.pending if instance.spool is None else []
        instance.pending = []
        instance.pending_bytes = 0
        instance.spool = writer
        instance.spooled = True
        instance.upstream = None
        self.progress.instance_gateway = "spool"
        self._spool_write(instance, pending)
        if last and not complete and instance.failure is None:
            instance.fail(Status.DATASET_MALFORMED, instance.scanner.detail or "truncated")

    def _route(self, instance: Instance, *, last: bool, complete: bool) -> None:
        bucket_map = self._maps.current
        if bucket_map is None:
            instance.fail(Status.NO_MAP, "no bucket map loaded")
            return
        study_uid = instance.scanner.study_uid
        assert study_uid is not None
        bucket = study_bucket(study_uid, bucket_map.buckets)
        if bucket in bucket_map.closing:
            instance.held = True
            bucket_map = self._hold(instance, bucket, bucket_map)
        instance.map_version = bucket_map.version
        self._usage.routed(bucket, bucket_map.buckets)
        gateway = bucket_map.gateway_for(bucket)
        # Counted when routed, before the gateway is reached: a study sent to
        # a gateway that fails it is still load aimed at that gateway.
        self._studies.seen(study_uid, gateway.name)
        instance.gateway = gateway
        instance.bucket = bucket
        self.progress.instance_gateway = gateway.name
        if self._spool is not None:
            if self._spool.spool_first(bucket, gateway.name):
                self._to_spool(instance, last=last, complete=complete)
                return
            instance.spool = self._spool.copy()
            if instance.spool is not None:
                self._spool_write(instance, list(instance.pending))
        upstream = self._upstream_for(instance, gateway)
        if upstream is None:
            self._divert_pending(instance, last=last, complete=complete)
            return
        if instance.context.context_id not in upstream.usable_contexts:
            instance.fail(
                Status.SOP_CLASS_NOT_SUPPORTED,
                "gateway did not accept this SOP class and transfer syntax",
            )
            return
        instance.upstream = upstream
        self.progress.wait("gateway", "send")
        try:
            upstream.send_pdv(
                instance.context.context_id,
                pdus.MCH_COMMAND | pdus.MCH_LAST,
                memoryview(instance.raw_command),
            )
        except GatewayError as exc:
            self.gateway_failed(instance, exc)
            self._divert_pending(instance, last=last, complete=complete)
            return
        self.progress.wrote("C-STORE-RQ to gateway", len(instance.raw_command))
        pending = instance.pending
        instance.pending = []
        instance.pending_bytes = 0
        for index, fragment in enumerate(pending):
            is_last = last and index == len(pending) - 1
            self._forwarder.forward(instance, fragment, last=is_last, complete=complete)
            if instance.failure is not None or instance.upstream is None:
                return

    def _divert_pending(self, instance: Instance, *, last: bool, complete: bool) -> None:
        """The gateway failed before the data set went out; its copy holds what arrived."""
        instance.pending = []
        instance.pending_bytes = 0
        if instance.spooled and last and not complete and instance.failure is None:
            instance.fail(Status.DATASET_MALFORMED, instance.scanner.detail or "truncated")

    def _hold(self, instance: Instance, bucket: int, bucket_map: BucketMap) -> BucketMap:
        """Hold an instance of a closing bucket until a newer map says where it goes.

        A closing bucket is in the last step of its move: the operator saw it
        quiet on every router and waits for every router to confirm that it
        sends nothing more to the old owner. An instance that arrives now is
        held, not sent, and reported as a use; the next map either gives the
        bucket to its new owner or, seeing it in use, takes it out of closing
        (then the instance goes to the old owner). Past --closing-hold it goes
        to the old owner anyway, and the operator sees that use.
        """
        self._usage.hold(bucket)
        self._metrics.held_instances.inc()
        started = time.monotonic()
        deadline = started + self._config.closing_hold
        self.progress.wait("map", f"bucket {bucket} closing")
        try:
            while bucket in bucket_map.closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    log_event(
                        log,
                        logging.WARNING,
                        "instance.hold_expired",
                        **self.who(),
                        bucket=bucket,
                        seconds=round(time.monotonic() - started, 1),
                        sop_instance_uid=instance.command.sop_instance_uid,
                    )
                    break
                bucket_map = self._maps.wait_newer(bucket_map.version, remaining) or bucket_map
        finally:
            self._usage.release(bucket)
        return bucket_map

    def _upstream_for(self, instance: Instance, gateway: Gateway) -> Upstream | None:
        key = (gateway.host, gateway.port, gateway.ae_title)
        upstream = self._upstreams.get(key)
        if upstream is not None and upstream.is_open:
            if upstream.check_alive():
                return upstream
            self._upstream_ended(upstream)
        assert self._request is not None
        calling_ae = (
            self._request.calling_ae if self._config.forward_calling_ae else self._config.ae_title
        )
        usage = self._usage
        contexts = list(self._contexts.values())
        upstream = Upstream(
            gateway=gateway,
            address=self._config.resolve(gateway.host, gateway.port),
            contexts=contexts,
            # The sender's SOP Class Common Extended Negotiation, for its accepted classes.
            extended=[
                self._request.extended[cx.abstract_syntax]
                for cx in contexts
                if cx.abstract_syntax in self._request.extended
            ],
            calling_ae=calling_ae,
            max_pdu=self._config.max_pdu,
            timeout=self._config.gateway_timeout,
            connect_timeout=self._config.connect_timeout,
            on_close=lambda: usage.closed(gateway.name),
            tls=self._gateway_tls.current() if self._gateway_tls is not None else None,
        )
        try:
            upstream.open()
        except GatewayError as exc:
            self._upstreams.pop(key, None)
            if self._catalog is not None:
                self._catalog.reached(gateway, reachable=exc.answered)
            self.gateway_failed(instance, exc)
            return None
        if self._catalog is not None:
            self._catalog.reached(gateway, reachable=True, associated=True)
            if len(upstream.usable_contexts) < len(contexts):
                # Contexts the catalog said the gateway takes, refused: it may
                # have been redeployed with other settings (catalog.contradicted).
                self._catalog.contradicted(
                    gateway,
                    [
                        (cx.abstract_syntax, cx.transfer_syntax)
                        for cx in contexts
                        if cx.context_id not in upstream.usable_contexts and not cx.is_verification
                    ],
                )
        usage.opened(gateway.name)
        self._upstreams[key] = upstream
        self._tally.gateways.add(gateway.name)
        return upstream

    def _upstream_ended(self, upstream: Upstream) -> None:
        """The gateway ended an idle association (see :meth:`Upstream.check_alive`)."""
        self._metrics.upstream_ends.labels(
            gateway=upstream.gateway.name, reason=f"gateway_{upstream.ended_by}"
        ).inc()
        log_event(
            log,
            logging.INFO,
            "upstream.ended_by_gateway",
            **self.who(),
            gateway=upstream.gateway.name,
            how=upstream.ended_by,
            instances=upstream.instances,
        )
        self._upstreams = {k: u for k, u in self._upstreams.items() if u is not upstream}

    def _await_sender(self) -> None:
        """Wait for the sender's next request, minding the idle gateway associations.

        Between instances the upstreams are idle: a gateway may end one (its
        A-RELEASE-RQ is answered at once, not when the sender's release
        finally reaches it), and one idle for ``--gateway-idle-release`` is
        released here, before the gateway's own idle timeout could race with
        the sender's next instance. Returns once the sender has sent
        something; past ``--idle-timeout`` of silence, aborts.
        """
        config = self._config
        deadline = time.monotonic() + config.idle_timeout
        poller = select.poll()
        self._upstreams = {k: u for k, u in self._upstreams.items() if u.is_open}
        while self._upstreams and not self._sender_pending():
            now = time.monotonic()
            if now >= deadline:
                raise _AbortError.by_user("idle timeout")
            for upstream in list(self._upstreams.values()):
                if now - upstream.last_used >= config.gateway_idle_release:
                    self._release_idle(upstream, now - upstream.last_used)
                elif upstream.has_pending() and not upstream.check_alive():
                    self._upstream_ended(upstream)
            if not self._upstreams:
                return
            due = min(u.last_used for u in self._upstreams.values()) + config.gateway_idle_release
            wait = max(0.0, min(deadline, due) - now)
            fds = {self._sock.fileno(): None, **{u.fileno(): u for u in self._upstreams.values()}}
            for fd in fds:
                poller.register(fd, select.POLLIN)
            try:
                ready = poller.poll(wait * 1000)
            finally:
                for fd in fds:
                    poller.unregister(fd)
            for fd, _ in ready:
                woken = fds.get(fd)
                if woken is None:
                    return  # the sender: readable, or closed (the read will say)
                if not woken.check_alive():
                    self._upstream_ended(woken)

    def _sender_pending(self) -> bool:
        if self._reader.buffered:
            return True
        return isinstance(self._sock, ssl.SSLSocket) and self._sock.pending() > 0

    def _release_idle(self, upstream: Upstream, idle: float) -> None:
        upstream.release()
        self._metrics.upstream_ends.labels(
            gateway=upstream.gateway.name, reason="idle_release"
        ).inc()
        log_event(
            log,
            logging.INFO,
            "upstream.idle_released",
            **self.who(),
            gateway=upstream.gateway.name,
            idle_seconds=round(idle, 1),
            instances=upstream.instances,
        )
        self._upstreams = {k: u for k, u in self._upstreams.items() if u is not upstream}

    def gateway_failed(self, instance: Instance, exc: GatewayError) -> None:
        name = instance.gateway.name if instance.gateway is not None else "-"
        self._metrics.upstream_failures.labels(gateway=name, reason=exc.status.name.lower()).inc()
        instance.upstream = None
        if self._divert(instance, int(exc.status), exc.reason):
            instance.maybe_delivered = exc.status in (
                Status.GATEWAY_TIMEOUT,
                Status.GATEWAY_ABORTED,
            )
            return
        instance.fail(exc.status, exc.reason)

    def _divert(self, instance: Instance, status: int, reason: str) -> bool:
        """Send an instance its gateway failed to the spool, if its copy can go there."""
        if (
            self._spool is None
            or instance.spool is None
            or instance.failure is not None
            or not diverts(status)
        ):
            return False
        name = instance.gateway.name if instance.gateway is not None else "-"
        self._spool.availability.failed(name)
        instance.spooled = True
        instance.upstream = None
        log_event(
            log,
            logging.INFO,
            "instance.diverted_to_spool",
            **self.who(),
            gateway=name,
            status=f"0x{status:04X}",
            reason=reason,
            sop_instance_uid=instance.command.sop_instance_uid,
        )
        return True

    def _answer(self, instance: Instance) -> None:
        """Send the sender its C-STORE-RSP: the gateway's, or ours."""
        gateway_name = instance.gateway.name if instance.gateway is not None else "-"
        status: int
        if instance.failure is None and instance.upstream is not None:
            self.progress.wait("gateway", "C-STORE-RSP")
            try:
                raw, response = instance.upstream.read_response(instance.command.message_id)
            except GatewayError as exc:
                self.gateway_failed(instance, exc)
            else:
                self.progress.read("C-STORE-RSP from gateway", len(raw))
                status = response.status
                if self._divert(instance, status, response.error_comment or "gateway status"):
                    self._answer_spooled(instance)
                    return
                self._reply(instance.context, raw)
                if outcome(status) != "success":
                    log_event(
                        log,
                        logging.WARNING,
                        "instance.gateway_status",
                        **self.who(),
                        gateway=gateway_name,
                        status=f"0x{status:04X}",
                        comment=response.error_comment,
                        sop_instance_uid=instance.command.sop_instance_uid,
                    )
                self._count(instance, gateway_name, status)
                return
        if instance.failure is None and instance.spooled:
            self._answer_spooled(instance)
            return
        failure = instance.failure or Status.GATEWAY_ABORTED
        self._reply(
            instance.context,
            dimse.store_response(
                request=instance.command,
                status=failure,
                error_comment=instance.reason,
                offending=instance.offending,
            ),
        )
        if failure in (
            Status.STUDY_UID_MISSING,
            Status.STUDY_UID_INVALID,
            Status.DATASET_MALFORMED,
            Status.HEADER_TOO_LARGE,
            Status.REQUEST_MALFORMED,
            Status.SOP_CLASS_NOT_SUPPORTED,
        ):
            self._metrics.refusals.labels(reason=failure.name.lower()).inc()
        log_event(
            log,
            logging.WARNING,
            "instance.failed",
            **self.who(),
            gateway=gateway_name,
            status=f"0x{int(failure):04X}",
            status_name=failure.name,
            reason=instance.reason,
            sop_instance_uid=instance.command.sop_instance_uid,
            study_uid=instance.scanner.study_uid,
        )
        self._count(instance, gateway_name, int(failure))

    def _answer_spooled(self, instance: Instance) -> None:
        """Commit the instance to the spool, then answer Success; 0xA700 if it cannot."""
        writer = instance.spool
        assert writer is not None and self._request is not None and self._spool is not None
        command = instance.command
        meta = Meta(
            bucket=instance.bucket,
            study_uid=instance.scanner.study_uid or "",
            sop_class_uid=command.sop_class_uid,
            sop_instance_uid=command.sop_instance_uid,
            transfer_syntax=instance.context.transfer_syntax,
            command=instance.raw_command,
            message_id=command.message_id,
            calling_ae=self._request.calling_ae,
            spooled_at=time.time(),
        )
        self.progress.wait("spool", "fsync")
        try:
            seq = writer.commit(meta)
            if instance.maybe_delivered:
                self._spool.store.sent_before(seq)
        except (SpoolFullError, OSError) as exc:
            full = isinstance(exc, SpoolFullError)
            instance.spooled = False
            instance.fail(Status.SPOOL_FULL, "spool full" if full else f"spool write failed: {exc}")
            self._metrics.refusals.labels(reason="spool_full").inc()
            self._answer(instance)
            return
        status = Status.SUCCESS
        self._reply(instance.context, dimse.store_response(request=command, status=status))
        gateway_name = instance.gateway.name if instance.gateway is not None else "-"
        self._count(instance, gateway_name, int(status))

    def _count(self, instance: Instance, gateway_name: str, status: int) -> None:
        if instance.spool is not None:
            instance.spool.discard()  # a copy no longer needed (a committed file is not touched)
        self.progress.end_instance()
        result = outcome(status)
        self._tally.instances += 1
        self._tally.size += instance.size
        if result == "failure":
            self._tally.failed += 1
        study_uid = instance.scanner.study_uid
        if self._record is not None and study_uid is not None:
            self._record.answered(
                study_uid,
                gateway=instance.gateway.name if instance.gateway is not None else None,
                bucket=instance.bucket if instance.bucket >= 0 else None,
                map_version=instance.map_version,
                status=status,
                spooled=instance.spooled,
                held=instance.held,
            )
        self._metrics.record_instance(
            gateway=gateway_name,
            outcome=result,
            size=instance.size,
            seconds=time.monotonic() - instance.started,
        )

    def _reply(self, context: AcceptedContext, command: bytes) -> None:
        frames = pdus.pdv_frames(
            context.context_id,
            pdus.MCH_COMMAND | pdus.MCH_LAST,
            memoryview(command),
            max_body=self._peer_max_pdu,
        )
        self.progress.wait("sender", "send")
        pdus.send_buffers(self._sock, frames)
        self.progress.wrote("response to sender", len(command))
