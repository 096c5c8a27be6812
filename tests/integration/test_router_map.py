"""A bucket map from a file: applied live, never at the cost of an association."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pynetdicom import _config

from gatewaypool.bucketmap import dump_map
from gatewaypool_local import scu
from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.peers.pynetdicom_sink import PynetdicomSink
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import generate_study
from support.mapfiles import all_to, write_atomically

RouterFactory = Callable[..., RouterProcess]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def test_new_map_applies_to_open_associations(start_router: RouterFactory, tmp_path: Path) -> None:
    first = PynetdicomSink(tmp_path / "first", ae_title="FIRST")
    second = PynetdicomSink(tmp_path / "second", ae_title="SECOND")
    studies = [
        generate_study(tmp_path / "data", study_index=i, instances=2, rows=16, columns=16)
        for i in range(3)
    ]
    map_file = tmp_path / "map.json"
    with first, second:
        write_atomically(map_file, dump_map(all_to([first, second], 0, version=1)))
        router = start_router(map_file=map_file, extra_args=["--log-level", "info"])
        assert router.metric("gatewaypool_router_map_version") == 1
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            context = scu.open_association(
                router.host,
                router.port,
                contexts=[(CT_IMAGE_STORAGE, "1.2.840.10008.1.2.1")],
                calling_ae="MODALITY",
                called_ae=router.ae_title,
            )
            assoc = context.__enter__()
            assert scu.store(assoc, studies[0].files[0]).Status == 0
            assert first.received_count() == 1

            write_atomically(map_file, dump_map(all_to([first, second], 1, version=2)))
            wait_until(
                lambda: router.metric("gatewaypool_router_map_version") == 2,
                timeout=5,
                what="map version 2 applied",
            )
            # Same association, next instance: the new owner.
            assert scu.store(assoc, studies[1].files[0]).Status == 0
            assert second.received_count() == 1

            # An invalid map is refused, counted and logged; version 2 stays.
            write_atomically(map_file, json.dumps({"version": 3, "buckets": 64}))
            wait_until(
                lambda: router.metric("gatewaypool_router_map_rejected_total") == 1,
                timeout=5,
                what="invalid map refused",
            )
            # A stale version is refused too.
            write_atomically(map_file, dump_map(all_to([first, second], 0, version=1)))
            wait_until(
                lambda: router.metric("gatewaypool_router_map_rejected_total") == 2,
                timeout=5,
                what="stale map refused",
            )
            assert scu.store(assoc, studies[2].files[0]).Status == 0
            assert second.received_count() == 2
            assert assoc.is_established
            context.__exit__(None, None, None)
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = False
    refused = router.events("map.refused")
    assert len(refused) == 2
    assert refused[0]["problem"].endswith("gateways: required key is missing")
    assert refused[1]["problem"] == "version 1 is older than 2"
    assert refused[0]["kept"] == 2
    assert "older" in refused[1]["problem"]
    assert router.metric("gatewaypool_router_map_version") == 2
    assert router.wait_events("association.released")[0]["instances"] == 3


def test_readiness_follows_the_map(tmp_path: Path) -> None:
    sink = PynetdicomSink(tmp_path / "sink", ae_title="SINK")
    map_file = tmp_path / "map.json"
    map_file.write_text("{ this is not a map")
    with sink:
        router = RouterProcess(tmp_path / "router", map_file=map_file)
        router.start(wait_ready=False)
        try:
            assert router.http_status("/readyz") == 503
            assert "map.refused" in router.log_path.read_text()
            write_atomically(map_file, dump_map(all_to([sink], 0, version=7)))
            wait_until(lambda: router.http_status("/readyz") == 200, timeout=5, what="ready")
            assert "map version 7" in router.http_text("/readyz")
            metrics = router.http_text("/metrics")
            for name in (
                "gatewaypool_router_instances_total",
                "gatewaypool_router_bytes_total",
                "gatewaypool_router_forward_seconds",
                "gatewaypool_router_active_associations",
                "gatewaypool_router_map_version",
                "gatewaypool_router_refusals_total",
            ):
                assert name in metrics
        finally:
            router.stop()
