"""``gatewaypool local``: the local demo and the benchmark."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    """Add the ``local`` subcommand (entry point ``gatewaypool.commands``)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "local", help="run a router in front of three local gateways and send studies through it"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise SystemExit("gatewaypool local: not built yet")
