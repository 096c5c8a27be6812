"""DICOM over TLS on both legs: contexts, their reload, and the caller's subject.

PS3.15 Annex B.9 (the BCP 195 secure transport profile): TLS 1.2 at least,
and on TLS 1.2 only ECDHE key exchange with AES-GCM; TLS 1.3 keeps
OpenSSL's own suites, which are all AEAD. The profile's DHE suites are not
offered: they need Diffie-Hellman parameters that Python's ssl module
loads only from a file (RFC 7919 groups), and every peer that has DHE has
ECDHE. The retired profiles (PS3.15 B.1 to B.8: TLS 1.0 and 1.1, AES-CBC,
3DES) are refused in the handshake.

Certificates rotate under a running router: Kubernetes swaps a Secret
volume's files at once (a symlink to a new folder), cert-manager renews
before expiry. A :class:`ReloadingContext` looks at its files' identity
(device, inode, size, modification time, following symlinks) whenever a
context is asked for, at most every :data:`RECHECK_SECONDS`, and builds a
new context when they changed. A connection keeps the context it was
handshaken with, so open associations are not touched. A new file that
does not load (a half-written rotation, a key that does not match) keeps
the old context, logs an error once per change, and is tried again when
the files change again.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gatewaypool.contract import SUBJECT_ATTRIBUTE_TYPES
from gatewaypool.logs import log_event

if TYPE_CHECKING:
    from gatewaypool_router.config import RouterConfig

log = logging.getLogger(__name__)

#: TLS 1.2 suites of the BCP 195 profile (OpenSSL names): elliptic-curve
#: ephemeral Diffie-Hellman with AES-GCM only (see the module docstring for
#: DHE). TLS 1.3 suites are not set by this.
BCP195_CIPHERS = ":".join(
    (
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
    )
)

#: The longest a rotated file goes unnoticed while connections keep coming.
RECHECK_SECONDS = 2.0

_FileId = tuple[int, int, int, int] | None


class TlsFileError(ValueError):
    """A certificate, key or CA file that does not load; the message names it."""


def _file_id(path: Path) -> _FileId:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _base_context(purpose: int) -> ssl.SSLContext:
    protocol = ssl.PROTOCOL_TLS_SERVER if purpose == _SERVER else ssl.PROTOCOL_TLS_CLIENT
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return context


_SERVER = 1
_CLIENT = 2


def server_context(cert: Path, key: Path, client_ca: Path | None) -> ssl.SSLContext:
    """The inbound context: our certificate, and with `client_ca`, mutual TLS.

    Raises
    ------
    TlsFileError
        If a file is missing or does not load.
    """
    context = _base_context(_SERVER)
    _load_chain(context, cert, key, "--tls-cert", "--tls-key")
    if client_ca is not None:
        _load_ca(context, client_ca, "--tls-client-ca")
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def gateway_context(ca: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    """The outbound context: verify the gateway's chain and host name against `ca`."""
    context = _base_context(_CLIENT)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    _load_ca(context, ca, "--gateway-tls-ca")
    if cert is not None and key is not None:
        _load_chain(context, cert, key, "--gateway-tls-cert", "--gateway-tls-key")
    return context


def _load_chain(
    context: ssl.SSLContext, cert: Path, key: Path, cert_option: str, key_option: str
) -> None:
    for option, path in ((cert_option, cert), (key_option, key)):
        if not path.is_file():
            raise TlsFileError(f"{option}: {path}: no such file")
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except (ssl.SSLError, OSError) as exc:
        raise TlsFileError(
            f"{cert_option} {cert} / {key_option} {key}: cannot load the certificate chain "
            f"and its key ({exc})"
        ) from exc


def _load_ca(context: ssl.SSLContext, ca: Path, option: str) -> None:
    if not ca.is_file():
        raise TlsFileError(f"{option}: {ca}: no such file")
    try:
        context.load_verify_locations(cafile=ca)
    except (ssl.SSLError, OSError) as exc:
        raise TlsFileError(f"{option} {ca}: no CA certificate in it ({exc})") from exc


