"""``gatewaypool operator``: run the GatewayPool operator."""

from __future__ import annotations

import argparse
import os
from typing import Any


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
        "--resync",
        type=float,
        default=float(os.environ.get("GATEWAYPOOL_RESYNC_SECONDS", "30")),
        help="seconds between drift checks of each pool (default %(default)s)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="json", choices=["json", "text"])
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.resync <= 0:
        print(f"gatewaypool operator: --resync: {args.resync} must be positive")
        return 2
    # Handlers read their timer interval when imported.
    os.environ["GATEWAYPOOL_RESYNC_SECONDS"] = str(args.resync)
    os.environ["GATEWAYPOOL_NAMESPACES"] = ",".join(args.namespace)
    from gatewaypool import logs

    logs.configure(level=args.log_level, fmt=args.log_format)
    import kopf

    import gatewaypool_operator.handlers  # noqa: F401 - registers the handlers

    kopf.run(
        clusterwide=not args.namespace,
        namespaces=args.namespace,
        standalone=args.peering is None,
        peering_name=args.peering,
        liveness_endpoint=None if args.liveness == "off" else args.liveness,
    )
    return 0
