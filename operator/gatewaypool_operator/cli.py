"""``gatewaypool operator``: run the GatewayPool operator."""

from __future__ import annotations

import argparse
import os
import re
import secrets
import socket
from typing import Any, Final, cast

from gatewaypool_operator.options import Options

_DOMAIN: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
"""A DNS name in lower case, as a cluster domain is (``cluster.local``)."""


def register(subparsers: Any) -> None:
    """Add the ``operator`` subcommand (entry point ``gatewaypool.commands``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "operator",
        help="run the Kubernetes operator that manages GatewayPool resources",
        description=(
            "Watch GatewayPool resources and keep each pool's gateways, routers, bucket map "
            "and status in line with its spec."
        ),
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch only this namespace (repeatable; default: all namespaces)",
    )
    scope.add_argument(
        "--all-namespaces", action="store_true", help="watch every namespace (the default)"
    )
    parser.add_argument(
        "--liveness",
        default="http://0.0.0.0:8081/healthz",
        metavar="URL",
        help="kopf's liveness endpoint (default %(default)s; 'off' to disable)",
    )
    parser.add_argument(
        "--peering",
        metavar="NAME",
        help="coordinate with other operator replicas through this kopf peering object "
        "(default: standalone, one replica)",
    )
    parser.add_argument(
        "--priority",
        type=int,
        help="peering priority: the live replica with the highest one works, the others "
        "stand by (default with --peering: random, so exactly one replica is active)",
    )
    parser.add_argument(
        "--resync",
        type=float,
        default=30.0,
        help="seconds between drift checks of each pool (default %(default)s)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="json", choices=["json", "text"])
    parser.add_argument(
        "--metrics",
        default=":8082",
        metavar="[HOST]:PORT",
        help="serve Prometheus metrics (handovers completed and forced, buckets moving) "
        "at /metrics here; 'off' for none (default %(default)s)",
    )
    parser.add_argument(
        "--cluster-domain",
        default=os.environ.get("GATEWAYPOOL_CLUSTER_DOMAIN") or "cluster.local",
        metavar="DOMAIN",
        help="the cluster's DNS domain, which ends the gateways' host names in the bucket "
        "map (NAME-gw-0.NAME-gw.NS.svc.DOMAIN); from GATEWAYPOOL_CLUSTER_DOMAIN when set "
        "(default %(default)s)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.resync <= 0:
        print(f"gatewaypool operator: --resync: {args.resync} must be positive")
        return 2
    priority = args.priority
    if args.peering is not None and priority is None:
        # Replicas of one Deployment share their arguments; distinct random
        # priorities make one of them active and the others stand by, instead
        # of all of them pausing at equal priority (kopf's rule).
        priority = secrets.randbelow(1_000_000) + 1
    identity = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"
    if args.metrics != "off":
        _address, colon, port = args.metrics.rpartition(":")
        if not colon or not port.isdigit() or not 0 <= int(port) <= 65535:
            print(f"gatewaypool operator: --metrics: {args.metrics!r} is not [HOST]:PORT or off")
            return 2
    domain = args.cluster_domain.rstrip(".")
    if not _DOMAIN.fullmatch(domain) or len(domain) > 253:
        print(f"gatewaypool operator: --cluster-domain: {args.cluster_domain!r} is not a DNS name")
        return 2
    options = Options(
        resync_seconds=args.resync,
        cluster_domain=domain,
        namespaces=tuple(args.namespace),
        # The operator's own image, which the chart passes on: routers run the same one.
        router_image=os.environ.get("GATEWAYPOOL_IMAGE", ""),
        peering=args.peering or "",
        priority=priority or 0,
        identity=identity,
        metrics="" if args.metrics == "off" else args.metrics,
    )
    from gatewaypool import logs

    logs.configure(level=args.log_level, fmt=args.log_format)
    import kopf

    import gatewaypool_operator.handlers  # noqa: F401 - registers the handlers

    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.peering is None,
        peering_name=args.peering,
        priority=priority,
        # kopf types the identity as a private NewType of str.
        identity=cast(Any, identity),
        liveness_endpoint=None if args.liveness == "off" else args.liveness,
        memo=kopf.Memo(options=options),
    )
    return 0
