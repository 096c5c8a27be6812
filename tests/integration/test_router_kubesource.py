"""The router follows its map ConfigMap through the API: resumed watches, 410 Gone.

A router process against the API emulator, which keeps a bounded watch
history and answers a resume from a compacted resourceVersion with 410 Gone,
as the real API server does after an etcd compaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import kmock
import kubernetes.client
import pytest

from gatewaypool.bucketmap import Gateway, balanced_map, dump_map
from gatewaypool_local.kubeemu import KubeEmulator
from gatewaypool_local.peers import wait_until
from gatewaypool_local.routerproc import RouterProcess

NS = "radiology"
GATEWAYS = [
    Gateway(name=f"ct-gw-{i}", host=f"ct-gw-{i}.ct-gw.{NS}.svc", port=104, ae_title="GW")
    for i in range(3)
]


def _map_data(version: int, gateways: int) -> dict[str, str]:
    return {"map.json": dump_map(balanced_map(GATEWAYS[:gateways], buckets=64, version=version))}


@pytest.fixture
def kube() -> Iterator[KubeEmulator]:
    with KubeEmulator(keep_requests=True) as emulator:
        emulator.create_namespace(NS)
        yield emulator


def _router(kube: KubeEmulator, tmp_path: Path) -> RouterProcess:
    router = RouterProcess(
        tmp_path / "router",
        extra_args=[
            "--map-configmap",
            f"{NS}/ct-map",
            "--kubeconfig",
            str(kube.kubeconfig_path),
            "--watch-timeout",
            "1",
            "--buckets",
            "64",
        ],
    )
    router.start()
    return router


def _map_reads(kube: KubeEmulator) -> list[kmock.Request]:
    return [
        request
        for request in list(kube.emulator._requests)
        if request.action == kmock.action.FETCH
        and request.resource is not None
        and request.resource.plural == "configmaps"
    ]


def _map_watches(kube: KubeEmulator) -> list[kmock.Request]:
    return [
        request
        for request in list(kube.emulator._requests)
        if request.action == kmock.action.WATCH
        and request.resource is not None
        and request.resource.plural == "configmaps"
    ]


def test_watches_resume_from_the_last_version_without_listing_again(
    kube: KubeEmulator, tmp_path: Path
) -> None:
    core = kubernetes.client.CoreV1Api(kube.api_client())
    core.create_namespaced_config_map(NS, {"metadata": {"name": "ct-map"}, "data": _map_data(1, 2)})
    router = _router(kube, tmp_path)
    try:
        assert router.metric("gatewaypool_router_map_version") == 1
        # The server ends each watch after a second; three resumptions later...
        wait_until(lambda: len(_map_watches(kube)) >= 4, timeout=20, what="four watches")
        core.patch_namespaced_config_map("ct-map", NS, {"data": _map_data(2, 3)})
        wait_until(
            lambda: router.metric("gatewaypool_router_map_version") == 2,
            timeout=10,
            what="version 2 applied",
        )
    finally:
        router.stop()
    # ...one GET at start, and every watch from a resourceVersion.
    assert len(_map_reads(kube)) == 1
    watches = _map_watches(kube)
    assert all(w.params.get("resourceVersion") for w in watches)
    assert all(w.params.get("timeoutSeconds") == "1" for w in watches)
    assert not router.events("map.watch_failed")


def test_a_watch_answered_410_gone_lists_again_and_misses_nothing(
    kube: KubeEmulator, tmp_path: Path
) -> None:
    core = kubernetes.client.CoreV1Api(kube.api_client())
    core.create_namespaced_config_map(NS, {"metadata": {"name": "ct-map"}, "data": _map_data(1, 2)})
    router = _router(kube, tmp_path)
    try:
        assert router.metric("gatewaypool_router_map_version") == 1
        # A compaction: the history no longer reaches the router's version.
        core.create_namespaced_config_map(NS, {"metadata": {"name": "unrelated"}})
        kube.compact_history()
        wait_until(
            lambda: bool(router.events("map.watch_expired")),
            timeout=20,
            what="the resumed watch answered 410 Gone",
        )
        core.patch_namespaced_config_map("ct-map", NS, {"data": _map_data(2, 3)})
        wait_until(
            lambda: router.metric("gatewaypool_router_map_version") == 2,
            timeout=10,
            what="version 2 applied after the new list",
        )
    finally:
        router.stop()
    assert len(_map_reads(kube)) >= 2  # the start, and the list after 410
    assert not router.events("map.watch_failed")
