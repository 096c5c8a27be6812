"""``gatewaypool router``: run the study router.

Flags follow DCMTK's storescp where one exists (``--aet``, ``--max-pdu``,
``--acse-timeout``), so a DICOM engineer guesses them right.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Protocol

from gatewaypool import logs
from gatewaypool_router.config import (
    FORWARDING_MODES,
    SPOOL_WHEN,
    CallerSubject,
    ConfigError,
    ConnectTo,
    ObjectRef,
    RouterConfig,
    parse_gateway,
)
from gatewaypool_router.cpus import available_cpus

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the ``router`` subcommand (entry point ``gatewaypool.commands``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "router",
        help="run the study router (a DICOM Storage SCP forwarding to gateways)",
        description=(
            "Accept DICOM C-STORE and C-ECHO, hash each instance's StudyInstanceUID to a "
            "bucket and stream it to the gateway owning that bucket. Success is answered "
            "only after that gateway answered success."
        ),
    )
    defaults = RouterConfig(gateways=(parse_gateway("X@x:1", 0),))
    _network_options(parser, defaults)
    _tls_options(parser, defaults)
    _sender_options(parser)
    _routing_options(parser, defaults)
    _operations_options(parser, defaults)
    parser.set_defaults(func=run)


def _network_options(parser: argparse.ArgumentParser, defaults: RouterConfig) -> None:
    """The options of the DICOM network: ports, AE titles, limits and timeouts."""
    net = parser.add_argument_group("DICOM network")
    net.add_argument(
        "--port", type=int, default=defaults.port, help="plain DICOM port (default %(default)s)"
    )
    net.add_argument("--bind", default=defaults.bind, help="listen address (default %(default)s)")
    net.add_argument(
        "--aet", default=defaults.ae_title, help="router AE title (default %(default)s)"
    )
    net.add_argument(
        "--allow-calling-aet",
        action="append",
        default=[],
        metavar="AET",
        help="accept associations only from this calling AE title (repeatable; default: any)",
    )
    net.add_argument(
        "--require-called-aet",
        action="store_true",
        help="reject associations whose called AE title is not --aet",
    )
    net.add_argument(
        "--forward-calling-aet",
        action="store_true",
        help="call gateways with the sender's AE title instead of --aet",
    )
    net.add_argument(
        "--max-associations",
        type=int,
        default=defaults.max_associations,
        help="concurrent incoming associations before rejecting (default %(default)s)",
    )
    net.add_argument(
        "--max-pdu",
        type=int,
        default=defaults.max_pdu,
        help="maximum PDU length offered to senders and gateways (default %(default)s)",
    )
    net.add_argument(
        "--forwarding",
        choices=FORWARDING_MODES,
        default=defaults.forwarding,
        help="how data set bytes move to the gateway once its instance is routed: 'splice' "
        "inside the kernel (Linux), 'copy' through the router's memory, 'auto' splices where "
        "the system can (default %(default)s). An association with a TLS leg (from the TLS "
        "port, or to a gateway with --gateway-tls-ca) always copies: spliced bytes would "
        "bypass TLS. 'splice' is refused at start when no association could splice "
        "(--gateway-tls-ca, or --no-plain-port)",
    )
    net.add_argument("--acse-timeout", type=float, default=defaults.acse_timeout)
    net.add_argument(
        "--idle-timeout",
        type=float,
        default=defaults.idle_timeout,
        help="seconds a sender may stay silent mid-association (default %(default)s)",
    )
    net.add_argument(
        "--gateway-timeout",
        type=float,
        default=defaults.gateway_timeout,
        help="seconds a gateway may stay silent (not reading our data, or not answering) "
        "before the sender gets 0xA702; keep it below the senders' DIMSE timeout "
        "(default %(default)s)",
    )
    net.add_argument(
        "--gateway-idle-release",
        type=float,
        default=defaults.gateway_idle_release,
        metavar="SECONDS",
        help="release an association to a gateway that carried nothing for this long; the "
        "sender's next instance opens a new one. Keep it below the gateways' own idle "
        "timeout (Orthanc's DicomScpTimeout: 30 s by default) (default %(default)s)",
    )
    net.add_argument(
        "--closing-hold",
        type=float,
        default=defaults.closing_hold,
        help="the longest an instance of a closing bucket (the last step of a move) waits "
        "for the next map before it goes to the bucket's owner (default %(default)s)",
    )
    net.add_argument(
        "--stall-warning",
        type=float,
        default=defaults.stall_warning,
        help="log an instance still in progress after this many seconds, with what the "
        "association waits for (default %(default)s)",
    )
    net.add_argument("--connect-timeout", type=float, default=defaults.connect_timeout)
    net.add_argument(
        "--header-limit",
        type=int,
        default=defaults.header_limit,
        help="bytes of data set read before the StudyInstanceUID must appear",
    )


def _tls_options(parser: argparse.ArgumentParser, defaults: RouterConfig) -> None:
    """The options of DICOM TLS on both legs."""
    tls = parser.add_argument_group(
        "DICOM TLS",
        "PS3.15 Annex B.9 BCP 195 profile on both legs: TLS 1.2 minimum; on TLS 1.2 only "
        "ECDHE with AES-GCM; the retired profiles (TLS 1.0/1.1, AES-CBC, 3DES) and DHE are "
        "refused in the handshake. Certificate, key and CA files are re-read when they change "
        "on disk (looked at on new connections, at most every 2 s); open associations keep "
        "their session, and a new file that does not load keeps the old one in use and logs "
        "tls.reload_failed.",
    )
    tls.add_argument(
        "--tls-port",
        type=int,
        default=defaults.tls_port,
        help="DICOM TLS port, listened on only with --tls-cert (default %(default)s)",
    )
    tls.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PATH",
        help="server certificate chain (PEM, tls.crt of a kubernetes.io/tls Secret); "
        "turns on the TLS port; needs --tls-key",
    )
    tls.add_argument(
        "--tls-key", type=Path, metavar="PATH", help="private key of --tls-cert (PEM, tls.key)"
    )
    tls.add_argument(
        "--no-plain-port",
        dest="plain_port",
        action="store_false",
        help="do not listen on the plain --port: TLS only (needs --tls-cert)",
    )
    tls.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="PATH",
        help="CA bundle (PEM): callers on the TLS port must present a certificate it "
        "verifies (mutual TLS); a caller without one is refused in the handshake",
    )
    tls.add_argument(
        "--caller-subject",
        action="append",
        default=[],
        metavar="AE=SUBJECT",
        help="accept calling AE title AE only over TLS with a client certificate whose "
        "subject, in RFC 4514 form (as `openssl x509 -noout -subject -nameopt RFC2253` "
        "prints it, e.g. CN=ct01.example.org,O=Example Hospital), is SUBJECT; otherwise "
        "reject it permanently with 'calling AE title not recognized' (repeatable, also "
        "several subjects for one AE; needs --tls-client-ca). AE titles without a binding "
        "follow --allow-calling-aet",
    )
    tls.add_argument(
        "--gateway-tls-ca",
        type=Path,
        metavar="PATH",
        help="CA bundle (PEM): every connection to a gateway is TLS, verifying its "
        "certificate chain and host name (its host as the map names it, DNS name or IP "
        "address, even where --connect-to sends the connection elsewhere); a gateway that "
        "fails it fails the instance with 0xA705",
    )
    tls.add_argument(
        "--gateway-tls-cert",
        type=Path,
        metavar="PATH",
        help="client certificate chain (PEM) presented to gateways; needs --gateway-tls-key "
        "and --gateway-tls-ca",
    )
    tls.add_argument(
        "--gateway-tls-key",
        type=Path,
        metavar="PATH",
        help="private key of --gateway-tls-cert (PEM)",
    )


def _sender_options(parser: argparse.ArgumentParser) -> None:
    """The options of what senders may send."""
    accepted = parser.add_argument_group(
        "what senders may send",
        "By default the router probes every gateway of the map (associations proposing "
        "at most 128 contexts, on every new set of gateways) and accepts from senders only "
        "the SOP classes and transfer syntaxes every gateway accepts, choosing among a "
        "sender's proposals as the gateways prefer. These lists replace the probe's answer.",
    )
    accepted.add_argument(
        "--accepted-transfer-syntax",
        action="append",
        default=[],
        metavar="UID",
        help="a transfer syntax the gateways accept (repeatable, preferred first)",
    )
    accepted.add_argument(
        "--sop-class",
        action="append",
        default=[],
        metavar="UID",
        help="a SOP class the gateways accept, private ones included (repeatable); with it, "
        "only the classes listed (and Verification) are accepted",
    )


def _routing_options(parser: argparse.ArgumentParser, defaults: RouterConfig) -> None:
    """The options of where the map comes from, and the report."""
    routing = parser.add_argument_group("routing")
    source = routing.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--map", type=Path, help="bucket map file (JSON or YAML), reloaded on change"
    )
    routing.add_argument(
        "--readiness",
        type=Path,
        metavar="FILE",
        help="with --map: which of its gateways are not Ready ({notReady: [names]}, JSON or "
        "YAML), reloaded on change; with a spool their instances are spooled without trying "
        "them (no file: all are Ready)",
    )
    source.add_argument(
        "--gateway",
        action="append",
        metavar="AET@HOST:PORT",
        help="a gateway (repeatable): builds a balanced map over them, in order",
    )
    source.add_argument(
        "--map-configmap",
        metavar="NAMESPACE/NAME",
        help="watch the bucket map in this ConfigMap (key map.json) through the Kubernetes API",
    )
    routing.add_argument(
        "--report-configmap",
        metavar="NAMESPACE/NAME",
        help="write the applied map version under --pod-name into this ConfigMap",
    )
    routing.add_argument(
        "--watch-timeout",
        type=int,
        default=defaults.watch_seconds,
        metavar="SECONDS",
        help="the API server ends each map watch after this long and the router resumes it; "
        "a connection silent for 60 s is dropped and reopened (default %(default)s)",
    )
    routing.add_argument(
        "--pod-name",
        default=os.environ.get("POD_NAME", ""),
        help="this router's name in reports (default $POD_NAME)",
    )
    routing.add_argument(
        "--kubeconfig",
        type=Path,
        help="kubeconfig for the API (default: the in-cluster service account)",
    )
    routing.add_argument("--buckets", type=int, default=defaults.buckets)
    routing.add_argument(
        "--connect-to",
        action="append",
        default=[],
        metavar="HOST:PORT:CONNECT_HOST:CONNECT_PORT",
        help="reach a gateway of the map at another address (like curl's --connect-to)",
    )


def _operations_options(parser: argparse.ArgumentParser, defaults: RouterConfig) -> None:
    """The options of workers, HTTP, logging."""
    ops = parser.add_argument_group("operations")
    ops.add_argument(
        "--study-quiet-seconds",
        type=float,
        default=defaults.study_quiet_seconds,
        metavar="SECONDS",
        help="a study is in flight (metric gatewaypool_router_studies_in_flight) from its "
        "first instance until none arrived for this long (default %(default)s)",
    )
    ops.add_argument(
        "--study-record-size",
        type=int,
        default=defaults.study_record_size,
        metavar="N",
        help="keep the last N studies routed in the record served at /studies/UID, "
        "which `gatewaypool locate` reads; 0 keeps none (default %(default)s)",
    )
    ops.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="router processes sharing the DICOM port, each on its own core, behind one "
        "map source, one report and one /metrics (default: the CPUs the container may "
        "use: its cgroup CPU quota, else the CPUs it may run on)",
    )
    ops.add_argument("--http-port", type=int, default=defaults.http_port)
    ops.add_argument("--http-bind", default=defaults.http_bind)
    ops.add_argument("--shutdown-grace", type=float, default=defaults.shutdown_grace)
    _spool_options(parser, defaults)
    ops.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    ops.add_argument("--log-format", default="json", choices=["json", "text"])


def _spool_options(parser: argparse.ArgumentParser, defaults: RouterConfig) -> None:
    """Store and forward: the spool's options."""
    spool = parser.add_argument_group(
        "spool (store and forward)",
        "With --spool-dir an instance whose gateway cannot take it now is written to this "
        "folder and answered Success once fsynced there, then forwarded, per bucket in order, "
        "when its bucket's gateway can take it. Costs an fsync per spooled instance, and every "
        "instance is written there (unsynced) while it goes to its gateway, so that a gateway "
        "failing midway is spooled too.",
    )
    spool.add_argument(
        "--spool-dir",
        type=Path,
        default=None,
        metavar="PATH",
        help="the spool's folder, on a volume of this router's own (off when absent)",
    )
    spool.add_argument(
        "--spool-when",
        choices=SPOOL_WHEN,
        default=defaults.spool_when,
        help="GatewayUnavailable: spool what a gateway cannot take now (connection refused or "
        "timed out, a retryable 0xA7xx answer, a gateway that just failed, a gateway marked "
        "not Ready, which is then not tried); Always: spool every instance first "
        "(default %(default)s)",
    )
    spool.add_argument(
        "--spool-max-bytes",
        type=int,
        default=None,
        metavar="BYTES",
        help="the most the spool's files may take; a full spool answers 0xA700 (out of "
        "resources), never Success (default: the volume's room)",
    )
    spool.add_argument(
        "--spool-retention",
        type=float,
        default=defaults.spool_retention,
        metavar="SECONDS",
        help="an instance still waiting after this long is overdue: logged, counted in "
        "gatewaypool_router_spool_overdue_instances, never dropped (default %(default)s)",
    )


