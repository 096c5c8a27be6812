"""A program run as a child process, and the waits and ports that go with it.

:class:`ManagedProcess` is the one way the demo, the benchmark and the tests
run a program: every gateway, and the router (:mod:`gatewaypool_local.routerproc`).
It starts the program in its work folder with its output appended to a log
file there, waits until the program is ready or dead with a deadline (never
a fixed sleep), stops it with SIGTERM then SIGKILL, and shows the log's last
lines when something goes wrong.
"""

from __future__ import annotations

import abc
import contextlib
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

LOGGER = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"

#: How long :meth:`ManagedProcess.start` waits for readiness unless told.
DEFAULT_START_TIMEOUT = 30.0
_POLL_INTERVAL = 0.02
_LOG_TAIL_LINES = 40


class PeerError(RuntimeError):
    """A process could not be started, or exited when it should not."""


#: Where listening ports are picked: below the kernel's ephemeral range (see
#: :func:`free_port`) and Kubernetes' NodePort range (30000-32767, which the
#: test cluster's service proxy listens in), above the ports services own.
_LISTEN_PORTS = (10000, 29999)


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port that was free a moment ago, outside the ephemeral range.

    The kernel gives outgoing connections their local port from
    ``ip_local_port_range`` (32768-60999 by default); a port picked there
    for a peer to listen on could be taken by one of them (a router's
    connection to a gateway) before the peer starts. So the port is picked
    at random below that range, and checked free by binding it. The socket
    is closed before returning: another listener could still take it first,
    which among a few random picks in twenty thousand is rare.
    """
    low, high = _LISTEN_PORTS
    with contextlib.suppress(OSError, ValueError):
        first_ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        high = min(high, first_ephemeral - 1)
    for _ in range(200):
        port = random.randint(low, high)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))  # every pick taken: let the kernel choose
        chosen: int = sock.getsockname()[1]
        return chosen


def wait_until(
    predicate: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = _POLL_INTERVAL,
) -> None:
    """Poll ``predicate`` until it is true, or raise :class:`TimeoutError`.

    A condition with a deadline instead of a fixed sleep: fast when the
    condition is met early, and a clear message naming ``what`` when not.
    """
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def tcp_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # As servers do: a port whose old connections sit in TIME_WAIT is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


class ManagedProcess(abc.ABC):
    """A program in a child process, in its own session, logging to ``<work_dir>/<kind>.log``.

    Subclasses say what to run (:meth:`_command`), when it is ready
    (:meth:`_is_ready`) and, if they wish, what to prepare, which
    environment to give it and which ports it will listen on.
    """

    #: Short name: the log file is ``<kind>.log``.
    kind = "process"

    def __init__(
        self,
        work_dir: Path | str,
        *,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        stop_timeout: float = 10.0,
    ) -> None:
        self._work_dir = Path(work_dir).resolve()
        self._work_dir.mkdir(parents=True, exist_ok=True)
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def work_dir(self) -> Path:
        """Folder the process runs in; it holds its files and its log."""
        return self._work_dir

    @property
    def log_path(self) -> Path:
        """The process's stdout and stderr, appended across restarts."""
        return self._work_dir / f"{self.kind}.log"

    @property
    def pid(self) -> int | None:
        """Process id once started."""
        return self._process.pid if self._process is not None else None

    # -- subclass hooks ------------------------------------------------------

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The command line to start the process."""

    @abc.abstractmethod
    def _is_ready(self) -> bool:
        """Whether the running process serves what it is started for."""

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    def _prepare(self) -> None:  # noqa: B027 - optional hook
        """Create folders and files the process needs before it starts."""

    def _listens_on(self) -> Sequence[tuple[str, int]]:
        """The addresses it will listen on, which must be free before it starts."""
        return ()

    # -- lifecycle -------------------------------------------------------------

    def is_running(self) -> bool:
        """Whether the process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, *, timeout: float | None = None) -> None:
        """Start the process; return when it is ready, raise :class:`PeerError` if it is not.

        Waits `timeout` seconds at the most (default: the `start_timeout`
        it was made with); on timeout the process is killed.
        """
        if self.is_running():
            raise PeerError(f"{self!r} is already running")
        executable = self._command()[0]
        if shutil.which(executable) is None:
            raise PeerError(
                f"{executable} not found: install it (./dev.sh installs dcmtk and orthanc)"
            )
        for host, port in self._listens_on():
            # Checked first: readiness is asked of the port, and another
            # process listening there would answer.
            if not port_free(host, port):
                raise PeerError(f"{self!r}: port {port} is in use")
        self._prepare()
        self._log = self.log_path.open("ab")
        self._log.write(f"=== {time.strftime('%H:%M:%S')} starting {self!r}\n".encode())
        self._log.flush()
        began = time.monotonic()
        self._process = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self._work_dir,
            env=self._environment(),
            start_new_session=True,
        )
        try:
            wait_until(
                self._ready_or_dead,
                timeout=self._start_timeout if timeout is None else timeout,
                what=f"{self!r} ready (log: {self.log_path})",
            )
        except TimeoutError as exc:
            self.kill()
            raise PeerError(f"{exc}\n{self.log_tail()}") from exc
        if not self.is_running():
            code = self._process.returncode
            self._close_log()
            raise PeerError(f"{self!r} exited with code {code} while starting\n{self.log_tail()}")
        LOGGER.info("%r ready in %.2f s", self, time.monotonic() - began)

    def _ready_or_dead(self) -> bool:
        return not self.is_running() or self._is_ready()

    def stop(self, *, timeout: float | None = None) -> int | None:
        """SIGTERM, then SIGKILL if it has not exited in time; the exit code (None: never started).

        `timeout` defaults to the `stop_timeout` it was made with.
        """
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=self._stop_timeout if timeout is None else timeout)
            except subprocess.TimeoutExpired:
                LOGGER.warning("%r ignored SIGTERM; killing it", self)
                process.kill()
                process.wait()
        self._close_log()
        return process.returncode if process is not None else None

    def kill(self) -> None:
        """SIGKILL, as a crash would: no cleanup, partial files stay."""
        process = self._process
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        self._close_log()

    def restart(self) -> None:
        """Stop (if running) and start again."""
        self.stop()
        self.start()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = _LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines of the log under a line naming it, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"--- last lines of {self.log_path} ---\n{tail}"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
