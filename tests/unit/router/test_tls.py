"""The router's TLS parts without a router: options, profile, reload, handshake, subjects.

The integration tests (tests/integration/test_router_tls.py) run the same
paths with DCMTK and pynetdicom peers; here each decision is checked on its
own, including the ones a peer cannot easily provoke (a half-written
rotation, a silent caller).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from gatewaypool.cli import build_parser
from gatewaypool_router import tls
from gatewaypool_router.cli import config_from_args
from gatewaypool_router.config import CallerSubject, ConfigError, RouterConfig
from gatewaypool_router.statuses import Status, outcome
from support.certs import Issued, TestCA

MAP = Path("/etc/gatewaypool/map.json")
CERT = Path("/etc/gatewaypool/tls/server/tls.crt")
KEY = Path("/etc/gatewaypool/tls/server/tls.key")
CLIENT_CA = Path("/etc/gatewaypool/tls/client-ca/ca.crt")
GATEWAY_CA = Path("/etc/gatewaypool/tls/gateway-ca/ca.crt")


def config(**changes: Any) -> RouterConfig:
    fields: dict[str, Any] = {"map_file": MAP}
    fields.update(changes)
    return RouterConfig(**fields)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("pki") / "ca")


@pytest.fixture(scope="module")
def server(ca: TestCA) -> Issued:
    return ca.issue("server", "localhost", "127.0.0.1")


# -- subjects -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "CN=ct01.radiology.example.org,O=Example Hospital",
        "cn=ct01.radiology.example.org, o=Example Hospital",
        " Cn = ct01.radiology.example.org ,O= Example Hospital ",
    ],
)
def test_subject_spelling_of_names_and_spaces_does_not_matter(text: str) -> None:
    assert tls.normalize_subject(text) == "CN=ct01.radiology.example.org,O=Example Hospital"


def test_subject_values_keep_their_case_and_escapes() -> None:
    assert tls.normalize_subject("CN=CT01,O=Example") != tls.normalize_subject("CN=ct01,O=Example")
    assert tls.normalize_subject(r"CN=Smith\, J,O=X") == r"CN=Smith\, J,O=X"


@pytest.mark.parametrize("text", ["", "ct01", "CN", "=x", "CN=a,,O=b"])
def test_not_a_subject(text: str) -> None:
    with pytest.raises(ValueError):
        tls.normalize_subject(text)


def test_subject_of_a_certificate_is_what_openssl_rfc2253_prints(ca: TestCA) -> None:
    issued = ca.issue("ct01", "ct01.example.org", common_name="ct01.example.org", organization="H")
    subject = issued.subject()
    # Most specific first, as `openssl x509 -noout -subject -nameopt RFC2253`.
    assert subject.startswith("CN=ct01.example.org,")
    assert subject.endswith(",O=H")
    assert tls.normalize_subject(subject) == subject


def test_caller_subject_option() -> None:
    bound = CallerSubject.parse("CT01=cn=ct01.example.org, o=Example Hospital")
    assert bound == CallerSubject("CT01", "CN=ct01.example.org,O=Example Hospital")
    built = config(
        tls_cert=CERT,
        tls_key=KEY,
        tls_client_ca=CLIENT_CA,
        caller_subjects=(bound, CallerSubject.parse("CT01=CN=ct01-new.example.org")),
    )
    assert built.subjects_for("CT01") == frozenset(
        {"CN=ct01.example.org,O=Example Hospital", "CN=ct01-new.example.org"}
    )
    assert built.subjects_for("CT02") is None


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("CT01", "AE=SUBJECT"),
        ("CT01=", "AE=SUBJECT"),
        ("=CN=x", "AE title"),
        ("A\\B=CN=x", "AE title"),
        ("CT01=not a dn", "not a dn"),
    ],
)
def test_caller_subject_option_refused(text: str, names: str) -> None:
    with pytest.raises(ConfigError, match="--caller-subject") as exc:
        CallerSubject.parse(text)
    assert names in str(exc.value)


# -- options --------------------------------------------------------------------


def parse(*argv: str) -> Any:
    return build_parser().parse_args(["router", *argv])


def test_cli_every_tls_option() -> None:
    built = config_from_args(
        parse(
            "--map",
            str(MAP),
            "--tls-cert",
            str(CERT),
            "--tls-key",
            str(KEY),
            "--tls-port",
            "12762",
            "--no-plain-port",
            "--tls-client-ca",
            str(CLIENT_CA),
            "--caller-subject",
            "CT01=CN=ct01.example.org,O=Example Hospital",
            "--gateway-tls-ca",
            str(GATEWAY_CA),
            "--gateway-tls-cert",
            "/etc/gatewaypool/tls/gateway-client/tls.crt",
            "--gateway-tls-key",
            "/etc/gatewaypool/tls/gateway-client/tls.key",
        )
    )
    assert (built.tls_cert, built.tls_key, built.tls_port) == (CERT, KEY, 12762)
    assert built.plain_port is False
    assert built.tls_client_ca == CLIENT_CA
    assert built.caller_subjects == (
        CallerSubject("CT01", "CN=ct01.example.org,O=Example Hospital"),
    )
    assert built.gateway_tls_ca == GATEWAY_CA
    assert built.gateway_tls_cert == Path("/etc/gatewaypool/tls/gateway-client/tls.crt")
    assert built.gateway_tls_key == Path("/etc/gatewaypool/tls/gateway-client/tls.key")
    assert built.can_splice is False


def test_cli_tls_defaults() -> None:
    built = config_from_args(parse("--map", str(MAP)))
    assert built.plain_port is True
    assert built.tls_port == 2762
    assert built.tls_cert is None
    assert built.gateway_tls_ca is None
    assert built.can_splice is True


@pytest.mark.parametrize(
    ("changes", "option"),
    [
        ({"tls_cert": CERT}, "--tls-key"),
        ({"tls_key": KEY}, "--tls-cert"),
        ({"plain_port": False}, "--no-plain-port"),
        ({"tls_client_ca": CLIENT_CA}, "--tls-client-ca"),
        ({"tls_cert": CERT, "tls_key": KEY, "tls_port": 70000}, "--tls-port"),
        ({"tls_cert": CERT, "tls_key": KEY, "port": 2762}, "--tls-port"),
        (
            {
                "tls_cert": CERT,
                "tls_key": KEY,
                "caller_subjects": (CallerSubject("CT01", "CN=x"),),
            },
            "--caller-subject",
        ),
        ({"gateway_tls_cert": CERT, "gateway_tls_key": KEY}, "--gateway-tls-ca"),
        ({"gateway_tls_ca": GATEWAY_CA, "gateway_tls_cert": CERT}, "--gateway-tls-key"),
        ({"gateway_tls_ca": GATEWAY_CA, "forwarding": "splice"}, "--forwarding splice"),
        (
            {"tls_cert": CERT, "tls_key": KEY, "plain_port": False, "forwarding": "splice"},
            "--forwarding splice",
        ),
    ],
)
def test_tls_option_combinations_refused(changes: dict[str, Any], option: str) -> None:
    with pytest.raises(ConfigError) as exc:
        config(**changes)
    assert option in str(exc.value), str(exc.value)


def test_splice_beside_a_tls_port_is_allowed() -> None:
    """The plain port still splices; TLS associations copy."""
    built = config(tls_cert=CERT, tls_key=KEY, forwarding="splice")
    assert built.can_splice is True


def test_same_port_for_both_is_fine_without_the_plain_one() -> None:
    assert config(tls_cert=CERT, tls_key=KEY, port=2762, plain_port=False).tls_port == 2762


def test_bad_files_stop_the_start_naming_the_option(
    tmp_path: Path, ca: TestCA, server: Issued
) -> None:
    other = ca.issue("other")
    mismatched = config(tls_cert=server.cert, tls_key=other.key)
    with pytest.raises(tls.TlsFileError, match="--tls-cert"):
        tls.check_files(mismatched)
    missing = config(tls_cert=server.cert, tls_key=tmp_path / "absent.key")
    with pytest.raises(tls.TlsFileError, match=r"--tls-key: .*absent\.key: no such file"):
        tls.check_files(missing)
    not_a_ca = tmp_path / "ca.crt"
    not_a_ca.write_text("not PEM\n")
    with pytest.raises(tls.TlsFileError, match="--gateway-tls-ca"):
        tls.check_files(config(gateway_tls_ca=not_a_ca))
    tls.check_files(config(tls_cert=server.cert, tls_key=server.key, tls_client_ca=ca.bundle))


# -- the profile ------------------------------------------------------------------


def test_bcp195_profile_on_both_legs(server: Issued, ca: TestCA) -> None:
    for context in (
        tls.server_context(server.cert, server.key, ca.bundle),
        tls.gateway_context(ca.bundle, None, None),
    ):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_2
        tls12 = [c for c in context.get_ciphers() if c["protocol"] == "TLSv1.2"]
        assert tls12
        for cipher in tls12:
            assert cipher["kea"] in ("kx-ecdhe", "kx-dhe"), cipher["name"]
            assert "GCM" in cipher["name"], cipher["name"]
    assert tls.server_context(server.cert, server.key, ca.bundle).verify_mode == ssl.CERT_REQUIRED
    assert tls.server_context(server.cert, server.key, None).verify_mode == ssl.CERT_NONE
    outbound = tls.gateway_context(ca.bundle, None, None)
    assert outbound.check_hostname is True
    assert outbound.verify_mode == ssl.CERT_REQUIRED


def test_gateway_tls_failure_status_is_named_and_transient() -> None:
    assert Status.GATEWAY_TLS_FAILED == 0xA705
    assert outcome(Status.GATEWAY_TLS_FAILED) == "failure"


# -- reload -----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rotation_reload_and_a_bad_file_keeps_the_old_context(
    tmp_path: Path, ca: TestCA, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = ca.issue("first"), ca.issue("second")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(first.cert.read_bytes())
    key.write_bytes(first.key.read_bytes())
    clock = Clock()
    told: list[tuple[str, bool]] = []
    reloading = tls.inbound(cert, key, None, clock=clock, on_reload=lambda *args: told.append(args))
    original = reloading.current()
    # Unchanged files: the same context, however often asked.
    clock.now += 60
    assert reloading.current() is original
    # Half a rotation: the new certificate, the old key. The old context stays,
    # the error is logged once, not on every connection.
    cert.write_bytes(second.cert.read_bytes())
    with caplog.at_level(logging.ERROR, logger="gatewaypool_router.tls"):
        for _ in range(3):
            clock.now += tls.RECHECK_SECONDS
            assert reloading.current() is original
    failures = [r for r in caplog.records if "tls.reload_failed" in r.getMessage()]
    assert len(failures) == 1
    # The key arrives: the next check takes the new pair.
    key.write_bytes(second.key.read_bytes())
    assert reloading.current() is original  # not checked again before RECHECK_SECONDS
    clock.now += tls.RECHECK_SECONDS
    rotated = reloading.current()
    assert rotated is not original
    assert reloading.reloads == 1
    assert told == [("inbound", False), ("inbound", True)]


# -- the handshake ----------------------------------------------------------------


def _connected() -> tuple[socket.socket, socket.socket]:
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    accepted, _ = listener.accept()
    listener.close()
    return client, accepted


def test_plain_dicom_on_the_tls_port_is_named(server: Issued) -> None:
    context = tls.server_context(server.cert, server.key, None)
    client, accepted = _connected()
    with client:
        client.sendall(bytes.fromhex("01000000004c0001"))  # an A-ASSOCIATE-RQ's first bytes
        with pytest.raises(tls.HandshakeError, match="plain DICOM caller"):
            tls.accept(accepted, context, timeout=5)
    assert accepted.fileno() == -1  # closed


def test_silent_caller_times_out_within_the_acse_timeout(server: Issued) -> None:
    context = tls.server_context(server.cert, server.key, None)
    client, accepted = _connected()
    with client:
        began = time.monotonic()
        with pytest.raises(tls.HandshakeError, match="timed out"):
            tls.accept(accepted, context, timeout=0.3)
        assert time.monotonic() - began < 3


def test_mutual_tls_handshake_gives_the_subject(server: Issued, ca: TestCA) -> None:
    caller = ca.issue("caller", "ct01.example.org", common_name="ct01.example.org")
    context = tls.server_context(server.cert, server.key, ca.bundle)
    client_context = ssl.create_default_context(cafile=str(ca.bundle))
    client_context.load_cert_chain(caller.cert, caller.key)
    client, accepted = _connected()
    outcome_: dict[str, object] = {}

    def connect() -> None:
        with client_context.wrap_socket(client, server_hostname="localhost") as secure:
            outcome_["version"] = secure.version()
            secure.recv(1)

    thread = threading.Thread(target=connect)
    thread.start()
    secure = tls.accept(accepted, context, timeout=5)
    assert tls.peer_subject(secure) == caller.subject()
    secure.close()
    thread.join(timeout=5)
    assert outcome_["version"] in ("TLSv1.2", "TLSv1.3")


def _handshake_with(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> tuple[str | None, str | None]:
    """Handshake in-process; (server-side error or None, negotiated cipher or None)."""
    client, accepted = _connected()
    cipher: dict[str, str | None] = {"name": None}

    def connect() -> None:
        try:
            with client_context.wrap_socket(client, server_hostname="localhost") as secure:
                described = secure.cipher()
                cipher["name"] = described[0] if described else None
                secure.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=connect)
    thread.start()
    try:
        secure = tls.accept(accepted, server_context, timeout=5)
    except tls.HandshakeError as exc:
        client.close()
        thread.join(timeout=5)
        return str(exc), None
    secure.close()
    thread.join(timeout=5)
    return None, cipher["name"]


@pytest.mark.parametrize(
    ("version", "ciphers", "accepted"),
    [
        (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-GCM-SHA256", True),
        (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES256-GCM-SHA384", True),
        (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-CHACHA20-POLY1305", False),
        (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA256", False),
        (ssl.TLSVersion.TLSv1_2, "ECDHE-ECDSA-AES128-SHA", False),
        (ssl.TLSVersion.TLSv1_3, None, True),
    ],
)
def test_the_tls_port_holds_callers_to_the_profile(
    server: Issued, ca: TestCA, version: ssl.TLSVersion, ciphers: str | None, accepted: bool
) -> None:
    client_context = ssl.create_default_context(cafile=str(ca.bundle))
    client_context.minimum_version = client_context.maximum_version = version
    if ciphers is not None:
        client_context.set_ciphers(ciphers)
    error, cipher = _handshake_with(
        tls.server_context(server.cert, server.key, None), client_context
    )
    if accepted:
        assert error is None
        assert cipher is not None
    else:
        assert error is not None
        assert "TLS handshake failed" in error


def test_tls_1_1_callers_are_refused(server: Issued, ca: TestCA) -> None:
    client_context = ssl.create_default_context(cafile=str(ca.bundle))
    with pytest.warns(DeprecationWarning):
        client_context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        client_context.maximum_version = ssl.TLSVersion.TLSv1_1
    client_context.set_ciphers("ALL:@SECLEVEL=0")
    error, _ = _handshake_with(tls.server_context(server.cert, server.key, None), client_context)
    assert error is not None
    assert "UNSUPPORTED_PROTOCOL" in error, error


def _router_to_gateway(
    gateway_cert: Issued, ca: TestCA, host_name: str
) -> tuple[str | None, str | None]:
    """A router-side handshake with `host_name` against a gateway serving `gateway_cert`:
    (router-side error or None, gateway-side error or None)."""
    gateway_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    gateway_context.load_cert_chain(gateway_cert.cert, gateway_cert.key)
    router_context = tls.gateway_context(ca.bundle, None, None)
    client, accepted = _connected()
    errors: dict[str, str | None] = {"gateway": None}

    def serve() -> None:
        try:
            with gateway_context.wrap_socket(accepted, server_side=True):
                pass
        except (ssl.SSLError, OSError) as exc:
            errors["gateway"] = type(exc).__name__

    thread = threading.Thread(target=serve)
    thread.start()
    router_error = None
    try:
        with router_context.wrap_socket(client, server_hostname=host_name):
            pass
    except ssl.SSLCertVerificationError as exc:
        router_error = exc.verify_message
    thread.join(timeout=5)
    return router_error, errors["gateway"]


def test_one_wildcard_certificate_serves_every_gateway_of_a_pool(ca: TestCA) -> None:
    # The certificate docs/security.md asks for: *.NAME-gw.<namespace>.svc.cluster.local.
    from gatewaypool_operator.children.names import gateway_dns_name

    wildcard = ca.issue("gateways", "*.ct-gw.radiology.svc.cluster.local")
    for ordinal in (0, 1, 17):
        name = gateway_dns_name("ct", "radiology", ordinal)
        assert _router_to_gateway(wildcard, ca, name)[0] is None, name
    # Not another pool's gateways, nor this pool's in another namespace.
    for name in (
        gateway_dns_name("mr", "radiology", 0),
        gateway_dns_name("ct", "cardiology", 0),
    ):
        error, _ = _router_to_gateway(wildcard, ca, name)
        assert error is not None and "mismatch" in error.lower(), (name, error)


def _tls_pair(server: Issued, ca: TestCA) -> tuple[ssl.SSLSocket, ssl.SSLSocket]:
    """A handshaken (router side, caller side) pair; the caller sees a truncation as an error."""
    context = tls.server_context(server.cert, server.key, None)
    client_context = ssl.create_default_context(cafile=str(ca.bundle))
    client, accepted = _connected()
    secure: dict[str, ssl.SSLSocket] = {}

    def connect() -> None:
        secure["caller"] = client_context.wrap_socket(
            client, server_hostname="localhost", suppress_ragged_eofs=False
        )

    thread = threading.Thread(target=connect)
    thread.start()
    router_side = tls.accept(accepted, context, timeout=5)
    thread.join(timeout=5)
    caller = secure["caller"]
    caller.settimeout(5)
    return router_side, caller


def test_close_notify_ends_the_connection_as_tls_says(server: Issued, ca: TestCA) -> None:
    router_side, caller = _tls_pair(server, ca)
    with caller:
        tls.close_notify(router_side)
        router_side.close()
        assert caller.recv(1) == b""  # a clean end, not a truncation


def test_without_close_notify_the_caller_sees_a_truncation(server: Issued, ca: TestCA) -> None:
    # What the router did before: the test above can tell the difference.
    router_side, caller = _tls_pair(server, ca)
    with caller:
        router_side.close()
        with pytest.raises(ssl.SSLEOFError):
            caller.recv(1)


def test_close_notify_never_waits_for_the_peer(server: Issued, ca: TestCA) -> None:
    router_side, caller = _tls_pair(server, ca)
    with caller:
        # The caller never answers with its own close_notify: the call still returns.
        done = threading.Event()
        thread = threading.Thread(target=lambda: (tls.close_notify(router_side), done.set()))
        thread.start()
        assert done.wait(timeout=5)
        router_side.close()
    plain, other = _connected()
    with plain, other:
        tls.close_notify(plain)  # a plain socket: nothing to do, nothing raised
        other.sendall(b"x")
        assert plain.recv(1) == b"x"
