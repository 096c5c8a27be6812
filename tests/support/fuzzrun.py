"""Aim :mod:`support.pdufuzz` cases at a running router, with a real sender alongside.

:func:`run` sends the cases over several concurrent connections while a
pynetdicom sender (:mod:`gatewaypool_local.scu`, its own process, as a
modality is) stores real studies through the same router, then checks:

- the router process is alive, and still answers a C-ECHO and stores;
- every case's connection ended within a deadline after its last byte: the
  router answered, aborted or closed, and never hung;
- every instance of the well-formed sender was answered 0x0000 and arrived
  byte-identical at the gateway;
- the gateway holds nothing but whole data sets: each stored instance is,
  byte for byte, one the sender or a case sent (a truncated prefix fails);
- a case's C-STORE the router answered 0x0000 is at the gateway, a
  well-formed case was served in full, a broken data set was never answered
  0x0000;
- the router's peak RSS grew by less than the stated bound over its
  baseline;
- the router's log shows no crashed association handler and no traceback.

``python -m support.fuzzrun`` (``./dev.sh fuzz``) starts a sink and a router
per forwarding mode itself and prints the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import selectors
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from gatewaypool_local import sink as sink_module
from gatewaypool_local.peers.gateway import echo
from gatewaypool_local.peers.process import LOOPBACK, free_port, wait_until
from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.scu import PynetdicomSendError, send_files
from gatewaypool_local.synth import Study, dataset_bytes, generate_study
from support import rawdicom
from support.certs import TestCA
from support.pdufuzz import Case, generate

#: Router timeouts for a fuzz run (--acse-timeout, --idle-timeout): a case
#: left open costs this long.
ROUTER_TIMEOUT = 4.0
#: --gateway-timeout: a case whose garbled command the gateway ignores costs
#: this long; the well-formed sender's instances must never reach it.
GATEWAY_TIMEOUT = 8.0
#: The router options of a fuzz run (besides --forwarding).
ROUTER_OPTIONS = (
    *("--acse-timeout", str(ROUTER_TIMEOUT)),
    *("--idle-timeout", str(ROUTER_TIMEOUT)),
    *("--gateway-timeout", str(GATEWAY_TIMEOUT)),
)
#: After a case's last byte, how long the router may take to end the
#: connection: a gateway timeout for each of a case's two C-STOREs, the idle
#: timeout, and a margin for a loaded machine.
CASE_DEADLINE = 2 * GATEWAY_TIMEOUT + ROUTER_TIMEOUT + 8.0
#: What the router's peak RSS may grow by over its baseline during a run:
#: per concurrent connection an A-ASSOCIATE-RQ of up to 1 MiB and a 256 KiB
#: read buffer, with room to spare; a leak of 16 KiB per case exceeds it over
#: 3000 cases.
RSS_GROWTH_LIMIT = 48 * 2**20
SUCCESS = 0x0000
C_STORE_RSP = 0x8001


@dataclass
class CaseResult:
    """How the router treated one case."""

    case: Case
    #: ``rejected``, ``aborted``, ``released``, ``closed`` (EOF or RST
    #: without an A-ABORT), ``reset`` (we reset it), ``hung``, or ``refused``
    #: (no TCP connection).
    outcome: str
    #: (command field, status, AffectedSOPInstanceUID) of every DIMSE response.
    responses: list[tuple[int, int, str]]
    seconds: float
    #: Our end's TCP port: the router logs the connection as peer 127.0.0.1:<port>.
    port: int = 0


@dataclass
class Report:
    """Everything a run measured, and every problem it found."""

    mode: str
    results: list[CaseResult] = field(default_factory=list)
    sender_sent: int = 0
    sender_delivered: int = 0
    sender_rounds: int = 0
    rss_baseline: int = 0
    rss_peak: int = 0
    rss_end: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


# -- one case --------------------------------------------------------------------


class _Connection:
    """A non-blocking client socket that reads whatever comes while it writes.

    With `tls`, the case's bytes travel inside TLS: the handshake is done
    first, and TLS runs over memory buffers (``ssl.MemoryBIO``) so that the
    same select loop drives it; a half-close or a reset then cuts the TLS
    stream as it cuts a plain one, without ``close_notify``.
    """

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setblocking(False)
        self.received = bytearray()
        self.eof = False
        self._selector = selectors.DefaultSelector()
        self._selector.register(self.sock, selectors.EVENT_READ)
        self._tls: ssl.SSLObject | None = None
        self._handshaken = False
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        if tls is not None:
            self._tls = tls.wrap_bio(self._incoming, self._outgoing, server_hostname=host)
            self._handshake(time.monotonic() + 10)

    def _handshake(self, deadline: float) -> None:
        assert self._tls is not None
        while True:
            with contextlib.suppress(ssl.SSLWantReadError):
                self._tls.do_handshake()
                self._handshaken = True
            self._raw_send(self._outgoing.read(), deadline)
            if self._handshaken and not self._outgoing.pending:
                self._decrypt()  # anything that came with the handshake's end
                return
            if self.eof or time.monotonic() >= deadline:
                raise OSError("TLS handshake with the router did not finish")
            if self._selector.select(deadline - time.monotonic()):
                self._read()

    def _read(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:  # reset by the router
            self.eof = True
            return
        if self._tls is None:
            if chunk:
                self.received += chunk
            else:
                self.eof = True
            return
        if chunk:
            self._incoming.write(chunk)
        else:
            self._incoming.write_eof()
        if self._handshaken:
            self._decrypt()  # sees the EOF too, after what came before it
        elif not chunk:
            self.eof = True  # closed during the handshake

    def _decrypt(self) -> None:
        assert self._tls is not None
        while True:
            try:
                plain = self._tls.read(65536)
            except ssl.SSLWantReadError:
                if self._incoming.eof:
                    self.eof = True
                return
            except (ssl.SSLZeroReturnError, ssl.SSLError):  # close_notify, or a cut stream
                self.eof = True
                return
            if not plain:
                self.eof = True
                return
            self.received += plain

    def _raw_send(self, data: bytes, deadline: float) -> bool:
        """Send ``data`` on the TCP socket, reading meanwhile; as :meth:`send`."""
        view = memoryview(data)
        self._selector.modify(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        try:
            while view and not self.eof:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                for _key, events in self._selector.select(remaining):
                    if events & selectors.EVENT_READ:
                        self._read()
                    if events & selectors.EVENT_WRITE and view:
                        try:
                            view = view[self.sock.send(view[:65536]) :]
                        except BlockingIOError:
                            pass
                        except OSError:
                            self.eof = True
        finally:
            self._selector.modify(self.sock, selectors.EVENT_READ)
        return not view

    def send(self, data: bytes, deadline: float) -> bool:
        """Send ``data``; False if the router closed first or the deadline passed."""
        if self._tls is None:
            return self._raw_send(data, deadline)
        for at in range(0, len(data), 16384):  # one TLS record at a time
            self._tls.write(data[at : at + 16384])
            if not self._raw_send(self._outgoing.read(), deadline):
                return False
        return not self.eof

    def read_to_end(self, deadline: float) -> bool:
        """Read until the router closes; False if it has not by ``deadline``."""
        while not self.eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self._selector.select(remaining):
                self._read()
        return True

    def half_close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_WR)

    def reset(self) -> None:
        """Close with an RST, as a crashed or unplugged peer does."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def close(self) -> None:
        self._selector.close()
        self.sock.close()