class ReloadingContext:
    """An SSL context rebuilt when its files change on disk.

    Parameters
    ----------
    build
        Makes a context from the files (raises TlsFileError).
    paths
        The files `build` reads; a change of any of them triggers a reload.
    name
        Which context this is, in log lines (``inbound``, ``gateway``).
    on_reload
        Told ``(name, applied)`` after each attempt to load changed files.
    """

    def __init__(
        self,
        build: Callable[[], ssl.SSLContext],
        paths: Sequence[Path],
        *,
        name: str,
        clock: Callable[[], float] = time.monotonic,
        on_reload: Callable[[str, bool], None] | None = None,
    ) -> None:
        self._build = build
        self._on_reload = on_reload
        self._paths = tuple(paths)
        self._name = name
        self._clock = clock
        self._lock = threading.Lock()
        self._ids = self._identity()
        self._context = build()  # at start a bad file is fatal: TlsFileError passes up
        self._refused: tuple[_FileId, ...] | None = None
        self._checked = clock()
        self.reloads = 0

    def _identity(self) -> tuple[_FileId, ...]:
        return tuple(_file_id(path) for path in self._paths)

    def current(self) -> ssl.SSLContext:
        """The context to use for a new connection (reloaded first if the files changed)."""
        with self._lock:
            now = self._clock()
            if now - self._checked >= RECHECK_SECONDS:
                self._checked = now
                self._check()
            return self._context

    def _check(self) -> None:
        ids = self._identity()
        if ids in (self._ids, self._refused):
            return
        try:
            context = self._build()
        except (TlsFileError, OSError) as exc:  # OSError: an unreadable file (permissions)
            self._refused = ids
            log_event(log, logging.ERROR, "tls.reload_failed", context=self._name, reason=str(exc))
            if self._on_reload is not None:
                self._on_reload(self._name, False)
            return
        self._context = context
        self._ids = ids
        self._refused = None
        self.reloads += 1
        log_event(log, logging.INFO, "tls.reloaded", context=self._name)
        if self._on_reload is not None:
            self._on_reload(self._name, True)


def inbound(
    cert: Path,
    key: Path,
    client_ca: Path | None,
    *,
    clock: Callable[[], float] = time.monotonic,
    on_reload: Callable[[str, bool], None] | None = None,
) -> ReloadingContext:
    """The reloading inbound context of ``--tls-cert``, ``--tls-key``, ``--tls-client-ca``."""
    paths = [cert, key] + ([client_ca] if client_ca is not None else [])
    return ReloadingContext(
        lambda: server_context(cert, key, client_ca),
        paths,
        name="inbound",
        clock=clock,
        on_reload=on_reload,
    )


def outbound(
    ca: Path,
    cert: Path | None,
    key: Path | None,
    *,
    clock: Callable[[], float] = time.monotonic,
    on_reload: Callable[[str, bool], None] | None = None,
) -> ReloadingContext:
    """The reloading gateway context of ``--gateway-tls-ca`` and its client certificate."""
    paths = [ca] + ([cert, key] if cert is not None and key is not None else [])
    return ReloadingContext(
        lambda: gateway_context(ca, cert, key),
        paths,
        name="gateway",
        clock=clock,
        on_reload=on_reload,
    )


# -- the inbound handshake ----------------------------------------------------


class HandshakeError(Exception):
    """The TLS handshake with a caller failed; the message says why (never patient data)."""


def accept(sock: socket.socket, context: ssl.SSLContext, *, timeout: float) -> ssl.SSLSocket:
    """Run the server side of the handshake on an accepted socket, within `timeout`.

    Called on the association's own thread, so a slow or silent caller
    delays nobody else. On failure the socket is closed.
    """
    sock.settimeout(timeout)
    try:
        tls_sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        raise HandshakeError(f"TLS setup failed: {exc}") from exc
    try:
        tls_sock.do_handshake()
    except ssl.SSLCertVerificationError as exc:
        tls_sock.close()
        raise HandshakeError(f"client certificate refused: {exc.verify_message}") from exc
    except ssl.SSLError as exc:
        tls_sock.close()
        raise HandshakeError(_explain(exc)) from exc
    except TimeoutError as exc:
        tls_sock.close()
        raise HandshakeError("TLS handshake timed out") from exc
    except OSError as exc:
        tls_sock.close()
        raise HandshakeError(f"TLS handshake failed: {exc.strerror or exc}") from exc
    return tls_sock


def close_notify(sock: socket.socket) -> None:
    """Send TLS's ``close_notify`` on `sock` if it is a TLS socket; never wait, never raise.

    Said after a DICOM release, so that the peer sees the connection end as
    TLS says it should, not as a truncation. Only at a PDU boundary: an alert
    after half a record would garble it. The peer's own ``close_notify`` is
    not awaited (``unwrap`` on a non-blocking socket sends ours and stops).
    """
    if not isinstance(sock, ssl.SSLSocket):
        return
    try:
        sock.settimeout(0)
        sock.unwrap()
    except (ssl.SSLError, OSError, ValueError):
        pass  # SSLWantReadError: ours is sent, theirs not yet here; or the peer is gone