def config_from_args(args: argparse.Namespace) -> RouterConfig:
    """Build the validated configuration; raises ConfigError naming the option."""
    gateways = tuple(parse_gateway(text, index) for index, text in enumerate(args.gateway or []))
    return RouterConfig(
        ae_title=args.aet,
        bind=args.bind,
        port=args.port,
        http_bind=args.http_bind,
        http_port=args.http_port,
        map_file=args.map,
        readiness_file=args.readiness,
        gateways=gateways,
        map_configmap=(
            ObjectRef.parse("--map-configmap", args.map_configmap) if args.map_configmap else None
        ),
        report_configmap=(
            ObjectRef.parse("--report-configmap", args.report_configmap)
            if args.report_configmap
            else None
        ),
        kubeconfig=args.kubeconfig,
        pod_name=args.pod_name,
        watch_seconds=args.watch_timeout,
        buckets=args.buckets,
        allowed_calling_aes=frozenset(a.strip() for a in args.allow_calling_aet),
        require_called_ae=args.require_called_aet,
        forward_calling_ae=args.forward_calling_aet,
        max_associations=args.max_associations,
        max_pdu=args.max_pdu,
        forwarding=args.forwarding,
        gateway_timeout=args.gateway_timeout,
        connect_timeout=args.connect_timeout,
        acse_timeout=args.acse_timeout,
        idle_timeout=args.idle_timeout,
        gateway_idle_release=args.gateway_idle_release,
        stall_warning=args.stall_warning,
        closing_hold=args.closing_hold,
        header_limit=args.header_limit,
        shutdown_grace=args.shutdown_grace,
        study_quiet_seconds=args.study_quiet_seconds,
        study_record_size=args.study_record_size,
        workers=available_cpus() if args.workers is None else args.workers,
        connect_to=tuple(ConnectTo.parse(rule) for rule in args.connect_to),
        plain_port=args.plain_port,
        tls_port=args.tls_port,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        caller_subjects=tuple(CallerSubject.parse(text) for text in args.caller_subject),
        gateway_tls_ca=args.gateway_tls_ca,
        gateway_tls_cert=args.gateway_tls_cert,
        gateway_tls_key=args.gateway_tls_key,
        accepted_transfer_syntaxes=tuple(args.accepted_transfer_syntax),
        sop_classes=tuple(args.sop_class),
        spool_dir=args.spool_dir,
        spool_when=args.spool_when,
        spool_max_bytes=args.spool_max_bytes,
        spool_retention=args.spool_retention,
    )