def _responses(received: bytes) -> tuple[list[int], list[tuple[int, int, str]]]:
    """PDU types and DIMSE responses (field, status, SOP instance) the router sent."""
    replies, _rest = rawdicom.split_pdus(received)
    types = [reply.pdu_type for reply in replies]
    responses = []
    command = b""
    for reply in replies:
        if reply.pdu_type != rawdicom.P_DATA_TF:
            continue
        offset = 0
        while offset + 6 <= len(reply.body):
            length, _context, control = struct.unpack_from(">LBB", reply.body, offset)
            command += reply.body[offset + 6 : offset + 4 + length]
            offset += 4 + length
            if control & rawdicom.MCH_LAST:
                elements = rawdicom.command_elements(command)
                command = b""
                if 0x0900 in elements:
                    field_ = int.from_bytes(elements.get(0x0100, b""), "little")
                    status = int.from_bytes(elements[0x0900], "little")
                    sop = elements.get(0x1000, b"").rstrip(b"\0 ").decode("ascii", "replace")
                    responses.append((field_, status, sop))
    return types, responses


def run_case(
    case: Case,
    host: str,
    port: int,
    *,
    deadline: float = CASE_DEADLINE,
    tls: ssl.SSLContext | None = None,
) -> CaseResult:
    """Send one case and wait (up to ``deadline`` after its last byte) for the router to end it.

    With `tls`, over TLS to the router's TLS port `port`.
    """
    started = time.monotonic()
    try:
        conn = _Connection(host, port, tls)
    except OSError:
        return CaseResult(case, "refused", [], time.monotonic() - started)
    local_port = conn.sock.getsockname()[1]
    try:
        limit = started + 60.0
        if case.pace is None:
            conn.send(case.stream, limit)
        else:
            piece, pause = case.pace
            for at in range(0, len(case.stream), piece):
                if not conn.send(case.stream[at : at + piece], limit):
                    break
                time.sleep(pause)  # the slow sender itself, not a synchronisation
        if case.ending == "reset":
            outcome = "reset"
        else:
            if case.ending in ("release", "half-close"):
                conn.half_close()
            ended = conn.read_to_end(time.monotonic() + deadline)
            outcome = "closed" if ended else "hung"
    finally:
        if case.ending == "reset":
            conn.reset()
        else:
            conn.close()
    types, responses = _responses(bytes(conn.received))
    for pdu_type, name in (
        (rawdicom.ASSOCIATE_RJ, "rejected"),
        (rawdicom.ABORT, "aborted"),
        (rawdicom.RELEASE_RP, "released"),
    ):
        if outcome == "closed" and pdu_type in types:
            outcome = name
    return CaseResult(case, outcome, responses, time.monotonic() - started, local_port)


