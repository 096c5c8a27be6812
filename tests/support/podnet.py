"""The pod network: a bridge, and a network namespace of its own for each pod.

What a CNI plugin does for a real kubelet, done with iproute2 inside the
test sandbox (``tests/sandbox.sh`` runs the suite in a user, network and
mount namespace of its own, so nothing here touches the machine's network):

- the bridge `BRIDGE` holds the node side of every pod's veth pair and the
  address `GATEWAY` (the pods' default route, and the address cluster DNS
  answers on);
- each pod gets a network namespace with ``eth0`` on an address of
  `POD_CIDR`, so two pods can both listen on port 104, as in a cluster;
- EndpointSlices refuse loopback addresses, so pod addresses are not
  loopback ones.

Everything is torn down with the sandbox when the session ends.
"""

from __future__ import annotations

import ipaddress
import subprocess
import threading
from dataclasses import dataclass, field

BRIDGE = "gwp0"
POD_CIDR = ipaddress.ip_network("10.244.0.0/16")
GATEWAY = "10.244.0.1"
#: The bridge's own MAC (locally administered), fixed for the session.
BRIDGE_MAC = "02:67:77:70:00:01"
#: ClusterIPs (Services); addresses of it are made local by the Service proxy.
SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/16")


def ip(*args: str) -> None:
    """Run one iproute2 command, raising with its message when it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


@dataclass
class PodNetwork:
    """The bridge and the pods' namespaces; addresses handed out in order, never reused."""

    _next: int = field(default=2, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def setup(self) -> None:
        ip("link", "set", "lo", "up")
        # A fixed MAC: without one the bridge takes the lowest of its ports' MACs, and
        # changes it when that pod's veth goes; every other pod's ARP entry for the
        # gateway and the node addresses then points nowhere, and its connections stall
        # 10 to 45 s until the entry expires (metrics-server's scrapes time out, probes
        # fail, containers are restarted).
        ip("link", "add", BRIDGE, "address", BRIDGE_MAC, "type", "bridge")
        ip("addr", "add", f"{GATEWAY}/{POD_CIDR.prefixlen}", "dev", BRIDGE)
        ip("link", "set", BRIDGE, "up")

    def allocate(self) -> str:
        """A pod address not given out before in this session."""
        with self._lock:
            address = POD_CIDR.network_address + self._next
            self._next += 1
        if address not in POD_CIDR:
            raise RuntimeError("pod addresses exhausted")
        return str(address)

    def attach(self, netns: str, address: str) -> None:
        """Make namespace `netns` with ``eth0`` at `address`, routed through the bridge."""
        host_end = f"v{netns[-12:]}"
        ip("netns", "add", netns)
        ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", netns)
        ip("link", "set", host_end, "master", BRIDGE, "up")
        ip("-n", netns, "addr", "add", f"{address}/{POD_CIDR.prefixlen}", "dev", "eth0")
        ip("-n", netns, "link", "set", "eth0", "up")
        ip("-n", netns, "link", "set", "lo", "up")
        ip("-n", netns, "route", "add", "default", "via", GATEWAY)

    def detach(self, netns: str) -> None:
        """Remove the pod's namespace (its veth pair goes with it)."""
        ip("netns", "del", netns)

    @staticmethod
    def add_local_address(address: str) -> None:
        """Answer on `address` in the node's namespace (a Service's ClusterIP)."""
        ip("addr", "add", f"{address}/32", "dev", "lo")
