"""Streaming: a multi-frame instance far larger than the router's memory budget.

A router that held whole instances would need the instance's size in
memory; a streaming one needs a few PDUs. The figure itself is the
benchmark's job (``gatewaypool bench``); this test only holds the line.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gatewaypool_local.peers.dcmtk import StoreSCP, storescu
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import dataset_sha256, generate_multiframe

RouterFactory = Callable[..., RouterProcess]
INSTANCE_BYTES = 384 * 2**20
#: What streaming may add to the router's peak RSS: a few PDUs and buffers, not the instance.
RSS_GROWTH_LIMIT = 16 * 2**20


def test_large_instance_streams_in_bounded_memory(
    start_router: RouterFactory, tmp_path: Path
) -> None:
    gateway = StoreSCP(tmp_path / "gw", ae_title="BIG")
    instance = generate_multiframe(tmp_path / "big.dcm", size_bytes=INSTANCE_BYTES)
    with gateway:
        router = start_router([gateway])
        baseline = router.peak_rss_bytes()
        result = storescu(router.host, router.port, [instance.path], called_ae=router.ae_title)
        assert result.returncode == 0, result.stderr
        peak = router.peak_rss_bytes()
        [received] = gateway.wait_for_count(1, timeout=60)
        assert received.sop_instance_uid == instance.sop_instance_uid
        assert received.dataset_sha256() == dataset_sha256(instance.path)
    assert instance.total_bytes >= INSTANCE_BYTES
    # Growth over the started router's own peak: the interpreter's and libraries'
    # footprint differ between machines, what one instance adds must not.
    assert peak - baseline < RSS_GROWTH_LIMIT, (
        f"router peak RSS {peak / 2**20:.0f} MiB, {(peak - baseline) / 2**20:.1f} MiB "
        f"over its baseline {baseline / 2**20:.0f} MiB"
    )