# -- the run ---------------------------------------------------------------------


def tls_target(folder: Path) -> tuple[list[str], tuple[int, ssl.SSLContext]]:
    """A TLS port for a fuzz run: the router's options, and ``run``'s `tls` for them.

    The certificates (a CA and the router's, for localhost and 127.0.0.1)
    are made in `folder`.
    """
    ca = TestCA(folder)
    server = ca.issue("server")
    port = free_port()
    options = ["--tls-port", str(port), "--tls-cert", str(server.cert)]
    options += ["--tls-key", str(server.key)]
    return options, (port, ssl.create_default_context(cafile=str(ca.bundle)))


class _Sender(threading.Thread):
    """The well-formed sender: one study per association, round after round."""

    def __init__(self, router: RouterProcess, studies: Sequence[Study], done: threading.Event):
        super().__init__(name="wellformed-sender", daemon=True)
        self._router = router
        self._studies = studies
        self._done = done
        self.statuses: dict[str, list[int | None]] = defaultdict(list)
        self.rounds = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self._done.is_set() or self.rounds == 0:
            study = self._studies[self.rounds % len(self._studies)]
            command = [
                sys.executable,
                "-m",
                "gatewaypool_local.scu",
                self._router.host,
                str(self._router.port),
                *(str(path) for path in study.files),
                "--called-ae",
                self._router.ae_title,
                "--calling-ae",
                "WELLFORMED",
                "--timeout",
                "30",
            ]
            try:
                done = subprocess.run(
                    command, capture_output=True, text=True, timeout=120, check=False
                )
            except subprocess.TimeoutExpired:
                self.errors.append(f"round {self.rounds}: sender timed out")
                return
            for line in done.stdout.splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    self.errors.append(f"round {self.rounds}: sender printed {line[:200]!r}")
                    continue
                if "sop" in record:
                    self.statuses[record["sop"]].append(record["status"])
            if done.returncode != 0:
                self.errors.append(
                    f"round {self.rounds}: exit {done.returncode}: {done.stderr[-300:]}"
                )
            self.rounds += 1


