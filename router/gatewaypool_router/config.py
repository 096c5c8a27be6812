"""The router's one configuration model, validated at start.

Every error names the option and the value, so a wrong flag in a Deployment
is obvious from the pod's first log line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from gatewaypool.bucketmap import Gateway
from gatewaypool.contract import ae_title_problem, uid_problem

#: More worker processes than this is a typo, not a machine.
MAX_WORKERS = 256
#: The most studies ``--study-record-size`` keeps (some 1 KB each).
MAX_STUDY_RECORD = 1_000_000

#: ``--forwarding``: how data set bytes move once an instance's gateway is
#: known. ``splice`` moves them inside the kernel (Linux), ``copy`` through
#: the router's memory, ``auto`` splices where the system can.
FORWARDING_MODES = ("auto", "splice", "copy")

#: ``--spool-when``: spool only what a gateway cannot take now, or everything.
SPOOL_WHEN = ("GatewayUnavailable", "Always")


class ConfigError(ValueError):
    """An invalid option; the message names it and its value."""


@dataclass(frozen=True, slots=True)
class ConnectTo:
    """Connect to another address than the map says (curl's ``--connect-to``).

    ``HOST:PORT:CONNECT_HOST:CONNECT_PORT``; an empty HOST or PORT matches
    any. Lets the router reach cluster DNS names of a map where they do not
    resolve (a laptop, tests), without changing the map.
    """

    host: str
    port: int | None
    connect_host: str
    connect_port: int | None

    @classmethod
    def parse(cls, text: str) -> ConnectTo:
        parts = text.rsplit(":", 3)
        if len(parts) != 4 or not parts[2]:
            raise ConfigError(f"--connect-to: {text!r} is not HOST:PORT:CONNECT_HOST:CONNECT_PORT")
        host, port, connect_host, connect_port = parts
        return cls(
            host=host,
            port=_port_or_none("--connect-to", port),
            connect_host=connect_host,
            connect_port=_port_or_none("--connect-to", connect_port),
        )

    def apply(self, host: str, port: int) -> tuple[str, int] | None:
        if (self.host and self.host != host) or (self.port is not None and self.port != port):
            return None
        return self.connect_host, self.connect_port if self.connect_port is not None else port


def _port_or_none(option: str, text: str) -> int | None:
    if not text:
        return None
    return check_port(option, text)


def check_port(option: str, value: int | str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ConfigError(f"{option}: {value!r} is not a TCP port (1..65535)") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"{option}: {value!r} is not a TCP port (1..65535)")
    return port


def check_ae_title(option: str, value: str) -> str:
    problem = ae_title_problem(value)
    if problem is not None:
        raise ConfigError(f"{option}: {value!r} is not an AE title ({problem})")
    return value.strip()


def parse_gateway(text: str, index: int) -> Gateway:
    """Parse ``AET@HOST:PORT`` (the quick-start form of ``--gateway``)."""
    match = re.fullmatch(r"(?P<ae>[^@]+)@(?P<host>[^:@\s]+):(?P<port>\d+)", text)
    if match is None:
        raise ConfigError(f"--gateway: {text!r} is not AET@HOST:PORT")
    ae_title = check_ae_title("--gateway", match["ae"])
    port = check_port("--gateway", match["port"])
    return Gateway(name=f"gw-{index}", host=match["host"], port=port, ae_title=ae_title)


@dataclass(frozen=True, slots=True)
class CallerSubject:
    """``--caller-subject AE=SUBJECT``: this calling AE title only with this certificate."""

    ae_title: str
    #: RFC 4514, as :func:`gatewaypool_router.tls.normalize_subject` prints it.
    subject: str

    @classmethod
    def parse(cls, text: str) -> CallerSubject:
        from gatewaypool_router.tls import normalize_subject

        ae_title, sep, subject = text.partition("=")
        if not sep or not subject.strip():
            raise ConfigError(f"--caller-subject: {text!r} is not AE=SUBJECT")
        ae_title = check_ae_title("--caller-subject", ae_title)
        try:
            normalized = normalize_subject(subject)
        except ValueError as exc:
            raise ConfigError(f"--caller-subject: {subject!r}: {exc}") from None
        return cls(ae_title=ae_title, subject=normalized)


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """``NAMESPACE/NAME`` of a Kubernetes object (a ConfigMap)."""

    namespace: str
    name: str

    @classmethod
    def parse(cls, option: str, text: str) -> ObjectRef:
        parts = text.split("/")
        dns_label = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
        if len(parts) != 2 or not all(dns_label.match(part) for part in parts):
            raise ConfigError(f"{option}: {text!r} is not NAMESPACE/NAME")
        return cls(namespace=parts[0], name=parts[1])

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Everything one router process is told at start."""

    ae_title: str = "GATEWAYPOOL"
    bind: str = "0.0.0.0"
    port: int = 11112
    http_bind: str = "0.0.0.0"
    http_port: int = 8080
    map_file: Path | None = None
    #: ``--readiness``: the gateways not Ready, polled beside ``--map``.
    readiness_file: Path | None = None
    gateways: tuple[Gateway, ...] = ()
    map_configmap: ObjectRef | None = None
    report_configmap: ObjectRef | None = None
    kubeconfig: Path | None = None
    pod_name: str = ""
    buckets: int = 4096
    allowed_calling_aes: frozenset[str] = frozenset()
    require_called_ae: bool = False
    forward_calling_ae: bool = False
    max_associations: int = 64
    max_pdu: int = 262144
    gateway_timeout: float = 20.0
    connect_timeout: float = 5.0
    acse_timeout: float = 30.0
    idle_timeout: float = 600.0
    #: Release a gateway association idle this long (below gateways' own
    #: idle timeouts: Orthanc's DicomScpTimeout is 30 s by default).
    gateway_idle_release: float = 20.0
    stall_warning: float = 10.0
    closing_hold: float = 10.0
    header_limit: int = 4 * 1024 * 1024
    map_poll_interval: float = 1.0
    watch_seconds: int = 50
    shutdown_grace: float = 30.0
    study_quiet_seconds: float = 30.0
    #: Studies kept in the record served at ``/studies/UID`` (per worker).
    study_record_size: int = 10000
    workers: int = 1
    forwarding: str = "auto"
    connect_to: tuple[ConnectTo, ...] = field(default=())
    #: Listen on ``port`` (plain DICOM); False needs ``tls_cert`` (``--no-plain-port``).
    plain_port: bool = True
    #: The DICOM TLS port, listened on only with ``tls_cert``.
    tls_port: int = 2762
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: Callers on the TLS port must present a certificate this CA bundle verifies.
    tls_client_ca: Path | None = None
    #: ``--caller-subject``: calling AE title -> the client certificate subjects
    #: (RFC 4514, normalized) it must present.
    caller_subjects: tuple[CallerSubject, ...] = ()
    gateway_tls_ca: Path | None = None
    gateway_tls_cert: Path | None = None
    gateway_tls_key: Path | None = None
    #: ``--accepted-transfer-syntax``: the transfer syntaxes the gateways
    #: accept, preferred first, instead of probing them.
    accepted_transfer_syntaxes: tuple[str, ...] = ()
    #: ``--sop-class``: the SOP classes the gateways accept (private ones
    #: too), instead of probing them.
    sop_classes: tuple[str, ...] = ()
    #: ``--spool-dir``: store and forward through this folder (off when None).
    spool_dir: Path | None = None
    spool_when: str = "GatewayUnavailable"
    #: ``--spool-max-bytes``: what the spool's files may take; None: the volume's room.
    spool_max_bytes: int | None = None
    #: ``--spool-retention``: an instance waiting longer is overdue (alert), never dropped.
    spool_retention: float = 86400.0

    def __post_init__(self) -> None:
        check_ae_title("--aet", self.ae_title)
        # Port 0 asks the kernel for a free port (tests, the local demo).
        if self.port != 0:
            check_port("--port", self.port)
        if self.http_port != 0:
            check_port("--http-port", self.http_port)
        self._check_map_source()
        for ae in self.allowed_calling_aes:
            check_ae_title("--allow-calling-aet", ae)
        self._check_limits()
        self._check_syntaxes()
        self._check_tls()
        self._check_spool()

    def _check_spool(self) -> None:
        if self.spool_when not in SPOOL_WHEN:
            raise ConfigError(
                f"--spool-when: {self.spool_when!r} is not one of {', '.join(SPOOL_WHEN)}"
            )
        if self.spool_max_bytes is not None and self.spool_max_bytes < 1:
            raise ConfigError(f"--spool-max-bytes: {self.spool_max_bytes} must be positive")
        if not self.spool_retention > 0:
            raise ConfigError(f"--spool-retention: {self.spool_retention} must be positive")
        if self.spool_dir is None and (
            self.spool_max_bytes is not None or self.spool_when != "GatewayUnavailable"
        ):
            raise ConfigError("--spool-when and --spool-max-bytes need --spool-dir")

    def _check_map_source(self) -> None:
        """One map source, and a bucket count the gateways fit in."""
        if self.readiness_file is not None and self.map_file is None:
            raise ConfigError("--readiness needs --map (a ConfigMap holds its own readiness)")
        sources = [self.map_file is not None, bool(self.gateways), self.map_configmap is not None]
        if sum(sources) != 1:
            raise ConfigError(
                "give exactly one of --map FILE, --map-configmap NAMESPACE/NAME "
                "or at least one --gateway AET@HOST:PORT"
            )
        if self.report_configmap is not None and not self.pod_name:
            raise ConfigError("--report-configmap needs --pod-name (or $POD_NAME)")
        if not 1 <= self.buckets <= 65536:
            raise ConfigError(f"--buckets: {self.buckets} is not in 1..65536")
        if self.gateways and len(self.gateways) > self.buckets:
            raise ConfigError(
                f"--gateway: {len(self.gateways)} gateways but only {self.buckets} buckets"
            )

    def _check_limits(self) -> None:
        """Limits, timeouts and the forwarding mode, each in its range."""
        if not 1 <= self.max_associations <= 10000:
            raise ConfigError(f"--max-associations: {self.max_associations} is not in 1..10000")
        if not 4096 <= self.max_pdu <= 16 * 1024 * 1024:
            raise ConfigError(f"--max-pdu: {self.max_pdu} is not in 4096..16777216")
        for name in (
            "gateway_timeout",
            "connect_timeout",
            "acse_timeout",
            "idle_timeout",
            "gateway_idle_release",
            "stall_warning",
            "closing_hold",
        ):
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')}: {value} must be positive")
        if not 1 <= self.watch_seconds <= 3600:
            raise ConfigError(f"--watch-timeout: {self.watch_seconds} is not in 1..3600")
        # The operator passes the pool's spec.handover.quietSeconds (1..3600).
        if not 1 <= self.study_quiet_seconds <= 3600:
            raise ConfigError(
                f"--study-quiet-seconds: {self.study_quiet_seconds} is not in 1..3600"
            )
        if not 0 <= self.study_record_size <= MAX_STUDY_RECORD:
            raise ConfigError(
                f"--study-record-size: {self.study_record_size} is not in 0..{MAX_STUDY_RECORD}"
            )
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(f"--workers: {self.workers} is not in 1..{MAX_WORKERS}")
        if self.forwarding not in FORWARDING_MODES:
            raise ConfigError(
                f"--forwarding: {self.forwarding!r} is not one of {', '.join(FORWARDING_MODES)}"
            )
        if self.header_limit < 1024:
            raise ConfigError(f"--header-limit: {self.header_limit} is below 1024 bytes")

    def _check_syntaxes(self) -> None:
        """UIDs, each once. A transfer syntax the router cannot read is left out
        when senders negotiate (it could not route those data sets)."""
        for option, values in (
            ("--accepted-transfer-syntax", self.accepted_transfer_syntaxes),
            ("--sop-class", self.sop_classes),
        ):
            for uid in values:
                problem = uid_problem(uid)
                if problem is not None:
                    raise ConfigError(f"{option}: {uid!r} is not a UID ({problem})")
            if len(set(values)) != len(values):
                raise ConfigError(f"{option}: a UID is given twice")

    def _check_tls(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
        if self.tls_port != 0:
            check_port("--tls-port", self.tls_port)
        if not self.plain_port and self.tls_cert is None:
            raise ConfigError("--no-plain-port needs --tls-cert and --tls-key (no port left)")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("--tls-client-ca needs --tls-cert and --tls-key")
        if self.caller_subjects and self.tls_client_ca is None:
            raise ConfigError(
                "--caller-subject needs --tls-client-ca (a subject is only known from a "
                "verified client certificate)"
            )
        if (
            self.tls_cert is not None
            and self.plain_port
            and self.port != 0
            and self.port == self.tls_port
        ):
            raise ConfigError(
                f"--tls-port: {self.tls_port} is also --port; give them different ports "
                "or --no-plain-port"
            )
        if (self.gateway_tls_cert is None) != (self.gateway_tls_key is None):
            raise ConfigError(
                "--gateway-tls-cert and --gateway-tls-key go together: give both or neither"
            )
        if self.gateway_tls_cert is not None and self.gateway_tls_ca is None:
            raise ConfigError("--gateway-tls-cert needs --gateway-tls-ca")
        if self.forwarding == "splice" and not self.can_splice:
            why = (
                "every gateway connection is TLS (--gateway-tls-ca)"
                if self.gateway_tls_ca is not None
                else "the only port is TLS (--no-plain-port)"
                if not self.plain_port
                else "every instance is also written to the spool (--spool-dir)"
            )
            raise ConfigError(
                f"--forwarding splice: no connection could splice, {why}; kernel splicing "
                "would bypass TLS. Use --forwarding auto or copy"
            )

    @property
    def can_splice(self) -> bool:
        """Whether any association could use the splice path: a plain leg on both sides.

        Not with a spool: every instance's bytes go to its file as well.
        """
        return self.gateway_tls_ca is None and self.plain_port and self.spool_dir is None

    def subjects_for(self, calling_ae: str) -> frozenset[str] | None:
        """The subjects bound to `calling_ae` by ``--caller-subject``, or None if unbound."""
        subjects = frozenset(b.subject for b in self.caller_subjects if b.ae_title == calling_ae)
        return subjects or None

    def resolve(self, host: str, port: int) -> tuple[str, int]:
        """The address to connect to for a gateway named ``host:port`` in the map."""
        for rule in self.connect_to:
            target = rule.apply(host, port)
            if target is not None:
                return target
        return host, port
