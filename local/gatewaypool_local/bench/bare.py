"""A bare forwarder: plain TCP splice between a sender and a gateway, no DICOM at all.

The floor the router's CPU per GB is compared with (issue 23): what moving
the same bytes through a process costs on this machine when nothing is
read, scanned or decided. Each accepted connection goes to the next target
in turn (round robin) and each direction is one thread that moves bytes
with ``splice(2)`` through a pipe of its own, as the router's splicing
path does; nothing is copied to user space.

Run as its own process so its CPU is read from ``/proc`` as the router's is::

    python -m gatewaypool_local.bench.bare --port 11112 --to 127.0.0.1:11113 ...
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import itertools
import os
import socket
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from gatewaypool_local.peers.process import LOOPBACK, ManagedProcess, free_port, tcp_open

#: As the router's splicer: one pipe can hold a whole 1 MiB PDU.
_PIPE_SIZE = 1 << 20
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Move everything `source` sends to `sink`, then end `sink`'s writing side."""
    read_fd, write_fd = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_fd, _F_SETPIPE_SZ, _PIPE_SIZE)
    try:
        while True:
            got = os.splice(source.fileno(), write_fd, _PIPE_SIZE, flags=os.SPLICE_F_MOVE)
            if not got:
                break
            while got:
                got -= os.splice(read_fd, sink.fileno(), got, flags=os.SPLICE_F_MOVE)
    except OSError:
        pass
    finally:
        os.close(read_fd)
        os.close(write_fd)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)


def _connect(client: socket.socket, target: tuple[str, int]) -> None:
    with client:
        try:
            upstream = socket.create_connection(target)
        except OSError:
            return
        with upstream:
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join()


def serve(port: int, targets: Sequence[tuple[str, int]]) -> None:
    """Accept on loopback `port` forever, each connection to the next of `targets`."""
    turn = itertools.cycle(targets)
    with socket.create_server((LOOPBACK, port), backlog=64) as server:
        while True:
            client, _ = server.accept()
            threading.Thread(target=_connect, args=(client, next(turn)), daemon=True).start()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--to", type=_address, action="append", required=True, help="host:port")
    args = parser.parse_args(argv)
    serve(args.port, args.to)


class BareForwarder(ManagedProcess):
    """This module as a process on a free loopback port, forwarding to `targets`."""

    kind = "bare-forwarder"

    def __init__(self, work_dir: Path, *, targets: Sequence[tuple[str, int]]) -> None:
        super().__init__(work_dir)
        self.host = LOOPBACK
        self.port = free_port()
        self._targets = list(targets)

    def _command(self) -> list[str]:
        cmd = [sys.executable, "-m", __name__, "--port", str(self.port)]
        for host, port in self._targets:
            cmd += ["--to", f"{host}:{port}"]
        return cmd

    def _listens_on(self) -> Sequence[tuple[str, int]]:
        return [(self.host, self.port)]

    def _is_ready(self) -> bool:
        return tcp_open(self.host, self.port)


if __name__ == "__main__":
    main()