def run(args: argparse.Namespace) -> int:
    logs.configure(level=args.log_level, fmt=args.log_format)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"gatewaypool router: {exc}", file=sys.stderr)
        return 2
    from gatewaypool_router import splice, tls

    try:
        tls.check_files(config)
    except tls.TlsFileError as exc:
        print(f"gatewaypool router: {exc}", file=sys.stderr)
        return 2
    if config.forwarding == "splice" and not splice.available():
        print(
            "gatewaypool router: --forwarding splice: this system cannot splice between sockets",
            file=sys.stderr,
        )
        return 2
    if config.workers > 1:
        return _run_workers(config, args)
    from gatewaypool_router.server import Router

    return _serve(Router(config), config)


class _Replica(Protocol):
    """What runs a replica: the single-process `Router` or the workers' `Supervisor`."""

    def start(self) -> None: ...

    def request_stop(self) -> None: ...

    def wait(self) -> None: ...

    def stop(self) -> None: ...


def _serve(replica: _Replica, config: RouterConfig) -> int:
    """Start `replica`, serve until SIGTERM or SIGINT, then drain and stop it."""
    try:
        replica.start()
    except OSError as exc:
        ports = [config.port] if config.plain_port else []
        if config.tls_cert is not None:
            ports.append(config.tls_port)
        where = " and ".join(f"{config.bind}:{port}" for port in ports)
        print(f"gatewaypool router: cannot listen on {where}: {exc}", file=sys.stderr)
        return 1

    def on_signal(signum: int, _frame: object) -> None:
        logs.log_event(log, logging.INFO, "router.signal", signal=signal.Signals(signum).name)
        replica.request_stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    replica.wait()
    replica.stop()
    return 0


def _run_workers(config: RouterConfig, args: argparse.Namespace) -> int:
    """Run a supervisor and its workers: one replica on ``config.workers`` cores.

    Every metric of the replica's processes is kept in files of one fresh
    folder (prometheus_client's multiprocess mode), which must be chosen
    before prometheus_client is imported, in this process and in the
    workers, which inherit the environment.
    """
    if "prometheus_client" in sys.modules:
        print("gatewaypool router: metrics were set up before the workers' folder", file=sys.stderr)
        return 1
    folder = Path(tempfile.mkdtemp(prefix="gatewaypool-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    try:
        from gatewaypool_router.supervisor import Supervisor

        supervisor = Supervisor(
            config,
            workers=config.workers,
            multiproc_dir=folder,
            log_level=args.log_level,
            log_format=args.log_format,
        )
        return _serve(supervisor, config)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
