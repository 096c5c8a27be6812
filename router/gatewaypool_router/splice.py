"""Move data set bytes from the sender's socket to a gateway's inside the kernel.

Once an instance's gateway is known, most of its bytes are a value the
scanner skips (pixel data): the router need not see them, only count them.
Copying them through Python costs two copies per byte (kernel to user and
back) plus the interpreter's work per PDU. ``splice(2)`` moves them from
one socket into a pipe and from the pipe into the other socket by passing
page references, so the router's CPU per instance no longer grows with its
size. Python writes only the PDU and PDV headers around them.

Linux only (``os.splice``, Python 3.10+); where it is missing the router
copies, as ``--forwarding copy`` makes it do anywhere.

Where the router's native hot path is in use (``scanner.HOT_PATH``), the
loop of :meth:`Splicer.move` runs in Rust (``_native.splice_move``) with the
GIL released, and only its outcome comes back to raise here; the Python loop
below is the fallback and the specification.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import time
from collections.abc import Callable

from gatewaypool_router.pdus import PeerClosedError
from gatewaypool_router.scanner import HOT_PATH, IMPLEMENTATIONS

if "native" in IMPLEMENTATIONS:
    from gatewaypool_router._native import splice_move as _native_move

__all__ = ["PIPE_SIZE", "SinkError", "Splicer", "available"]

#: Pipe size asked for: one pipe holds a whole 1 MiB PDU, so a PDU usually
#: moves in one splice in and one out. The kernel may grant less
#: (``/proc/sys/fs/pipe-max-size``); the default 64 KiB still works.
PIPE_SIZE = 1 << 20

_SPLICE = getattr(os, "splice", None)
_F_MOVE = getattr(os, "SPLICE_F_MOVE", 1)
_F_NONBLOCK = getattr(os, "SPLICE_F_NONBLOCK", 2)
_F_MORE = getattr(os, "SPLICE_F_MORE", 4)
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)


def available() -> bool:
    """Whether this system can splice between sockets (tried, not guessed).

    A kernel may lack splice on sockets, or a seccomp profile may refuse the
    call; a pair of connected sockets tells for sure.
    """
    if _SPLICE is None:
        return False
    try:
        left, right = socket.socketpair()
        sink_left, sink_right = socket.socketpair()
    except OSError:
        return False
    splicer = Splicer()
    try:
        with left, right, sink_left, sink_right:
            left.sendall(b"ok")
            splicer.move(right, sink_left, 2, more=False)
            return sink_right.recv(2) == b"ok"
    except (OSError, SinkError, PeerClosedError):
        return False
    finally:
        splicer.close()


# What _native.splice_move returns first (router/native/src/lib.rs).
_MOVED = 0
_SOURCE_TIMED_OUT = 1
_SOURCE_CLOSED = 2
_SINK_TIMED_OUT = 3
_SINK_FAILED = 4


class SinkError(Exception):
    """Writing to the destination socket failed; ``timeout`` if it stopped reading.

    ``consumed`` counts the bytes already taken from the source: the caller
    must still read (and drop) the rest, to stay in step with the sender.
    """

    def __init__(self, reason: str, *, timeout: bool = False, consumed: int = 0) -> None:
        super().__init__(reason)
        self.timeout = timeout
        self.consumed = consumed


def _wait(sock: socket.socket, events: int, deadline: float | None) -> bool:
    """Wait until ``sock`` is ready for ``events``; False when the deadline passed."""
    poller = select.poll()
    poller.register(sock.fileno(), events)
    while True:
        if deadline is None:
            timeout_ms = None
        else:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            timeout_ms = max(1, int(remaining * 1000))
        if poller.poll(timeout_ms):
            return True


def _deadline(sock: socket.socket) -> float | None:
    timeout = sock.gettimeout()
    return None if timeout is None else time.monotonic() + timeout


class Splicer:
    """One pipe, owned by one association's thread, through which bytes move.

    The pipe is empty between calls to :meth:`move`: a call that fails on the
    destination side drops the pipe (and whatever it held), and the next call
    makes a fresh one.

    ``native``: run the loop in Rust (the default where the native hot path
    is in use); False keeps it in Python.
    """

    __slots__ = ("_native", "_read_fd", "_write_fd", "capacity")

    def __init__(self, *, native: bool | None = None) -> None:
        self._read_fd = -1
        self._write_fd = -1
        self.capacity = 0
        self._native = HOT_PATH == "native" if native is None else native
        if self._native and "native" not in IMPLEMENTATIONS:
            raise ValueError("gatewaypool_router._native is not built")

    @property
    def native(self) -> bool:
        """Whether this splicer's moves run in Rust (and its owner may stream natively)."""
        return self._native

    def pipe(self) -> tuple[int, int, int]:
        """The pipe as (read fd, write fd, capacity), opened if need be.

        For the native stream (``_native.stream_rest``), which splices
        through it itself; after a failure that may leave bytes in it, the
        caller must :meth:`close` it.
        """
        if self._write_fd < 0:
            self._open()
        return self._read_fd, self._write_fd, self.capacity

    def _open(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self._write_fd, _F_SETPIPE_SZ, PIPE_SIZE)
        self.capacity = fcntl.fcntl(self._write_fd, _F_GETPIPE_SZ)

    def close(self) -> None:
        """Close the pipe (a later :meth:`move` opens another)."""
        for fd in (self._read_fd, self._write_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._read_fd = self._write_fd = -1

    def move(
        self,
        source: socket.socket,
        sink: socket.socket,
        size: int,
        *,
        more: bool,
        on_wait: Callable[[bool], None] | None = None,
    ) -> None:
        """Move exactly ``size`` bytes from ``source`` to ``sink``.

        Each socket's own timeout bounds each wait on it, as it bounds a
        ``recv`` or ``send``. Nothing of these bytes may be buffered in user
        space for ``source`` (see :class:`~gatewaypool_router.pdus.SocketReader`).

        Parameters
        ----------
        more : bool
            More bytes of the same PDU follow right after these, so the
            kernel may hold a partial segment back (``SPLICE_F_MORE``).
        on_wait : callable, optional
            Called with False before waiting on ``source``, True before
            waiting on ``sink``: the association's progress then names whom
            it waits on, for the stall log.

        Raises
        ------
        PeerClosedError, TimeoutError, OSError
            Reading ``source`` failed: the sender closed, went silent, or
            reset the connection.
        SinkError
            Writing ``sink`` failed or timed out; the bytes already taken
            from ``source`` are lost with the pipe.
        """
        assert _SPLICE is not None
        if self._write_fd < 0:
            self._open()
        if self._native:
            self._move_natively(source, sink, size, more=more, on_wait=on_wait)
            return
        moved = 0
        while moved < size:
            want = min(size - moved, self.capacity)
            try:
                got = _SPLICE(source.fileno(), self._write_fd, want, flags=_F_MOVE | _F_NONBLOCK)
            except BlockingIOError:
                if on_wait is not None:
                    on_wait(False)
                if not _wait(source, select.POLLIN, _deadline(source)):
                    raise TimeoutError("timed out") from None
                continue
            if not got:
                raise PeerClosedError("connection closed mid-PDU")
            moved += got
            try:
                self._drain(sink, got, more=more or moved < size, on_wait=on_wait)
            except SinkError as exc:
                exc.consumed = moved
                raise

    def _move_natively(
        self,
        source: socket.socket,
        sink: socket.socket,
        size: int,
        *,
        more: bool,
        on_wait: Callable[[bool], None] | None,
    ) -> None:
        """:meth:`move`'s loop in Rust: the same waits, raising the same errors."""
        outcome, moved, errno = _native_move(
            source.fileno(),
            sink.fileno(),
            self._read_fd,
            self._write_fd,
            self.capacity,
            size,
            more,
            source.gettimeout(),
            sink.gettimeout(),
            on_wait,
        )
        if outcome == _MOVED:
            return
        if outcome == _SOURCE_TIMED_OUT:
            raise TimeoutError("timed out")
        if outcome == _SOURCE_CLOSED:
            raise PeerClosedError("connection closed mid-PDU")
        self.close()
        if outcome == _SINK_TIMED_OUT:
            raise SinkError("timed out", timeout=True, consumed=moved)
        raise SinkError(str(OSError(errno, os.strerror(errno))), consumed=moved)

    def _drain(
        self, sink: socket.socket, size: int, *, more: bool, on_wait: Callable[[bool], None] | None
    ) -> None:
        """Empty the pipe's ``size`` bytes into ``sink``."""
        assert _SPLICE is not None
        flags = _F_MOVE | _F_NONBLOCK | (_F_MORE if more else 0)
        deadline: float | None = None
        while size:
            try:
                sent = _SPLICE(self._read_fd, sink.fileno(), size, flags=flags)
            except BlockingIOError:
                if deadline is None:
                    deadline = _deadline(sink)
                    if on_wait is not None:
                        on_wait(True)
                if not _wait(sink, select.POLLOUT, deadline):
                    self.close()
                    raise SinkError("timed out", timeout=True) from None
                continue
            except OSError as exc:
                self.close()
                raise SinkError(str(exc)) from exc
            size -= sent
            deadline = None
