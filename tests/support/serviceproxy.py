"""A stand-in for kube-proxy: a Service's ClusterIP forwards to its ready endpoints.

There is no kube-proxy (no iptables programming in the sandbox), so this
plays the part for TCP in user space: for every Service with a ClusterIP it
answers on that address and each of the Service's ports, and forwards each
connection to one ready endpoint from the EndpointSlices the real
EndpointSlice controller writes, taking them in turn. A Service with no
ready endpoint refuses the connection, as kube-proxy's REJECT rule does.

The ``default/kubernetes`` Service has no endpoints here (the API server
listens on loopback, which EndpointSlices refuse), so its ClusterIP forwards
to the API server itself: pods reach the API at ``KUBERNETES_SERVICE_HOST``
as they do in a cluster.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import threading
from typing import Any

from support.informer import Informer
from support.podnet import PodNetwork

log = logging.getLogger(__name__)

_BUFFER = 256 * 1024


class ServiceProxy:
    """Listens on every ClusterIP:port and forwards to ready endpoints."""

    def __init__(self, services: Informer, slices: Informer, *, apiserver: tuple[str, int]) -> None:
        self._services = services
        self._slices = slices
        self._apiserver = apiserver
        self._listeners: dict[tuple[str, int], socket.socket] = {}
        self._addresses: set[str] = set()
        self._turn = itertools.count()
        self._lock = threading.Lock()
        self._closed = False

    def sync(self, _kind: str = "", _obj: dict[str, Any] | None = None) -> None:
        """Open a listener for each ClusterIP port not served yet (an informer callback)."""
        for service in self._services.items():
            spec = service.get("spec") or {}
            cluster_ip = spec.get("clusterIP")
            if not cluster_ip or cluster_ip == "None" or ":" in cluster_ip:
                continue  # headless, or IPv6 first: the pod network here is IPv4 only
            for port in spec.get("ports") or []:
                if (port.get("protocol") or "TCP") == "TCP":
                    self._listen(cluster_ip, int(port["port"]))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            listeners = list(self._listeners.values())
        for listener in listeners:
            listener.close()

    def _listen(self, address: str, port: int) -> None:
        with self._lock:
            if self._closed or (address, port) in self._listeners:
                return
            if address not in self._addresses:
                PodNetwork.add_local_address(address)
                self._addresses.add(address)
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((address, port))
            listener.listen(128)
            self._listeners[(address, port)] = listener
        threading.Thread(target=self._accept, args=(listener, address, port), daemon=True).start()

    def _accept(self, listener: socket.socket, address: str, port: int) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            threading.Thread(
                target=self._forward, args=(client, address, port), daemon=True
            ).start()

    def backends(self, address: str, port: int) -> list[tuple[str, int]]:
        """Where a connection to `address`:`port` may go: the ready endpoints."""
        for service in self._services.items():
            spec = service.get("spec") or {}
            if spec.get("clusterIP") != address:
                continue
            metadata = service["metadata"]
            if (metadata.get("namespace"), metadata["name"]) == ("default", "kubernetes"):
                return [self._apiserver]
            ports = [p for p in spec.get("ports") or [] if int(p["port"]) == port]
            if not ports:
                return []
            return _ready_endpoints(
                self._slices.items(), metadata["namespace"], metadata["name"], ports[0]
            )
        return []

    def _forward(self, client: socket.socket, address: str, port: int) -> None:
        backends = self.backends(address, port)
        if not backends:
            client.close()
            return
        backend = backends[next(self._turn) % len(backends)]
        try:
            upstream = socket.create_connection(backend, timeout=5)
        except OSError as exc:
            log.info("service %s:%d -> %s: %s", address, port, backend, exc)
            client.close()
            return
        upstream.settimeout(None)
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        other = threading.Thread(target=_pump, args=(client, upstream), daemon=True)
        other.start()
        _pump(upstream, client)
        other.join()
        client.close()
        upstream.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(_BUFFER):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for sock, how in ((sink, socket.SHUT_WR), (source, socket.SHUT_RD)):
            with contextlib.suppress(OSError):
                sock.shutdown(how)


def _ready_endpoints(
    slices: list[dict[str, Any]], namespace: str, service: str, port: dict[str, Any]
) -> list[tuple[str, int]]:
    found: list[tuple[str, int]] = []
    for item in slices:
        metadata = item["metadata"]
        if metadata.get("namespace") != namespace:
            continue
        if (metadata.get("labels") or {}).get("kubernetes.io/service-name") != service:
            continue
        target = [p for p in item.get("ports") or [] if p.get("name", "") == port.get("name", "")]
        if not target or target[0].get("port") is None:
            continue
        for endpoint in item.get("endpoints") or []:
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            found.extend((address, int(target[0]["port"])) for address in endpoint["addresses"])
    return sorted(found)