def _stored(gateway: PynetdicomSink) -> dict[str, bytes]:
    """SOPInstanceUID -> data set bytes of every instance the sink holds."""
    held = {}
    for record in gateway.index_records():
        sop = record["sop_instance_uid"]
        path = gateway.out_dir / sink_module.instance_file_name(sop)
        held[sop] = path.read_bytes()
    return held


def _rss_now(router: RouterProcess) -> int:
    """VmRSS of the router: what it holds now, after the run (a leak stays)."""
    status = Path(f"/proc/{router.pid}/status").read_text()
    [line] = [line for line in status.splitlines() if line.startswith("VmRSS:")]
    return int(line.split()[1]) * 1024


def check_stored(stored: dict[str, bytes], originals: dict[str, str]) -> list[str]:
    """Problems with what a gateway stored: anything that is not a whole original.

    ``originals`` maps the SHA-256 of every data set sent (well-formed or
    fuzz) to its SOPInstanceUID.
    """
    problems = []
    known = set(originals.values())
    for sop, data in sorted(stored.items()):
        if hashlib.sha256(data).hexdigest() not in originals:
            what = "a partial or altered copy of the data set sent" if sop in known else "unknown"
            problems.append(f"gateway stored {sop} ({len(data)} bytes): {what}")
    return problems


def check_cases(results: list[CaseResult], stored: dict[str, bytes]) -> list[str]:
    """Problems with how the router treated each case (hangs, statuses)."""
    stored_hashes = {hashlib.sha256(data).hexdigest() for data in stored.values()}
    problems = []
    for result in results:
        case = result.case
        statuses = [status for field_, status, _sop in result.responses if field_ == C_STORE_RSP]
        if result.outcome == "hung":
            problems.append(f"router did not end the connection: {case.describe()}")
        elif result.outcome == "refused":
            problems.append(f"router refused the TCP connection: {case.describe()}")
        for field_, status, sop in result.responses:
            # By name, or by bytes: a command whose UID a flipped bit made
            # non-ASCII names the instance differently at each end.
            at_gateway = sop in stored or not stored_hashes.isdisjoint(case.data_sets)
            if field_ == C_STORE_RSP and status == SUCCESS and not at_gateway:
                problems.append(f"answered 0x0000 for {sop}, not at the gateway: {case.describe()}")
        if case.must_succeed and (
            result.outcome != "released" or not statuses or set(statuses) != {SUCCESS}
        ):
            problems.append(
                f"well-formed case ended {result.outcome} with statuses "
                f"{[hex(s) for s in statuses]}: {case.describe()}"
            )
        if case.must_not_succeed and SUCCESS in statuses:
            problems.append(f"broken data set answered 0x0000: {case.describe()}")
    return problems


def _log_problems(router: RouterProcess, results: list[CaseResult]) -> list[str]:
    """A crashed association handler, or any traceback in the router's log.

    pynetdicom's own count too: one per hostile connection would let a
    sender flood the log (the router keeps pynetdicom.utils quiet).
    """
    by_peer = {f"peer={LOOPBACK}:{r.port}": r.case.describe() for r in results}
    problems = []
    for record in router.log_records():
        event = str(record.get("event", ""))
        if event.startswith("association.crashed") or "exception" in record:
            case = next((c for peer, c in by_peer.items() if event.endswith(peer)), "")
            trace = str(record.get("exception", ""))[-600:]
            problems.append(f"router log: {event} {case}\n{trace}")
    return problems