#: OpenSSL's reasons for the failures an operator meets most, in words.
_REASONS = {
    "WRONG_VERSION_NUMBER": "not a TLS handshake (a plain DICOM caller on the TLS port?)",
    "HTTP_REQUEST": "not a TLS handshake (an HTTP request)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no client certificate (mutual TLS requires one)",
    "UNSUPPORTED_PROTOCOL": "the caller offers no TLS version of 1.2 or later",
    "NO_SHARED_CIPHER": "no cipher suite of the BCP 195 profile in common",
}


def _explain(exc: ssl.SSLError) -> str:
    reason = str(exc.reason or exc)
    words = _REASONS.get(reason)
    return (
        f"TLS handshake failed: {words} [{reason}]" if words else f"TLS handshake failed: {reason}"
    )


def peer_subject(sock: ssl.SSLSocket) -> str | None:
    """The verified client certificate's subject in RFC 4514 form, or None without one."""
    der = sock.getpeercert(binary_form=True)
    if not der:
        return None
    from cryptography import x509

    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


# -- subjects -----------------------------------------------------------------

#: Attribute type names known by name; any spelling of their case means the
#: same attribute.
_KNOWN_TYPES = {name.upper(): name for name in SUBJECT_ATTRIBUTE_TYPES}
#: A separator (``,`` between RDNs, ``+`` inside one) not escaped by a backslash.
_SEPARATOR = re.compile(r"(?<!\\)(?:\\\\)*([,+])")


def normalize_subject(text: str) -> str:
    """Parse an RFC 4514 distinguished name and print it back canonically.

    Attribute type names are matched whatever their case, and spaces around
    separators are not significant, so ``cn=ct01, o=Example`` and
    ``CN=ct01,O=Example`` are the same subject; values are compared exactly.

    Raises
    ------
    ValueError
        If `text` is not a distinguished name.
    """
    from cryptography import x509

    parts: list[str] = []
    start = 0
    for match in _SEPARATOR.finditer(text):
        parts.append(text[start : match.start(1)])
        parts.append(match.group(1))
        start = match.end(1)
    parts.append(text[start:])
    rebuilt: list[str] = []
    for index, part in enumerate(parts):
        if index % 2:
            rebuilt.append(part)
            continue
        kind, sep, value = part.partition("=")
        if not sep or not kind.strip():
            raise ValueError(f"{part.strip()!r} is not TYPE=VALUE")
        kind = kind.strip()
        kind = _KNOWN_TYPES.get(kind.upper(), kind)
        value = value.lstrip()
        if not value.endswith("\\ "):
            value = value.rstrip()
        rebuilt.append(f"{kind}={value}")
    try:
        name = x509.Name.from_rfc4514_string("".join(rebuilt))
    except ValueError as exc:
        raise ValueError(f"not an RFC 4514 distinguished name ({exc or 'unparsable'})") from exc
    if not len(name):
        raise ValueError("empty distinguished name")
    return name.rfc4514_string()


def check_files(config: RouterConfig) -> None:
    """Load every TLS file the configuration names once, so a bad one stops the start.

    Raises
    ------
    TlsFileError
        Naming the option and the file.
    """
    if config.tls_cert is not None and config.tls_key is not None:
        server_context(config.tls_cert, config.tls_key, config.tls_client_ca)
    if config.gateway_tls_ca is not None:
        gateway_context(config.gateway_tls_ca, config.gateway_tls_cert, config.gateway_tls_key)


def inbound_for(
    config: RouterConfig, *, on_reload: Callable[[str, bool], None] | None = None
) -> ReloadingContext | None:
    """The inbound context of `config`, or None without ``--tls-cert``."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    return inbound(config.tls_cert, config.tls_key, config.tls_client_ca, on_reload=on_reload)


def outbound_for(
    config: RouterConfig, *, on_reload: Callable[[str, bool], None] | None = None
) -> ReloadingContext | None:
    """The gateway context of `config`, or None without ``--gateway-tls-ca``."""
    if config.gateway_tls_ca is None:
        return None
    return outbound(
        config.gateway_tls_ca,
        config.gateway_tls_cert,
        config.gateway_tls_key,
        on_reload=on_reload,
    )
