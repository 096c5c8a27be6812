"""DICOM over TLS through the router, with real peers and certificates made here.

DCMTK ``storescu +tls`` sends to the router's TLS port; the router sends over
TLS to DCMTK ``storescp +tls`` and to a pynetdicom TLS gateway. Delivery is
byte for byte; callers the TLS port must refuse are refused in the handshake
and counted; AE titles bound to certificate subjects are held to them; a
gateway whose certificate the router cannot verify fails the instance with
0xA705; a rotated certificate reaches new connections while an open
association keeps sending.
"""

from __future__ import annotations

import hashlib
import os
import socket
import ssl
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from pydicom import dcmread

from gatewaypool_local import scu
from gatewaypool_local.peers.dcmtk import StoreSCP, storescu
from gatewaypool_local.peers.gateway import PeerTls
from gatewaypool_local.peers.process import LOOPBACK, free_port, wait_until
from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import Study, dataset_bytes, generate_study
from gatewaypool_router import splice
from support import rawdicom
from support.certs import Issued, TestCA

REFUSALS = "gatewaypool_router_refusals_total"
CALLER = "CN=ct01.radiology.example.org,OU=Radiology,O=Example Hospital"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One CA for everything trusted, one for what must be refused."""
    root = tmp_path_factory.mktemp("pki")
    ca = TestCA(root / "ca")
    rogue = TestCA(root / "rogue", name="Rogue CA")
    return {
        "ca": ca,
        "rogue": rogue,
        "server": ca.issue("router", "localhost", LOOPBACK),
        "gateway": ca.issue("gateway", "localhost", LOOPBACK),
        "router-client": ca.issue("router-client", "router.example.org"),
        "ct01": ca.issue(
            "ct01",
            "ct01.radiology.example.org",
            common_name="ct01.radiology.example.org",
            organization="Example Hospital",
            unit="Radiology",
        ),
        "ct02": ca.issue(
            "ct02",
            "ct02.radiology.example.org",
            common_name="ct02.radiology.example.org",
            organization="Example Hospital",
        ),
        "rogue-client": rogue.issue("rogue-client", "ct01.radiology.example.org"),
        "rogue-gateway": rogue.issue("rogue-gateway", "localhost", LOOPBACK),
    }


def _ca(pki: dict[str, object], name: str = "ca") -> TestCA:
    value = pki[name]
    assert isinstance(value, TestCA)
    return value


def _cert(pki: dict[str, object], name: str) -> Issued:
    value = pki[name]
    assert isinstance(value, Issued)
    return value


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    return generate_study(
        tmp_path_factory.mktemp("study"), study_index=0, instances=3, rows=64, columns=64
    )


@pytest.fixture
def routers(tmp_path: Path) -> Iterator[list[RouterProcess]]:
    started: list[RouterProcess] = []
    yield started
    for router in started:
        router.stop()


def _start(
    routers: list[RouterProcess],
    tmp_path: Path,
    gateways: Sequence[str],
    args: Sequence[str],
    *,
    workers: int = 1,
) -> tuple[RouterProcess, int]:
    tls_port = free_port()
    router = RouterProcess(
        tmp_path / f"router-{len(routers)}",
        gateways=gateways,
        extra_args=["--tls-port", str(tls_port), *args],
        workers=workers,
    )
    routers.append(router)
    router.start()
    return router, tls_port


def _inbound_args(pki: dict[str, object], *, mutual: bool = True) -> list[str]:
    server = _cert(pki, "server")
    args = ["--tls-cert", str(server.cert), "--tls-key", str(server.key)]
    if mutual:
        args += ["--tls-client-ca", str(_ca(pki).bundle)]
    return args


def _tls_storescu(
    port: int,
    files: Sequence[Path],
    client: Issued | None,
    ca: TestCA,
    *,
    calling_ae: str = "CT01",
) -> subprocess.CompletedProcess[str]:
    tls = ["+tls", str(client.key), str(client.cert)] if client is not None else ["+tla"]
    return storescu(
        LOOPBACK,
        port,
        files,
        calling_ae=calling_ae,
        called_ae="GATEWAYPOOL",
        extra_args=[*tls, "+cf", str(ca.bundle)],
        timeout=60,
    )


def _client_context(ca: TestCA, client: Issued | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca.bundle))
    if client is not None:
        context.load_cert_chain(client.cert, client.key)
    return context


def _sent(study: Study) -> dict[str, str]:
    return {
        sop: hashlib.sha256(dataset_bytes(path)).hexdigest()
        for sop, path in zip(study.sop_instance_uids, study.files, strict=True)
    }


def _delivered(gateway: PynetdicomSink | StoreSCP, count: int) -> dict[str, str]:
    return {item.sop_instance_uid: item.dataset_sha256() for item in gateway.wait_for_count(count)}


def test_dcmtk_over_tls_to_a_pynetdicom_tls_gateway_byte_identical(
    tmp_path: Path, pki: dict[str, object], study: Study, routers: list[RouterProcess]
) -> None:
    ca = _ca(pki)
    gateway_cert = _cert(pki, "gateway")
    with PynetdicomSink(
        tmp_path / "sink",
        ae_title="GW-SINK",
        tls=PeerTls(gateway_cert.cert, gateway_cert.key),
    ) as gateway:
        router, tls_port = _start(
            routers,
            tmp_path,
            [f"GW-SINK@{LOOPBACK}:{gateway.port}"],
            [*_inbound_args(pki), "--gateway-tls-ca", str(ca.bundle)],
        )
        result = _tls_storescu(tls_port, study.files, _cert(pki, "ct01"), ca)
        assert result.returncode == 0, result.stdout + result.stderr
        assert _delivered(gateway, len(study.files)) == _sent(study)
    # Logged just after the router answers /readyz: waited for, not read once.
    started = router.wait_events("router.started")[0]
    assert started["tls_port"] == tls_port
    assert started["mutual_tls"] is True
    assert started["gateway_tls"] is True


def test_plain_sender_to_a_dcmtk_tls_gateway_that_wants_our_client_certificate(
    tmp_path: Path, pki: dict[str, object], study: Study, routers: list[RouterProcess]
) -> None:
    ca = _ca(pki)
    gateway_cert = _cert(pki, "gateway")
    client = _cert(pki, "router-client")
    with StoreSCP(
        tmp_path / "storescp",
        ae_title="GW-STORESCP",
        tls=PeerTls(gateway_cert.cert, gateway_cert.key, client_ca=ca.bundle),
    ) as gateway:
        args = ["--gateway-tls-ca", str(ca.bundle)]
        args += ["--gateway-tls-cert", str(client.cert), "--gateway-tls-key", str(client.key)]
        router, _ = _start(routers, tmp_path, [f"GW-STORESCP@{LOOPBACK}:{gateway.port}"], args)
        result = storescu(router.host, router.port, study.files, called_ae="GATEWAYPOOL")
        assert result.returncode == 0, result.stdout + result.stderr
        assert _delivered(gateway, len(study.files)) == _sent(study)


def test_callers_the_tls_port_must_refuse_are_refused_and_counted(
    tmp_path: Path,
    pki: dict[str, object],
    study: Study,
    routers: list[RouterProcess],
    pynetdicom_gateway: PynetdicomSink,
) -> None:
    ca = _ca(pki)
    # Splice asked for: the plain port may splice, the TLS port always copies.
    forwarding = ["--forwarding", "splice"] if splice.available() else []
    router, tls_port = _start(
        routers,
        tmp_path,
        [f"{pynetdicom_gateway.ae_title}@{LOOPBACK}:{pynetdicom_gateway.port}"],
        [*_inbound_args(pki), *forwarding],
    )
    one = study.files[:1]
    # A caller that connects and says nothing holds only its own thread: the
    # handshake waits in the association's thread, not in the accept loop.
    silent = socket.create_connection((LOOPBACK, tls_port), timeout=5)
    # A plain DICOM caller on the TLS port.
    plain = storescu(LOOPBACK, tls_port, one, called_ae="GATEWAYPOOL", timeout=60)
    # A certificate from another CA, and no certificate at all.
    rogue = _tls_storescu(tls_port, one, _cert(pki, "rogue-client"), ca)
    anonymous = _tls_storescu(tls_port, one, None, ca)
    for result in (plain, rogue, anonymous):
        assert result.returncode != 0, result.stdout + result.stderr
    assert pynetdicom_gateway.received_count() == 0
    wait_until(
        lambda: router.metric(REFUSALS, reason="tls_handshake") == 3,
        timeout=10,
        what="three TLS handshake refusals counted",
    )
    reasons = [event["reason"] for event in router.events("connection.tls_refused")]
    assert len(reasons) == 3
    assert any("plain DICOM caller" in reason for reason in reasons), reasons
    assert any("no client certificate" in reason for reason in reasons), reasons
    # Log lines name the peer and the TLS reason, nothing of the data sets.
    log_text = router.log_path.read_text()
    patient = dcmread(study.files[0], stop_before_pixels=True)
    assert str(patient.PatientName) not in log_text
    assert str(patient.PatientID) not in log_text
    # The worker survived all three: a good caller is served, byte for byte.
    good = _tls_storescu(tls_port, study.files, _cert(pki, "ct01"), ca)
    assert good.returncode == 0, good.stdout + good.stderr
    assert _delivered(pynetdicom_gateway, len(study.files)) == _sent(study)
    assert router.is_running()
    accepted = router.events("association.accepted")
    assert [(event["tls"], event["forwarding"]) for event in accepted] == [(True, "copy")]
    assert router.metric(REFUSALS, reason="tls_handshake") == 3  # still waiting on `silent`
    silent.close()
    wait_until(
        lambda: router.metric(REFUSALS, reason="tls_handshake") == 4,
        timeout=10,
        what="the silent caller's end counted",
    )


def test_caller_subject_binding_accepts_its_certificate_and_rejects_others(
    tmp_path: Path,
    pki: dict[str, object],
    routers: list[RouterProcess],
    pynetdicom_gateway: PynetdicomSink,
) -> None:
    ca = _ca(pki)
    assert _cert(pki, "ct01").subject() == CALLER
    # Spelled otherwise than the certificate's RFC 4514 string: the same subject.
    binding = "CT01=cn=ct01.radiology.example.org, ou=Radiology, o=Example Hospital"
    router, tls_port = _start(
        routers,
        tmp_path,
        [f"{pynetdicom_gateway.ae_title}@{LOOPBACK}:{pynetdicom_gateway.port}"],
        [*_inbound_args(pki), "--caller-subject", binding],
    )

    def ask(calling: str, client: Issued | None, *, secure: bool = True) -> rawdicom.Reply:
        return rawdicom.request_association(
            LOOPBACK,
            tls_port if secure else router.port,
            calling=calling,
            called="GATEWAYPOOL",
            tls=_client_context(ca, client) if secure else None,
        )

    assert ask("CT01", _cert(pki, "ct01")).pdu_type == rawdicom.ASSOCIATE_AC
    # Another hospital certificate, the same AE title.
    assert ask("CT01", _cert(pki, "ct02")).reject_reason == (1, 1, 3)
    # The bound AE title on the plain port: no certificate at all.
    assert ask("CT01", None, secure=False).reject_reason == (1, 1, 3)
    # An AE title without a binding follows --allow-calling-aet (any, here).
    assert ask("CT02", _cert(pki, "ct02")).pdu_type == rawdicom.ASSOCIATE_AC
    assert router.metric(REFUSALS, reason="caller_subject_mismatch") == 2
    mismatches = router.events("association.caller_subject_mismatch")
    assert [event["subject"] for event in mismatches] == [_cert(pki, "ct02").subject(), None]
    assert all(event["calling_ae"] == "CT01" for event in mismatches)
    assert all(event["expected"] == [CALLER] for event in mismatches)


def test_a_released_tls_association_ends_with_close_notify(
    tmp_path: Path,
    pki: dict[str, object],
    routers: list[RouterProcess],
    pynetdicom_gateway: PynetdicomSink,
) -> None:
    router, tls_port = _start(
        routers,
        tmp_path,
        [f"{pynetdicom_gateway.ae_title}@{LOOPBACK}:{pynetdicom_gateway.port}"],
        _inbound_args(pki, mutual=False),
    )
    context = _client_context(_ca(pki), None)
    with socket.create_connection((LOOPBACK, tls_port), timeout=10) as plain:
        # A connection cut without TLS's close_notify reads as SSLEOFError here.
        sock = context.wrap_socket(plain, server_hostname=LOOPBACK, suppress_ragged_eofs=False)
        sock.sendall(rawdicom.association_rq(calling="CT01", called="GATEWAYPOOL"))
        assert rawdicom.read_pdu(sock).pdu_type == rawdicom.ASSOCIATE_AC
        sock.sendall(rawdicom.RELEASE_RQ_PDU)
        assert rawdicom.read_pdu(sock).pdu_type == rawdicom.RELEASE_RP
        assert sock.recv(1) == b""
    router.wait_events("association.released", 1, timeout=10)


@pytest.mark.parametrize(
    ("certificate", "why"),
    [
        ("rogue-gateway", "unable to get local issuer certificate"),
        # Our CA, but issued to another host than the map names.
        ("ct01", "IP address mismatch"),
    ],
)
def test_gateway_certificate_the_router_cannot_verify_fails_the_instance_with_a705(
    tmp_path: Path,
    pki: dict[str, object],
    study: Study,
    routers: list[RouterProcess],
    certificate: str,
    why: str,
) -> None:
    rogue = _cert(pki, certificate)
    with PynetdicomSink(
        tmp_path / "sink", ae_title="GW-SINK", tls=PeerTls(rogue.cert, rogue.key)
    ) as gateway:
        router, _ = _start(
            routers,
            tmp_path,
            [f"GW-SINK@{LOOPBACK}:{gateway.port}"],
            ["--gateway-tls-ca", str(_ca(pki).bundle)],
        )
        result = storescu(router.host, router.port, study.files[:1], called_ae="GATEWAYPOOL")
        assert result.returncode != 0  # storescu's exit code for a failed C-STORE
        assert gateway.received_count() == 0
    failed = router.events("instance.failed")
    assert [event["status"] for event in failed] == ["0xA705"]
    assert failed[0]["status_name"] == "GATEWAY_TLS_FAILED"
    assert why in failed[0]["reason"], failed[0]
    assert (
        router.metric(
            "gatewaypool_router_gateway_failures_total",
            gateway="gw-0",
            reason="gateway_tls_failed",
        )
        == 1
    )


def _secret_volume(folder: Path, issued: Issued, generation: str) -> None:
    """Write `issued` as kubelet updates a Secret volume: a new folder, one symlink swap."""
    data = folder / f"..{generation}"
    data.mkdir(parents=True)
    (data / "tls.crt").write_bytes(issued.cert.read_bytes())
    (data / "tls.key").write_bytes(issued.key.read_bytes())
    link = folder / "..data_tmp"
    link.symlink_to(data.name)
    os.replace(link, folder / "..data")
    for name in ("tls.crt", "tls.key"):
        if not (folder / name).is_symlink():
            (folder / name).symlink_to(f"..data/{name}")


def _served_serial(port: int, ca: TestCA, client: Issued) -> int:
    context = _client_context(ca, client)
    with (
        socket.create_connection((LOOPBACK, port), timeout=5) as plain,
        context.wrap_socket(plain, server_hostname=LOOPBACK) as sock,
    ):
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509

    return int(x509.load_der_x509_certificate(der).serial_number)


def test_rotated_certificate_reaches_new_connections_and_spares_open_ones(
    tmp_path: Path,
    pki: dict[str, object],
    study: Study,
    routers: list[RouterProcess],
    pynetdicom_gateway: PynetdicomSink,
) -> None:
    ca = _ca(pki)
    client = _cert(pki, "ct01")
    volume = tmp_path / "secret"
    first = ca.issue("router-1", "localhost", LOOPBACK)
    second = ca.issue("router-2", "localhost", LOOPBACK)
    _secret_volume(volume, first, "2026_01")
    router, tls_port = _start(
        routers,
        tmp_path,
        [f"{pynetdicom_gateway.ae_title}@{LOOPBACK}:{pynetdicom_gateway.port}"],
        [
            "--tls-cert",
            str(volume / "tls.crt"),
            "--tls-key",
            str(volume / "tls.key"),
            "--tls-client-ca",
            str(ca.bundle),
            "--no-plain-port",
        ],
    )
    assert router.wait_events("router.started")[0]["port"] is None
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((LOOPBACK, router.port), timeout=5).close()
    assert _served_serial(tls_port, ca, client) == first.serial()
    datasets = [dcmread(path) for path in study.files]
    context = _client_context(ca, client)
    sop_class = str(datasets[0].SOPClassUID)
    with scu.open_association(
        LOOPBACK,
        tls_port,
        contexts=[(sop_class, "1.2.840.10008.1.2.1")],
        called_ae="GATEWAYPOOL",
        calling_ae="CT01",
        tls=context,
        timeout=20,
    ) as assoc:
        assert scu.store(assoc, datasets[0]).Status == 0
        _secret_volume(volume, second, "2026_02")
        wait_until(
            lambda: _served_serial(tls_port, ca, client) == second.serial(),
            timeout=15,
            what="the new certificate served to a new connection",
        )
        # The association opened with the old certificate keeps sending.
        for dataset in datasets[1:]:
            assert scu.store(assoc, dataset).Status == 0
    pynetdicom_gateway.wait_for_count(len(datasets))
    assert router.events("tls.reloaded")
    reloads = "gatewaypool_router_tls_reloads_total"
    assert router.metric(reloads, context="inbound", result="applied") == 1
    assert router.metric(reloads, context="inbound", result="failed") == 0
    released = router.events("association.released")
    assert any(event["instances"] == len(datasets) for event in released), released


def test_workers_serve_both_ports(
    tmp_path: Path,
    pki: dict[str, object],
    study: Study,
    routers: list[RouterProcess],
    pynetdicom_gateway: PynetdicomSink,
) -> None:
    ca = _ca(pki)
    router, tls_port = _start(
        routers,
        tmp_path,
        [f"{pynetdicom_gateway.ae_title}@{LOOPBACK}:{pynetdicom_gateway.port}"],
        _inbound_args(pki),
        workers=2,
    )
    secure = _tls_storescu(tls_port, study.files[:2], _cert(pki, "ct01"), ca)
    assert secure.returncode == 0, secure.stdout + secure.stderr
    plain = storescu(router.host, router.port, study.files[2:], called_ae="GATEWAYPOOL")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert pynetdicom_gateway.wait_for_count(len(study.files))
    # A plain caller on the TLS port is refused by whichever worker takes it, which lives on.
    refused = storescu(LOOPBACK, tls_port, study.files[:1], called_ae="GATEWAYPOOL", timeout=60)
    assert refused.returncode != 0
    wait_until(
        lambda: router.metric(REFUSALS, reason="tls_handshake") == 1,
        timeout=10,
        what="the refusal counted in the replica's /metrics",
    )
    assert router.metric("gatewaypool_router_worker_restarts_total") == 0


@pytest.mark.parametrize(
    ("version", "ciphers"),
    [
        (ssl.TLSVersion.TLSv1_1, "ALL:@SECLEVEL=0"),  # a retired profile's protocol
        (ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA256:@SECLEVEL=0"),  # AES-CBC
        (ssl.TLSVersion.TLSv1_2, "DHE-RSA-AES128-GCM-SHA256"),  # DHE: no parameters loaded
    ],
    ids=["tls1.1", "aes-cbc", "dhe"],
)
def test_retired_profiles_are_refused_in_the_handshake(
    tmp_path: Path,
    pki: dict[str, object],
    routers: list[RouterProcess],
    pynetdicom_gateway: PynetdicomSink,
    version: ssl.TLSVersion,
    ciphers: str,
) -> None:
    router, tls_port = _start(
        routers,
        tmp_path,
        [f"{pynetdicom_gateway.ae_title}@{LOOPBACK}:{pynetdicom_gateway.port}"],
        _inbound_args(pki, mutual=False),
    )
    ca = _ca(pki)

    def client(*, retired: bool) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(ca.bundle)
        if retired:
            context.minimum_version = version
            context.maximum_version = version
            context.set_ciphers(ciphers)
        return context

    with pytest.raises((ssl.SSLError, ConnectionResetError)):
        rawdicom.request_association(
            LOOPBACK, tls_port, calling="OLDSCANNER", called="X", tls=client(retired=True)
        )
    # The same client with BCP 195 settings is served.
    reply = rawdicom.request_association(
        LOOPBACK, tls_port, calling="NEWSCANNER", called="X", tls=client(retired=False)
    )
    assert reply.pdu_type == rawdicom.ASSOCIATE_AC
    wait_until(
        lambda: router.metric(REFUSALS, reason="tls_handshake") == 1,
        timeout=10,
        what="the retired profile's handshake refused by the router",
    )
