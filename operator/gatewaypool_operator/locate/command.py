"""``gatewaypool locate STUDY_UID`` and the kubectl plugin ``kubectl gwp locate STUDY_UID``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from gatewaypool_operator.locate.answer import Location, UidError, render_text
from gatewaypool_operator.locate.sources import SourceError, local_location, pool_location

#: Exit statuses: found or not, the answer was given (0); the UID is malformed (2,
#: as argparse's usage errors); the pool, map or cluster could not be read (1).
EXIT_BAD_UID = 2
EXIT_UNREADABLE = 1


def register(subparsers: Any) -> None:
    """Add the ``locate`` subcommand (entry point ``gatewaypool.commands``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "locate",
        help="where did a study go: its bucket, the bucket's gateway, what each router did",
        description=_DESCRIPTION,
    )
    _add_arguments(parser)


_DESCRIPTION = (
    "Show where the study STUDY_UID goes and went: its bucket, the gateway (pod and DNS "
    "name) that owns the bucket now, whether the bucket is moving, and what each router's "
    "record says: which gateways got its instances, how many, when, on which map version "
    "and with what outcome. In a pool: -n NAMESPACE --pool NAME, with the kubeconfig "
    "($KUBECONFIG or ~/.kube/config). On this machine: --router URL (repeatable) and/or "
    "--map FILE."
)


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study_uid", metavar="STUDY_UID", help="the StudyInstanceUID")
    parser.add_argument(
        "-n", "--namespace", metavar="NAMESPACE", help="the pool's namespace (pool mode)"
    )
    parser.add_argument("--pool", metavar="NAME", help="the GatewayPool's name (pool mode)")
    parser.add_argument("--map", dest="map_file", metavar="FILE", help="a bucket map file")
    parser.add_argument(
        "--router",
        action="append",
        default=[],
        metavar="URL",
        help="a router's HTTP endpoint, e.g. http://127.0.0.1:8080 (repeatable)",
    )
    parser.add_argument(
        "-o", "--output", choices=("text", "json"), default="text", help="output format"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the answer; see the exit statuses above."""
    pool_mode = args.pool is not None or args.namespace is not None
    if pool_mode and (args.map_file is not None or args.router):
        print("locate: -n/--pool (a pool) or --map/--router (local), not both", file=sys.stderr)
        return EXIT_BAD_UID
    if pool_mode and (args.pool is None or args.namespace is None):
        print("locate: a pool needs both -n NAMESPACE and --pool NAME", file=sys.stderr)
        return EXIT_BAD_UID
    try:
        location = _find(args, pool_mode=pool_mode)
    except UidError as exc:
        print(f"locate: {exc}", file=sys.stderr)
        return EXIT_BAD_UID
    except SourceError as exc:
        print(f"locate: {exc}", file=sys.stderr)
        return EXIT_UNREADABLE
    if args.output == "json":
        print(json.dumps(location.to_json(), indent=2))
    else:
        sys.stdout.write(render_text(location))
    return 0


def _find(args: argparse.Namespace, *, pool_mode: bool) -> Location:
    if not pool_mode:
        return local_location(args.study_uid, map_file=args.map_file, routers=args.router)
    from gatewaypool_operator.apiclient import api_client
    from gatewaypool_operator.locate.answer import check_uid

    check_uid(args.study_uid)  # before any request: a typo needs no cluster to be told
    try:
        api = api_client()
    except Exception as exc:  # the kubernetes loaders raise many kinds
        raise SourceError(f"no Kubernetes credentials: {exc}") from None
    return pool_location(args.study_uid, namespace=args.namespace, pool=args.pool, api=api)


def kubectl_main(argv: Sequence[str] | None = None) -> int:
    """``kubectl-gwp``: kubectl runs it for ``kubectl gwp ...``."""
    parser = argparse.ArgumentParser(
        prog="kubectl gwp", description="GatewayPool commands for kubectl."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(subparsers)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result