def run(
    router: RouterProcess,
    gateway: PynetdicomSink,
    studies: Sequence[Study],
    *,
    seed: int,
    indexes: range,
    workers: int = 4,
    mode: str = "",
    rss_limit: int = RSS_GROWTH_LIMIT,
    tls: tuple[int, ssl.SSLContext] | None = None,
) -> Report:
    """Run cases ``indexes`` of ``seed`` against ``router`` (whose gateway is ``gateway``).

    With `tls` (the router's TLS port and a client context for it), the cases
    go over TLS; the well-formed sender stays on the plain port beside them.
    """
    case_port, case_tls = (router.port, None) if tls is None else tls
    report = Report(mode=mode)
    started = time.monotonic()
    # Warm up (codecs loaded, first association served) before the baseline.
    if echo(router.host, router.port, called_ae=router.ae_title, timeout=10) != SUCCESS:
        report.problems.append("router did not answer a C-ECHO before the run")
        return report
    report.rss_baseline = router.peak_rss_bytes()
    done = threading.Event()
    sender = _Sender(router, studies, done)
    sender.start()
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fuzz") as pool:
        futures = [
            pool.submit(
                run_case,
                generate(seed, index, router_ae=router.ae_title),
                router.host,
                case_port,
                tls=case_tls,
            )
            for index in indexes
        ]
        report.results = [future.result() for future in futures]
    done.set()
    sender.join(timeout=180)
    report.sender_rounds = sender.rounds
    report.problems += sender.errors

    if not router.is_running():
        report.problems.append("router process died")
        return report
    if echo(router.host, router.port, called_ae=router.ae_title, timeout=10) != SUCCESS:
        report.problems.append("router no longer answers C-ECHO")
    try:
        [after] = send_files(
            router.host, router.port, [studies[0].files[0]], called_ae=router.ae_title
        )
    except PynetdicomSendError as exc:
        report.problems.append(f"router no longer stores: {exc}")
    else:
        if after.status != SUCCESS:
            report.problems.append(f"router no longer stores: status {after.status}")
    try:
        wait_until(
            lambda: router.metric("gatewaypool_router_active_associations") == 0,
            timeout=30,
            what="every association ended",
        )
    except TimeoutError as exc:
        report.problems.append(str(exc))
    report.rss_peak = router.peak_rss_bytes()
    report.rss_end = _rss_now(router)
    if report.rss_peak - report.rss_baseline > rss_limit:
        report.problems.append(
            f"router peak RSS grew {(report.rss_peak - report.rss_baseline) / 2**20:.1f} MiB "
            f"over its baseline, more than {rss_limit / 2**20:.0f} MiB"
        )

    stored = _stored(gateway)
    originals: dict[str, str] = {}
    expected: dict[str, str] = {}
    for study in studies:
        for path, sop in zip(study.files, study.sop_instance_uids, strict=True):
            digest = hashlib.sha256(dataset_bytes(path)).hexdigest()
            originals[digest] = sop
            expected[sop] = digest
    for result in report.results:
        originals.update(result.case.data_sets)
    report.problems += check_stored(stored, originals)
    for sop, statuses in sender.statuses.items():
        report.sender_sent += len(statuses)
        if any(status != SUCCESS for status in statuses):
            report.problems.append(f"well-formed instance {sop} answered {statuses}")
        elif sop not in stored or hashlib.sha256(stored[sop]).hexdigest() != expected[sop]:
            report.problems.append(f"well-formed instance {sop} not at the gateway as sent")
        else:
            report.sender_delivered += len(statuses)
    report.problems += check_cases(report.results, stored)
    report.problems += _log_problems(router, report.results)
    report.seconds = time.monotonic() - started
    return report


# -- figures ---------------------------------------------------------------------


def _outcome_label(result: CaseResult) -> str:
    statuses = sorted(
        {f"0x{status:04X}" for field_, status, _sop in result.responses if field_ == C_STORE_RSP}
    )
    return result.outcome + (f" [{' '.join(statuses)}]" if statuses else "")


