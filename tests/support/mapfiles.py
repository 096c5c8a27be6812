"""Bucket map files for routers run with ``--map``: one owner for everything, written atomically."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from gatewaypool.bucketmap import BucketMap, Gateway
from gatewaypool_local.peers.gateway import GatewayPeer


def all_to(gateways: Sequence[GatewayPeer], owner: int, version: int) -> BucketMap:
    """A map of 64 buckets sending every bucket to one gateway (easy to see where things go)."""
    return BucketMap(
        version=version,
        buckets=64,
        gateways=tuple(
            Gateway(name=f"gw-{i}", host=g.host, port=g.port, ae_title=g.ae_title)
            for i, g in enumerate(gateways)
        ),
        owners=tuple([owner] * 64),
    )


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename: a router never reads half a map."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
