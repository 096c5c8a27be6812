"""One association from the router to one gateway, on behalf of one sender.

Opened on the first instance routed to that gateway, with the contexts the
sender negotiated; carries the sender's PDVs through unchanged; released
when the sender releases, aborted when the sender aborts.

Gateways end idle associations of their own accord (Orthanc after
``DicomScpTimeout``, 30 s by default, with an A-ABORT; others with an
A-RELEASE-RQ or by closing the connection). Between instances the
association is therefore looked at before it is used again
(:meth:`Upstream.check_alive`, a read that does not wait): whatever the
gateway sent while idle ends it, a release request is answered, and the
caller opens a new association. Nothing of the next instance has gone out
yet, so its sender never sees it. The router also releases an upstream
idle for ``--gateway-idle-release`` seconds itself, before a gateway's own
timeout can race with the next instance.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable, Sequence

from gatewaypool.bucketmap import Gateway
from gatewaypool_router import negotiation, pdus
from gatewaypool_router.dimse import C_STORE_RSP, CommandError, Response, parse_response
from gatewaypool_router.negotiation import AcceptedContext, CommonExtended, ProposedContext
from gatewaypool_router.splice import SinkError, Splicer
from gatewaypool_router.statuses import Status
from gatewaypool_router.tls import close_notify

log = logging.getLogger(__name__)

#: After an A-ABORT, how long the gateway may take to close its side (see
#: :func:`pdus.drain_and_close`).
_ABORT_DRAIN = 1.0


class GatewayError(Exception):
    """The gateway could not take the instance; ``status`` goes to the sender."""

    def __init__(self, status: Status, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        #: Sender bytes a failed splice had already taken (see Upstream.splice_from).
        self.consumed = 0
        #: The gateway answered (it rejected the association, or its TLS
        #: certificate): it can be reached.
        self.answered = False


def _rejection_status(rejection: negotiation.Rejection) -> Status:
    """What a gateway's A-ASSOCIATE-RJ means for the sender's instance.

    A transient rejection (the gateway is busy) is worth a retry; a
    permanent one fails alike until someone changes the gateway's or the
    router's configuration, so the sender must not retry it forever.
    """
    if not rejection.permanent:
        return Status.GATEWAY_UNREACHABLE
    if rejection.calling_ae_refused:
        return Status.GATEWAY_REFUSED_CALLER
    return Status.GATEWAY_REJECTED


class Upstream:
    """A DICOM association to one gateway, driven synchronously."""

    def __init__(
        self,
        *,
        gateway: Gateway,
        address: tuple[str, int],
        contexts: Sequence[AcceptedContext | ProposedContext],
        calling_ae: str,
        max_pdu: int,
        timeout: float,
        connect_timeout: float,
        on_close: Callable[[], None] | None = None,
        tls: ssl.SSLContext | None = None,
        extended: Sequence[CommonExtended] = (),
    ) -> None:
        self.gateway = gateway
        self._extended = tuple(extended)
        self._on_close = on_close
        self.address = address
        self._contexts = list(contexts)
        self._calling_ae = calling_ae
        self._max_pdu = max_pdu
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._tls = tls
        self._sock: socket.socket | None = None
        self._reader: pdus.SocketReader | None = None
        #: When the association last finished an exchange (monotonic seconds).
        self.last_used = 0.0
        #: Why the gateway ended it while idle (see :meth:`check_alive`).
        self.ended_by = ""
        self.peer_max_pdu = 0
        self.usable_contexts: frozenset[int] = frozenset()
        #: The transfer syntax accepted, by usable context ID.
        self.accepted_syntaxes: dict[int, str] = {}
        self.instances = 0
        #: True while a PDU's header has gone out and not all its bytes (the
        #: splicing path writes a PDU in several steps). An A-ABORT written
        #: then would be read as the PDU's missing bytes, and could complete
        #: a truncated instance; :meth:`abort` resets the connection instead.
        self.pdu_open = False
        #: The response the native stream read (its command set), or what
        #: stopped it: :meth:`read_response` starts from it.
        self._read_early: bytes | BaseException | None = None

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    def open(self) -> None:
        """Connect and associate; raise GatewayError(GATEWAY_UNREACHABLE) on failure."""
        try:
            sock = socket.create_connection(self.address, timeout=self._connect_timeout)
        except OSError as exc:
            raise GatewayError(Status.GATEWAY_UNREACHABLE, f"connect failed: {exc}") from exc
        pdus.tune_socket(sock)
        if self._tls is not None:
            sock = self._handshake(sock, self._tls)
        sock.settimeout(self._timeout)
        capacity = max(self._max_pdu, 1 << 16) + 6
        reader = pdus.SocketReader(sock, capacity=capacity, read_ahead=capacity)
        try:
            sock.sendall(
                negotiation.build_request(
                    calling_ae=self._calling_ae,
                    called_ae=self.gateway.ae_title,
                    contexts=self._contexts,
                    max_pdu=self._max_pdu,
                    extended=self._extended,
                )
            )
            reply = pdus.read_pdu(reader, max_body=1 << 20)
        except (OSError, pdus.PeerClosedError, pdus.ProtocolError) as exc:
            sock.close()
            raise GatewayError(Status.GATEWAY_UNREACHABLE, f"association failed: {exc}") from exc
        if reply.type == pdus.ASSOCIATE_RJ:
            sock.close()
            try:
                rejection = negotiation.parse_rejection(reply.raw())
            except Exception as exc:  # pynetdicom raises assorted errors on bad PDUs
                raise GatewayError(
                    Status.GATEWAY_UNREACHABLE, f"undecodable A-ASSOCIATE-RJ: {exc}"
                ) from exc
            error = GatewayError(_rejection_status(rejection), f"association rejected: {rejection}")
            error.answered = True
            raise error
        if reply.type != pdus.ASSOCIATE_AC:
            sock.close()
            raise GatewayError(
                Status.GATEWAY_UNREACHABLE, f"unexpected PDU 0x{reply.type:02X} instead of AC"
            )
        try:
            acceptance = negotiation.parse_acceptance(reply.raw(), self._contexts)
        except Exception as exc:  # pynetdicom raises assorted errors on bad PDUs
            sock.close()
            raise GatewayError(Status.GATEWAY_UNREACHABLE, f"undecodable AC: {exc}") from exc
        self.peer_max_pdu = acceptance.max_pdu
        self.usable_contexts = acceptance.context_ids
        self.accepted_syntaxes = acceptance.syntaxes
        self._sock = sock
        self._reader = reader
        self.last_used = time.monotonic()

    def fileno(self) -> int:
        """The socket's descriptor, for ``poll`` (-1 once closed)."""
        return self._sock.fileno() if self._sock is not None else -1

    def stream_target(self) -> tuple[int, float | None]:
        """The socket's descriptor and timeout, for the native stream to write to.

        Only between instances' reads: nothing of the gateway's may be
        buffered, and the socket is a plain TCP one (splicing never runs
        over TLS).
        """
        if self._sock is None:
            raise GatewayError(Status.GATEWAY_ABORTED, "association is closed")
        return self._sock.fileno(), self._sock.gettimeout()

    @property
    def response_max_body(self) -> int:
        """The longest response PDU body :meth:`read_response` accepts."""
        return max(self._max_pdu, 1 << 16)

    def read_natively(self, code: int, command: bytes | None, unread: bytes, errno_: int) -> None:
        """Take what the native stream read of the response (``_native.stream_pdus``).

        ``code``: 0 nothing read; 1 the command set, whole; 2 something else,
        all of it in ``unread``, which goes back to the reader for
        :meth:`read_response` to go on from; 3 the gateway's timeout passed;
        4 the read failed (``errno_``). :meth:`read_response` then answers
        as if it had read or failed itself, with the same errors.
        """
        if unread and self._reader is not None:
            self._reader.push_back(unread)
        if code == 1:
            self._read_early = command
        elif code == 3:
            self._read_early = TimeoutError("timed out")
        elif code == 4:
            self._read_early = OSError(errno_, os.strerror(errno_))

    def has_pending(self) -> bool:
        """Bytes from the gateway already read from the socket, not yet looked at."""
        if self._reader is not None and self._reader.buffered:
            return True
        return isinstance(self._sock, ssl.SSLSocket) and self._sock.pending() > 0

    def check_alive(self) -> bool:
        """Whether the idle association can carry the next instance.

        A zero-timeout read: nothing waiting means alive. Anything the
        gateway sent between instances ends the association here: an
        A-RELEASE-RQ is answered with an A-RELEASE-RP (PS3.8 Sta8), an
        A-ABORT or a closed connection is taken as it is, any other PDU is
        answered with an A-ABORT: from the service user for a P-DATA-TF (no
        response is due: a DIMSE fault), from the provider with the reason
        (PS3.8 Table 9-26) for a PDU that is invalid or out of place.
        :attr:`ended_by` then says which.
        """
        if self._sock is None or self._reader is None:
            return False
        try:
            if not self._reader.poll():
                return True
            pdu = pdus.read_pdu(self._reader, max_body=max(self._max_pdu, 1 << 16))
        except (pdus.PeerClosedError, ConnectionError) as exc:
            self.ended_by = "closed"
            log.debug("gateway %s closed an idle association: %s", self.gateway.address(), exc)
            self.close()
            return False
        except pdus.ProtocolError as exc:
            self.ended_by = "broken"
            log.debug("idle association to %s broke: %s", self.gateway.address(), exc)
            self.abort(reason=exc.reason, source=pdus.ABORT_SOURCE_PROVIDER)
            return False
        except OSError as exc:
            self.ended_by = "broken"
            log.debug("idle association to %s broke: %s", self.gateway.address(), exc)
            self.abort()
            return False
        if pdu.type == pdus.RELEASE_RQ:
            self.ended_by = "released"
            with contextlib.suppress(OSError):
                self._sock.sendall(pdus.RELEASE_RP_PDU)
                close_notify(self._sock)
            self.close()
        elif pdu.type == pdus.ABORT:
            self.ended_by = "aborted"
            self.close()
        elif pdu.type == pdus.P_DATA_TF:
            self.ended_by = "unexpected_pdu"
            self.abort()
        else:
            self.ended_by = "unexpected_pdu"
            self.abort(reason=pdus.REASON_UNEXPECTED_PDU, source=pdus.ABORT_SOURCE_PROVIDER)
        return False

    def _handshake(self, sock: socket.socket, context: ssl.SSLContext) -> ssl.SSLSocket:
        """TLS to the gateway: its chain must verify and name the map's host for it.

        The host name checked is the gateway's in the map (its DNS name or
        IP address), not where ``--connect-to`` sends the connection.
        """
        try:
            return context.wrap_socket(sock, server_hostname=self.gateway.host)
        except ssl.SSLError as exc:
            sock.close()
            if isinstance(exc, ssl.SSLCertVerificationError):
                why = f"TLS: gateway certificate not verified: {exc.verify_message}"
            else:
                why = f"TLS handshake failed: {exc.reason or exc}"
            error = GatewayError(Status.GATEWAY_TLS_FAILED, why)
            # It answered in TLS: it can be reached, and each instance says what is wrong.
            error.answered = True
            raise error from exc
        except TimeoutError as exc:
            sock.close()
            raise GatewayError(Status.GATEWAY_TLS_FAILED, "TLS handshake timed out") from exc
        except OSError as exc:
            sock.close()
            raise GatewayError(
                Status.GATEWAY_TLS_FAILED, f"TLS handshake failed: {exc.strerror or exc}"
            ) from exc

    def send(self, buffers: list[bytes | memoryview], *, more: bool = False) -> None:
        """Write raw PDU buffers; raise GatewayError(GATEWAY_ABORTED) if the link fails.

        ``more``: the rest of the PDU follows at once (see :func:`pdus.send_buffers`).
        """
        if self._sock is None:
            raise GatewayError(Status.GATEWAY_ABORTED, "association is closed")
        try:
            pdus.send_buffers(self._sock, buffers, more=more)
        except TimeoutError as exc:
            # Part of these buffers may be out: the connection is reset, never
            # followed by an A-ABORT the gateway would read as the PDU's rest.
            self.pdu_open = True
            self.abort()
            raise GatewayError(Status.GATEWAY_TIMEOUT, "gateway stopped reading") from exc
        except OSError as exc:
            self.close()
            raise GatewayError(Status.GATEWAY_ABORTED, f"send failed: {exc}") from exc

    def splice_from(
        self,
        splicer: Splicer,
        source: socket.socket,
        size: int,
        *,
        more: bool,
        on_wait: Callable[[bool], None] | None = None,
    ) -> int:
        """Move ``size`` bytes from the sender's socket to the gateway, in the kernel.

        Failures on the sender's side (closed, silent, reset) pass through as
        they come from :meth:`Splicer.move`; the gateway's side turns into
        GatewayError like :meth:`send`, whose ``consumed`` says how many of
        the ``size`` bytes were taken from the sender all the same.

        Returns
        -------
        int
            ``size``: every byte was moved.
        """
        if self._sock is None:
            raise GatewayError(Status.GATEWAY_ABORTED, "association is closed")
        try:
            splicer.move(source, self._sock, size, more=more, on_wait=on_wait)
        except SinkError as exc:
            if exc.timeout:
                self.abort()
                error = GatewayError(Status.GATEWAY_TIMEOUT, "gateway stopped reading")
            else:
                self.close()
                error = GatewayError(Status.GATEWAY_ABORTED, f"send failed: {exc}")
            error.consumed = exc.consumed
            raise error from exc
        return size

    def send_pdv(self, context_id: int, control: int, data: memoryview) -> None:
        """Send one PDV, split to the gateway's maximum PDU length if needed."""
        self.send(pdus.pdv_frames(context_id, control, data, max_body=self.peer_max_pdu))

    def read_response(self, message_id: int) -> tuple[bytes, Response]:
        """Wait for the C-STORE-RSP to ``message_id``: (raw command set, parsed)."""
        if self._reader is None:
            raise GatewayError(Status.GATEWAY_ABORTED, "association is closed")
        early, self._read_early = self._read_early, None
        try:
            if isinstance(early, BaseException):
                raise early
            return self._response(
                self._read_command(self._reader) if early is None else early, message_id
            )
        except TimeoutError as exc:
            self.abort()
            raise GatewayError(Status.GATEWAY_TIMEOUT, "no response from gateway") from exc
        except pdus.ProtocolError as exc:
            self.abort(source=pdus.ABORT_SOURCE_PROVIDER, reason=exc.reason)
            raise GatewayError(Status.GATEWAY_ABORTED, f"response lost: {exc}") from exc
        except (pdus.PeerClosedError, CommandError, OSError) as exc:
            self.abort()
            raise GatewayError(Status.GATEWAY_ABORTED, f"response lost: {exc}") from exc

    def _read_command(self, reader: pdus.SocketReader) -> bytes:
        """Read the gateway's next command set, whole; GatewayError if it aborts or strays."""
        command = bytearray()
        while True:
            pdu = pdus.read_pdu(reader, max_body=self.response_max_body)
            if not command and pdu.type == pdus.P_DATA_TF:
                whole = pdus.sole_command(pdu.body)
                if whole is not None:  # nearly always: the response in one PDV
                    return whole
            if pdu.type == pdus.ABORT:
                self.close()
                raise GatewayError(Status.GATEWAY_ABORTED, "gateway aborted the association")
            if pdu.type != pdus.P_DATA_TF:
                self.abort(source=pdus.ABORT_SOURCE_PROVIDER, reason=pdus.REASON_UNEXPECTED_PDU)
                raise GatewayError(
                    Status.GATEWAY_ABORTED, f"unexpected PDU 0x{pdu.type:02X} from gateway"
                )
            for pdv in pdus.iter_pdvs(pdu.body):
                if not pdv.is_command:
                    continue  # a C-STORE-RSP carries no data set; ignore stray data
                command += pdv.data
                if pdv.is_last:
                    return bytes(command)

    def _response(self, raw: bytes, message_id: int) -> tuple[bytes, Response]:
        """The whole response command set `raw`: parsed, if it answers `message_id`."""
        field, response = parse_response(raw)
        if field != C_STORE_RSP or response.message_id != message_id:
            self.abort()
            raise GatewayError(
                Status.GATEWAY_ABORTED,
                f"unexpected response 0x{field:04X} to message {response.message_id}",
            )
        self.instances += 1
        self.last_used = time.monotonic()
        return raw, response

    def release(self) -> None:
        """Release the association politely; abort it if the gateway does not answer."""
        if self._sock is None or self._reader is None:
            return
        try:
            self._sock.sendall(pdus.RELEASE_RQ_PDU)
            while True:
                pdu = pdus.read_pdu(self._reader, max_body=max(self._max_pdu, 1 << 16))
                if pdu.type in (pdus.RELEASE_RP, pdus.ABORT):
                    break
                if pdu.type == pdus.RELEASE_RQ:
                    # Release collision, we being the requestor (PS3.8 Sta9):
                    # answer theirs, then wait for the answer to ours.
                    self._sock.sendall(pdus.RELEASE_RP_PDU)
        except (OSError, pdus.PeerClosedError, pdus.ProtocolError) as exc:
            log.debug("release of %s failed: %s", self.gateway.address(), exc)
            self.abort()
            return
        close_notify(self._sock)
        self.close()

    def abort(
        self, *, source: int = pdus.ABORT_SOURCE_USER, reason: int = pdus.REASON_NOT_SPECIFIED
    ) -> None:
        """Abort at once: the gateway drops whatever instance was in flight.

        The A-ABORT says who ends it (PS3.8 Table 9-26): the router as the
        service user (its sender went away, a data set was truncated, the
        gateway timed out), reason not significant; or as the service
        provider with a reason, when the gateway broke the protocol.

        Between PDUs that is an A-ABORT, if the socket takes its ten bytes
        without waiting. In the middle of a PDU, or when the gateway has
        stopped reading and the send buffer is full, the connection is reset
        (``SO_LINGER`` 0): the gateway sees its association end with a PDU
        cut short, which no DICOM peer can take for a complete instance, and
        the router never waits a second ``--gateway-timeout`` to say so.
        """
        if self._sock is not None:
            with contextlib.suppress(OSError):
                if self.pdu_open or not self._send_at_once(pdus.abort_pdu(source, reason)):
                    self._sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                    self._sock.close()
                else:
                    pdus.drain_and_close(self._sock, timeout=_ABORT_DRAIN)
        self.close()

    def _send_at_once(self, data: bytes) -> bool:
        """Send `data` if the socket takes all of it without blocking."""
        assert self._sock is not None
        self._sock.settimeout(0)
        try:
            return self._sock.send(data) == len(data)
        except OSError:  # BlockingIOError included: the buffer is full
            return False

    def close(self) -> None:
        self._read_early = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._sock is not None:
            if self._sock.fileno() >= 0:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_RDWR)
                self._sock.close()
            self._sock = None
            if self._on_close is not None:
                self._on_close()
