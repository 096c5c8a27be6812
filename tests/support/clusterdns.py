"""A stand-in for cluster DNS (CoreDNS's kubernetes plugin), from the real EndpointSlices.

Pods resolve through it (their ``/etc/resolv.conf`` names it), so a router
reaches ``ct-gw-0.ct-gw.radiology.svc.cluster.local`` exactly as in a
cluster: by the records the real EndpointSlice controller's objects give.

- ``<service>.<namespace>.svc.<domain>``: the ClusterIP; for a headless
  Service, the addresses of its ready endpoints (``publishNotReadyAddresses``
  makes the controller mark every endpoint ready, as CoreDNS relies on).
- ``<hostname>.<service>.<namespace>.svc.<domain>``: the ready endpoint with
  that hostname (a StatefulSet pod under its headless Service).
- Anything else: NXDOMAIN (the sandbox has no other network). IPv6 queries
  get an empty answer.
"""

from __future__ import annotations

from typing import Any

from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import DNSServer

from support.informer import Informer

TTL = 5


class ClusterDNS:
    """Answers cluster names from Services and EndpointSlices (a dnslib resolver)."""

    def __init__(
        self, services: Informer, slices: Informer, *, domain: str = "cluster.local"
    ) -> None:
        self._services = services
        self._slices = slices
        self._suffix = f".svc.{domain}"
        self._servers: list[DNSServer] = []

    def start(self, address: str, port: int = 53) -> None:
        for tcp in (False, True):
            server = DNSServer(self, address=address, port=port, tcp=tcp, logger=_Quiet())
            server.start_thread()
            self._servers.append(server)

    def stop(self) -> None:
        for server in self._servers:
            server.stop()

    def addresses(self, name: str) -> list[str] | None:
        """The A records of `name`, or None when it does not exist."""
        name = name.rstrip(".").lower()
        if not name.endswith(self._suffix):
            return None
        parts = name[: -len(self._suffix)].split(".")
        if len(parts) == 2:
            service, namespace = parts
            hostname = None
        elif len(parts) == 3:
            hostname, service, namespace = parts
        else:
            return None
        found = self._services.get(namespace, service)
        if found is None:
            return None
        cluster_ip = (found.get("spec") or {}).get("clusterIP")
        if hostname is None and cluster_ip and cluster_ip != "None":
            return [cluster_ip]
        endpoints = self._endpoints(namespace, service)
        if hostname is not None:
            endpoints = [e for e in endpoints if e.get("hostname") == hostname]
            if not endpoints:
                return None
        return sorted({address for e in endpoints for address in e.get("addresses") or []})

    def _endpoints(self, namespace: str, service: str) -> list[dict[str, Any]]:
        return [
            endpoint
            for item in self._slices.items()
            if item["metadata"].get("namespace") == namespace
            and (item["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == service
            and item.get("addressType") == "IPv4"
            for endpoint in item.get("endpoints") or []
            if (endpoint.get("conditions") or {}).get("ready") is not False
        ]

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        question = request.q
        addresses = self.addresses(str(question.qname))
        if addresses is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif question.qtype in (QTYPE.A, QTYPE.ANY):
            for address in addresses:
                reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(address), ttl=TTL))
        return reply


class _Quiet:
    """dnslib's server logs every query by default; the tests' logs stay readable."""

    def __getattr__(self, _name: str) -> Any:
        return lambda *args, **kwargs: None
