"""The operator's settings, as the command line gives them to the kopf handlers.

``gatewaypool operator`` parses its arguments into one frozen `Options` and
hands it to kopf as the root ``memo``; every handler reads ``memo.options``.
Nothing is passed through environment variables or read at import, so the
handlers module can be imported (and tested) without a command line.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Options:
    """What ``gatewaypool operator`` was told; see its ``--help`` for each flag."""

    #: Seconds between drift checks of each pool (``--resync``).
    resync_seconds: float = 30.0
    #: Watched namespaces (``--namespace``); empty: all.
    namespaces: tuple[str, ...] = ()
    #: The image routers run unless a pool names one (``GATEWAYPOOL_IMAGE``).
    router_image: str = ""
    #: kopf peering object (``--peering``); empty: standalone.
    peering: str = ""
    #: Peering priority (``--priority``) and this replica's identity in the peering.
    priority: int = 0
    identity: str = ""
    #: The cluster's DNS domain (``--cluster-domain``, ``GATEWAYPOOL_CLUSTER_DOMAIN``): the
    #: gateways' host names in the bucket map end in ``.svc.<it>``.
    cluster_domain: str = "cluster.local"
    #: Where Prometheus metrics are served (``--metrics``), ``[HOST]:PORT``; empty: nowhere.
    metrics: str = ""