def figures(reports: Sequence[Report]) -> str:
    """The run in figures: cases and outcomes by kind, durations, memory, deliveries."""
    lines = []
    results = [r for report in reports for r in report.results]
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for result in results:
        by_kind[result.case.kind][_outcome_label(result)] += 1
    lines.append(f"{len(results)} cases")
    lines.append(f"{'kind':22} {'cases':>6}  outcomes")
    for kind in sorted(by_kind):
        outcomes = ", ".join(f"{label} {n}" for label, n in by_kind[kind].most_common())
        lines.append(f"{kind:22} {sum(by_kind[kind].values()):6}  {outcomes}")
    totals = Counter(r.outcome for r in results)
    lines.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in totals.most_common()))
    for report in reports:
        slowest = max(report.results, key=lambda r: r.seconds, default=None)
        lines.append(
            f"[{report.mode}] {len(report.results)} cases in {report.seconds:.1f} s; "
            f"longest case {slowest.seconds if slowest else 0:.2f} s "
            f"({slowest.case.kind if slowest else '-'}, ending "
            f"{slowest.case.ending if slowest else '-'}); "
            f"router RSS baseline {report.rss_baseline / 2**20:.1f} MiB, "
            f"peak {report.rss_peak / 2**20:.1f} MiB, at the end {report.rss_end / 2**20:.1f} MiB; "
            f"well-formed sender: {report.sender_delivered}/{report.sender_sent} instances "
            f"delivered byte-identical in {report.sender_rounds} associations"
        )
    problems = [p for report in reports for p in report.problems]
    lines.append(f"problems: {len(problems)}")
    lines += [f"  {p}" for p in problems[:50]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``./dev.sh fuzz [--cases N --seed S --workers W --forwarding MODE --tls]``."""
    parser = argparse.ArgumentParser(
        prog="./dev.sh fuzz",
        description="Hostile PDUs at a router beside a well-formed sender; prints figures.",
    )
    parser.add_argument("--cases", type=int, default=2000, help="cases in all (default 2000)")
    parser.add_argument("--seed", type=int, default=1, help="run seed (default 1)")
    parser.add_argument("--workers", type=int, default=8, help="concurrent connections")
    parser.add_argument(
        "--forwarding",
        choices=["splice", "copy", "both"],
        default="both",
        help="router --forwarding mode(s); 'both' splits the cases (default)",
    )
    parser.add_argument("--first", type=int, default=0, help="index of the first case")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="send the cases over TLS to the router's TLS port (which always copies)",
    )
    args = parser.parse_args(argv)
    modes = ["splice", "copy"] if args.forwarding == "both" else [args.forwarding]
    if args.tls:
        modes = ["copy"]
    reports = []
    with tempfile.TemporaryDirectory(prefix="pdufuzz-") as tmp:
        work = Path(tmp)
        studies = [
            generate_study(work / "studies", study_index=i, instances=5, rows=32, columns=32)
            for i in range(4)
        ]
        share = args.cases // len(modes)
        for number, mode in enumerate(modes):
            first = args.first + number * share
            count = share if number < len(modes) - 1 else args.cases - share * number
            tls_options, tls = tls_target(work / "pki") if args.tls else ([], None)
            with PynetdicomSink(work / f"sink-{mode}", ae_title="FUZZSINK") as gateway:
                router = RouterProcess(
                    work / f"router-{mode}",
                    gateways=[f"{gateway.ae_title}@{gateway.host}:{gateway.port}"],
                    extra_args=["--forwarding", mode, *ROUTER_OPTIONS, *tls_options],
                )
                with router:
                    print(f"==> {mode}: cases {first}..{first + count - 1} of seed {args.seed}")
                    reports.append(
                        run(
                            router,
                            gateway,
                            studies,
                            seed=args.seed,
                            indexes=range(first, first + count),
                            workers=args.workers,
                            mode="tls" if args.tls else mode,
                            tls=tls,
                        )
                    )
    print(f"seed {args.seed}, {args.workers} workers, {os.cpu_count()} CPUs")
    print(figures(reports))
    return 1 if any(report.problems for report in reports) else 0


if __name__ == "__main__":
    raise SystemExit(main())
