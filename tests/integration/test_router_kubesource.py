"""The router follows its map ConfigMap through the API: resumed watches, 410 Gone.

A router process against the API emulator, which keeps a bounded watch
history and answers a resume from a compacted resourceVersion with 410 Gone,
as the real API server does after an etcd compaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import kmock
import kubernetes.client
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from gatewaypool.bucketmap import BucketMap, Gateway, balanced_map, dump_map
from gatewaypool.hashing import study_bucket
from gatewaypool.reports import RouterReport, parse_report
from gatewaypool_local import scu
from gatewaypool_local.peers import PynetdicomSink, wait_until
from gatewaypool_local.routerproc import RouterProcess
from gatewaypool_local.synth import Study
from support.cluster import NS
from support.kubeemu import KubeEmulator

StudyFactory = Callable[..., list[Study]]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"

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
        for request in kube.requests()
        if request.action == kmock.action.FETCH
        and request.resource is not None
        and request.resource.plural == "configmaps"
    ]


def _map_watches(kube: KubeEmulator) -> list[kmock.Request]:
    return [
        request
        for request in kube.requests()
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


def test_the_report_says_when_moving_buckets_were_used_and_what_is_open(
    kube: KubeEmulator, tmp_path: Path, ct_studies: StudyFactory
) -> None:
    sink = PynetdicomSink(tmp_path / "sink", ae_title="GW")
    [study] = ct_studies(1, instances=2)
    bucket = study_bucket(study.study_uid, 64)
    gateways = [
        Gateway(name=f"ct-gw-{i}", host=f"ct-gw-{i}.ct-gw.{NS}.svc", port=104, ae_title="GW")
        for i in range(2)
    ]
    base = balanced_map(gateways, buckets=64, version=3)
    owner = base.owners[bucket]
    moving = BucketMap(
        version=3,
        buckets=64,
        gateways=base.gateways,
        owners=base.owners,
        moving={bucket: 1 - owner, (bucket + 1) % 64: base.owners[(bucket + 1) % 64] ^ 1},
    )
    core = kubernetes.client.CoreV1Api(kube.api_client())
    core.create_namespaced_config_map(
        NS, {"metadata": {"name": "ct-map"}, "data": {"map.json": dump_map(moving)}}
    )
    core.create_namespaced_config_map(NS, {"metadata": {"name": "ct-routers"}})
    with sink:
        router = RouterProcess(
            tmp_path / "router",
            extra_args=[
                "--map-configmap",
                f"{NS}/ct-map",
                "--report-configmap",
                f"{NS}/ct-routers",
                "--pod-name",
                "ct-router-0",
                "--kubeconfig",
                str(kube.kubeconfig_path),
                "--buckets",
                "64",
                "--connect-to",
                f"{gateways[owner].host}:104:127.0.0.1:{sink.port}",
            ],
        )
        router.start()

        def report() -> RouterReport | None:
            data = (kube.get("ConfigMap", "ct-routers", NS) or {}).get("data") or {}
            text = data.get("ct-router-0")
            return parse_report(text) if text else None

        try:
            wait_until(lambda: report() is not None, timeout=10, what="a first report")
            first = report()
            assert first is not None
            assert first.map_version == 3 and first.buckets == 64
            assert not first.used and not first.open_associations
            with scu.open_association(
                router.host,
                router.port,
                contexts=[(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)],
                called_ae=router.ae_title,
            ) as assoc:
                assert scu.store(assoc, study.files[0]).Status == 0
                # Moving buckets make the router report every 2 s: no heartbeat wait.
                wait_until(
                    lambda: (r := report()) is not None and bucket in r.used,
                    timeout=10,
                    what="the moving bucket reported used",
                )
                held = report()
                assert held is not None
                assert held.quiet_seconds(bucket) < 5
                assert (bucket + 1) % 64 not in held.used
                assert held.open_associations == {owner: 1}
            wait_until(
                lambda: (r := report()) is not None and not r.open_associations,
                timeout=10,
                what="the released association no longer reported",
            )
        finally:
            router.stop()
