"""The ``gatewaypool`` command: a dispatcher over subcommands.

Each part of GatewayPool registers its own subcommand through the
``gatewaypool.commands`` entry-point group; an entry point is a callable that
takes the subparsers object and adds its parser, with ``func`` set to a
callable taking the parsed namespace and returning an exit code.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points

from gatewaypool import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatewaypool",
        description="Study-affine DICOM routing for pools of DICOM gateways.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for entry in sorted(entry_points(group="gatewaypool.commands"), key=lambda e: e.name):
        try:
            register = entry.load()
        except ModuleNotFoundError as exc:
            if exc.name != entry.module.partition(".")[0]:
                raise  # the part is there but broken: say so
            continue  # a part not installed (the image has no demo or benchmark)
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
