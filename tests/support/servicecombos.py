"""Every combination of the router Service's settings, as the tests that check them share it.

Each value of each ``spec.router.service`` setting, or None for "not set",
combined with the DICOM ports (plain, TLS, both): the unit tests check each
one with the operator's spec check and strict schema validation, and the
real-cluster test creates each accepted one on the real API server.
"""

from __future__ import annotations

import itertools
from typing import Any

# The settings combined: each value, or None for "not set".
TYPES = (None, "ClusterIP", "NodePort", "LoadBalancer")
PORTS = ("plain", "tls", "both")
EXTRAS: dict[str, tuple[Any, ...]] = {
    "loadBalancerClass": (None, "example.com/internal"),
    "loadBalancerSourceRanges": (None, ["10.20.30.0/24", "fd00:20::/64"]),
    "externalTrafficPolicy": (None, "Local"),
    "nodePorts": (None, {"dicom": 30104}, {"dicomTLS": 32762}, {"dicom": 30104, "dicomTLS": 30104}),
    "ipFamilies": (
        None,
        {"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv6", "IPv4"]},
        {"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv6"]},
        {"ipFamilyPolicy": "RequireDualStack"},
        {"ipFamilies": ["IPv6"]},
    ),
}


def combinations() -> list[dict[str, Any]]:
    """The ``spec.router`` of every combination."""
    routers = []
    for kind, ports, *values in itertools.product(TYPES, PORTS, *EXTRAS.values()):
        service: dict[str, Any] = {
            "annotations": {"metallb.io/loadBalancerIPs": "10.20.0.50"},
            "labels": {"site": "north"},
        }
        if kind is not None:
            service["type"] = kind
        for key, value in zip(EXTRAS, values, strict=True):
            if value is None:
                continue
            if key == "ipFamilies":
                service |= value
            else:
                service[key] = value
        router: dict[str, Any] = {"service": service}
        if ports != "plain":
            router["tls"] = {"secretName": "router-tls"}
        if ports == "tls":
            router["plainPort"] = False
        routers.append(router)
    return routers
