"""The kubelet's resource metrics endpoint, for the kubelet stand-in: what metrics-server scrapes.

A real kubelet serves ``/metrics/resource`` on its HTTPS port (10250) at the
Node's InternalIP: the CPU and memory of the node, of each running container
and of each pod, in the Prometheus text format, from cAdvisor or the
container runtime's cgroup statistics. metrics-server scrapes it from every
Node and serves the result as ``metrics.k8s.io``, which ``kubectl top`` and
the HPA controller read.

Here each Node of :mod:`support.nodes` gets a :class:`KubeletServer` on its
InternalIP (``10.244.200+i.1``), made a local address on the pod bridge
(:mod:`support.podnet`) so pods reach it, as they reach a real node. The
figures, as the real kubelet gives them:

- a container's CPU and memory are the sum over its process tree (the
  container's process and every descendant, from ``/proc/<pid>/stat``):
  each thread's run time in nanoseconds (``/proc/<pid>/task/*/schedstat``,
  as precise as a cgroup's ``cpuacct.usage``, so even an idle container's
  counter is not 0; ``utime + stime`` when more, as they keep the time of
  threads that ended) plus ``cutime + cstime``, the children already reaped;
  the counter never goes down while the container runs, as a cgroup's does
  not; ``VmRSS`` from ``/proc/<pid>/status`` for the working set; a pod's
  are the sum of its containers'; only running containers are listed;
- the node's are this machine's (``/proc/stat``, and ``MemTotal -
  MemAvailable`` from ``/proc/meminfo``): both Nodes are this one machine;
- each sample carries its timestamp in milliseconds, as the kubelet's
  collector sets it; ``container_start_time_seconds`` and
  ``resource_scrape_error`` carry none, as there. (``scrape_error``, its
  deprecated twin, is hidden since Kubernetes 1.30; no swap is reported.)

Authentication: any bearer token is accepted; a request without one gets
401. A real kubelet delegates authentication and authorization to the API
server (a TokenReview, then a SubjectAccessReview for ``nodes/metrics``);
this stand-in serves read-only figures and does not check who asks. Its
serving certificate is self-signed, as a kubelet's is without serving
certificate bootstrap: metrics-server runs with ``--kubelet-insecure-tls``.

Each server keeps its last requests (:attr:`KubeletServer.served`: when,
what, the answer and how long it took), so a scrape that times out shows
whether it never arrived or was answered slowly.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import trustme

from support.podnet import BRIDGE, ip

log = logging.getLogger(__name__)

#: The kubelet's HTTPS port (``daemonEndpoints.kubeletEndpoint.Port`` in the Node's status).
PORT = 10250
_TICKS = os.sysconf("SC_CLK_TCK")
_PROC = Path("/proc")


@dataclass(frozen=True)
class Served:
    """One request answered: when it arrived (Unix seconds), its path, status and duration."""

    at: float
    path: str
    status: int
    seconds: float


@dataclass(frozen=True)
class RunningContainer:
    """A running container: whose it is and its main process."""

    namespace: str
    pod: str
    container: str
    pid: int


@dataclass(frozen=True)
class Usage:
    """CPU in core-seconds since start, working set in bytes, start time (Unix seconds)."""

    cpu_seconds: float
    memory_bytes: int
    start_time: float = 0.0


@dataclass(frozen=True)
class _Process:
    ppid: int
    cpu_ticks: int  # utime + stime, the fallback where schedstat is missing
    reaped_ticks: int  # cutime + cstime
    start_ticks: int


def _processes() -> dict[int, _Process]:
    """Every process' parent, CPU ticks (own and reaped children's) and start, from /proc."""
    table: dict[int, _Process] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        # The command name may hold spaces and parentheses: fields start after the last ')'.
        fields = text[text.rindex(")") + 2 :].split()
        table[int(entry.name)] = _Process(
            ppid=int(fields[1]),
            cpu_ticks=int(fields[11]) + int(fields[12]),
            reaped_ticks=int(fields[13]) + int(fields[14]),
            start_ticks=int(fields[19]),
        )
    return table


def _cpu_seconds(pid: int, process: _Process) -> float:
    """The process' CPU time, and its reaped children's.

    Its live threads' run time in nanoseconds (schedstat), or ``utime +
    stime`` when more (they also hold threads that have ended), plus
    ``cutime + cstime``.
    """
    nanoseconds = 0
    with contextlib.suppress(OSError):  # no schedstat in this kernel, or the process is gone
        for thread in (_PROC / str(pid) / "task").iterdir():
            with contextlib.suppress(OSError):  # a thread ending meanwhile
                nanoseconds += int((thread / "schedstat").read_text().split()[0])
    return max(nanoseconds / 1e9, process.cpu_ticks / _TICKS) + process.reaped_ticks / _TICKS


def _rss(pid: int) -> int:
    try:
        for line in (_PROC / str(pid) / "status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0  # a kernel thread, or gone meanwhile


def _boot_time() -> float:
    for line in (_PROC / "stat").read_text().splitlines():
        if line.startswith("btime "):
            return float(line.split()[1])
    raise RuntimeError("no btime in /proc/stat")


def tree_usage(root: int, table: dict[int, _Process], boot_time: float) -> Usage | None:
    """The usage of process `root` and its descendants; None when `root` is gone."""
    if root not in table:
        return None
    children: dict[int, list[int]] = {}
    for pid, process in table.items():
        children.setdefault(process.ppid, []).append(pid)
    cpu, memory, pending = 0.0, 0, [root]
    while pending:
        pid = pending.pop()
        cpu += _cpu_seconds(pid, table[pid])
        memory += _rss(pid)
        pending.extend(children.get(pid, ()))
    start = boot_time + table[root].start_ticks / _TICKS
    return Usage(cpu, memory, start)


def machine_usage() -> Usage:
    """This machine's CPU (all but idle and iowait) and memory in use."""
    cpu = (_PROC / "stat").read_text().splitlines()[0].split()
    # user nice system idle iowait irq softirq steal (guest time is already in user).
    busy = sum(int(value) for index, value in enumerate(cpu[1:9]) if index not in (3, 4))
    memory: dict[str, int] = {}
    for line in (_PROC / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        memory[key] = int(rest.split()[0]) * 1024
    return Usage(busy / _TICKS, memory["MemTotal"] - memory["MemAvailable"])


def _number(value: float) -> str:
    """A sample value as Go's Prometheus text encoder writes it (``strconv`` ``'g'``, shortest)."""
    if value == 0:
        return "0"
    number = Decimal(repr(float(value))).normalize()
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    power = len(digits) - 1 + exponent
    if -4 <= power < 6:  # Go's shortest %g uses %e from an exponent of 6
        return format(number, "f")
    mantissa = "".join(map(str, digits))
    mantissa = mantissa[0] + ("." + mantissa[1:] if len(mantissa) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'-' if power < 0 else '+'}{abs(power):02d}"


def _labels(**pairs: str) -> str:
    def escape(text: str) -> str:
        return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{key}="{escape(value)}"' for key, value in sorted(pairs.items())) + "}"


_HELP = {
    "container_cpu_usage_seconds_total": (
        "counter",
        "Cumulative cpu time consumed by the container in core-seconds",
    ),
    "container_memory_working_set_bytes": (
        "gauge",
        "Current working set of the container in bytes",
    ),
    "container_start_time_seconds": (
        "gauge",
        "Start time of the container since unix epoch in seconds",
    ),
    "node_cpu_usage_seconds_total": (
        "counter",
        "Cumulative cpu time consumed by the node in core-seconds",
    ),
    "node_memory_working_set_bytes": ("gauge", "Current working set of the node in bytes"),
    "pod_cpu_usage_seconds_total": (
        "counter",
        "Cumulative cpu time consumed by the pod in core-seconds",
    ),
    "pod_memory_working_set_bytes": ("gauge", "Current working set of the pod in bytes"),
    "resource_scrape_error": (
        "gauge",
        "1 if there was an error while getting container metrics, 0 otherwise",
    ),
}


def render(node: Usage, containers: Iterable[tuple[RunningContainer, Usage]], at: float) -> str:
    """The ``/metrics/resource`` page: families and series in order, as the kubelet's registry."""
    stamp = f" {int(at * 1000)}"
    samples: dict[str, list[str]] = {name: [] for name in _HELP}

    def add(name: str, labels: str, value: float, timestamp: str = stamp) -> None:
        samples[name].append(f"{name}{labels} {_number(value)}{timestamp}")

    pods: dict[tuple[str, str], tuple[float, int]] = {}
    for container, usage in sorted(
        containers, key=lambda item: (item[0].container, item[0].namespace, item[0].pod)
    ):
        labels = _labels(
            container=container.container, pod=container.pod, namespace=container.namespace
        )
        add("container_cpu_usage_seconds_total", labels, usage.cpu_seconds)
        add("container_memory_working_set_bytes", labels, usage.memory_bytes)
        if usage.start_time > 0:
            add("container_start_time_seconds", labels, usage.start_time, "")
        cpu, memory = pods.get((container.namespace, container.pod), (0.0, 0))
        pods[(container.namespace, container.pod)] = (
            cpu + usage.cpu_seconds,
            memory + usage.memory_bytes,
        )
    add("node_cpu_usage_seconds_total", "", node.cpu_seconds)
    add("node_memory_working_set_bytes", "", node.memory_bytes)
    for (namespace, pod), (cpu, memory) in sorted(pods.items()):
        add("pod_cpu_usage_seconds_total", _labels(pod=pod, namespace=namespace), cpu)
        add("pod_memory_working_set_bytes", _labels(pod=pod, namespace=namespace), memory)
    add("resource_scrape_error", "", 0, "")
    lines = []
    for name, (kind, text) in _HELP.items():
        lines += [f"# HELP {name} [STABLE] {text}", f"# TYPE {name} {kind}", *samples[name]]
    return "\n".join(lines) + "\n"


def measure(containers: list[RunningContainer]) -> list[tuple[RunningContainer, Usage]]:
    """The usage of each of `containers` still running, read now."""
    table = _processes()
    boot = _boot_time()
    measured = []
    for container in containers:
        usage = tree_usage(container.pid, table, boot)
        if usage is not None:
            measured.append((container, usage))
    return measured


class KubeletServer:
    """One Node's kubelet HTTPS port: ``/metrics/resource`` and ``/healthz``."""

    def __init__(
        self, node: str, address: str, containers: Callable[[], list[RunningContainer]]
    ) -> None:
        self.node = node
        self.address = address
        self._containers = containers
        self._server: ThreadingHTTPServer | None = None
        #: The last CPU counter given for each running container: it never goes down.
        self._counters: dict[RunningContainer, float] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        #: The last requests answered, oldest first.
        self.served: deque[Served] = deque(maxlen=50)

    def start(self) -> None:
        """Make the address local on the pod bridge, then serve on it."""
        ip("addr", "replace", f"{self.address}/32", "dev", BRIDGE)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        authority = trustme.CA(organization_name="kubelet stand-in")
        authority.issue_cert(self.address, self.node).configure_cert(context)
        server = ThreadingHTTPServer((self.address, PORT), _handler(self))
        server.daemon_threads = True
        # The handshake happens in the connection's thread, not in the accepting one.
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"kubelet {self.node} :{PORT}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop answering (the node is lost, or the session ends)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def page(self) -> str:
        """The ``/metrics/resource`` page now."""
        at = time.time()
        measured = measure(self._containers())
        with self._lock:
            counters = {
                container: max(usage.cpu_seconds, self._counters.get(container, 0.0))
                for container, usage in measured
            }
            self._counters = counters
        steady = [
            (container, replace(usage, cpu_seconds=counters[container]))
            for container, usage in measured
        ]
        return render(machine_usage(), steady, at)


def _handler(kubelet: KubeletServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            began, at = time.monotonic(), time.time()
            path = self.path.split("?", 1)[0]
            status = self._route(path)
            kubelet.served.append(Served(at, path, status, time.monotonic() - began))

        def _route(self, path: str) -> int:
            if path == "/healthz":
                return self._answer(200, "ok", "text/plain; charset=utf-8")
            if not self.headers.get("Authorization", "").startswith("Bearer "):
                return self._answer(401, "Unauthorized", "text/plain; charset=utf-8")
            if path == "/metrics/resource":
                page = kubelet.page()
                return self._answer(200, page, "text/plain; version=0.0.4; charset=utf-8")
            return self._answer(404, "404 page not found", "text/plain; charset=utf-8")

        def _answer(self, status: int, body: str, content_type: str) -> int:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            with contextlib.suppress(OSError):
                self.wfile.write(data)
            return status

        def log_message(self, format: str, *args: object) -> None:
            log.debug("kubelet %s: " + format, kubelet.node, *args)

    return Handler
