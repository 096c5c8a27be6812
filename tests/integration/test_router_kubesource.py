"""The router follows its map ConfigMap through the API: resumed watches, 410 Gone, bookmarks.

A router process against the API emulator, which keeps a bounded watch
history, answers a resume from a compacted resourceVersion with 410 Gone, as
the real API server does after an etcd compaction, and sends bookmarks when
the real server's watch cache does.
"""

from __future__ import annotations

import time
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


def _router(
    kube: KubeEmulator, tmp_path: Path, *, watch_seconds: int = 1, report: bool = False
) -> RouterProcess:
    reporting = ["--report-configmap", f"{NS}/ct-routers", "--pod-name", "ct-router-0"]
    router = RouterProcess(
        tmp_path / "router",
        extra_args=[
            "--map-configmap",
            f"{NS}/ct-map",
            "--kubeconfig",
            str(kube.kubeconfig_path),
            "--watch-timeout",
            str(watch_seconds),
            "--buckets",
            "64",
            *(reporting if report else []),
        ],
    )
    router.start()
    return router


def _is_map_request(request: kmock.Request, action: kmock.action) -> bool:
    return (
        request.action == action
        and request.resource is not None
        and request.resource.plural == "configmaps"
        and request.params.get("fieldSelector") == "metadata.name=ct-map"
    )


def _map_lists(kube: KubeEmulator) -> list[kmock.Request]:
    return [r for r in kube.requests() if _is_map_request(r, kmock.action.LIST)]


def _map_watches(kube: KubeEmulator) -> list[kmock.Request]:
    return [r for r in kube.requests() if _is_map_request(r, kmock.action.WATCH)]


def _map_gets(kube: KubeEmulator) -> list[kmock.Request]:
    return [
        r
        for r in kube.requests()
        if r.action == kmock.action.FETCH
        and r.resource is not None
        and r.resource.plural == "configmaps"
    ]


def _requested(router: RouterProcess, verb: str) -> float:
    return router.metric("gatewaypool_router_map_requests_total", verb=verb)


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
        assert _requested(router, "list") == 1
        # The emulator logs a watch when it ends; the router counts it when it starts.
        assert 0 <= _requested(router, "watch") - len(_map_watches(kube)) <= 1
    finally:
        router.stop()
    # ...one list at start (no GET), and every watch from a resourceVersion, with bookmarks.
    assert len(_map_lists(kube)) == 1 and not _map_gets(kube)
    watches = _map_watches(kube)
    assert all(w.params.get("resourceVersion") for w in watches)
    assert all(w.params.get("timeoutSeconds") == "1" for w in watches)
    assert all(w.params.get("allowWatchBookmarks") == "true" for w in watches)
    assert not router.events("map.watch_failed")


def test_after_410_gone_it_lists_once_and_its_requests_stay_bounded(
    kube: KubeEmulator, tmp_path: Path
) -> None:
    core = kubernetes.client.CoreV1Api(kube.api_client())
    core.create_namespaced_config_map(NS, {"metadata": {"name": "ct-map"}, "data": _map_data(1, 2)})
    router = _router(kube, tmp_path)
    try:
        assert router.metric("gatewaypool_router_map_version") == 1
        # A compaction past the map's version: the history no longer reaches it.
        core.create_namespaced_config_map(NS, {"metadata": {"name": "unrelated"}})
        compacted = kube.compact_history()
        before = len(_map_lists(kube)) + len(_map_watches(kube))
        wait_until(
            lambda: bool(router.events("map.watch_expired")),
            timeout=20,
            what="the resumed watch answered 410 Gone",
        )
        expired_at = time.monotonic()

        def watches_past_compaction() -> int:
            return sum(
                int(w.params.get("resourceVersion") or 0) >= compacted for w in _map_watches(kube)
            )

        wait_until(
            lambda: watches_past_compaction() >= 3,
            timeout=20,
            what="three watches from a version the server still has",
        )
        elapsed = time.monotonic() - expired_at
        made = len(_map_lists(kube)) + len(_map_watches(kube)) - before
        core.patch_namespaced_config_map("ct-map", NS, {"data": _map_data(2, 3)})
        wait_until(
            lambda: router.metric("gatewaypool_router_map_version") == 2,
            timeout=10,
            what="version 2 applied after the new list",
        )
    finally:
        router.stop()
    # The expired watch, one list, then one watch per second (--watch-timeout 1).
    assert made <= 3 + elapsed, f"{made} map requests in {elapsed:.1f} s"
    assert len(router.events("map.watch_expired")) == 1
    assert len(_map_lists(kube)) == 2  # the start, and the list after 410
    assert not router.events("map.watch_failed")


def test_bookmarks_keep_a_quiet_map_current_while_reports_are_written(tmp_path: Path) -> None:
    """Routers' report writes must not push the map's version out of the server's history.

    The history keeps 40 events; the routers of a pool write far more than
    that while the map stays the same. With bookmarks the router resumes
    from the server's newest version each time, never from the map's own.
    """
    with KubeEmulator(keep_requests=True, history_size=40) as kube:
        core = kubernetes.client.CoreV1Api(kube.api_client())
        core.create_namespaced_config_map(
            NS, {"metadata": {"name": "ct-map"}, "data": _map_data(1, 2)}
        )
        core.create_namespaced_config_map(NS, {"metadata": {"name": "ct-routers"}})
        # 3 s watches: the server's bookmark comes 2 s before the end.
        router = _router(kube, tmp_path, watch_seconds=3, report=True)
        try:
            assert router.metric("gatewaypool_router_map_version") == 1
            for round_ in range(3):
                for other in range(30):  # the reports of other router replicas
                    written = core.patch_namespaced_config_map(
                        "ct-routers", NS, {"data": {f"ct-router-x{other}": str(round_)}}
                    )
                newest = int(written.metadata.resource_version)
                wait_until(
                    lambda newest=newest: any(
                        int(w.params.get("resourceVersion") or 0) >= newest
                        for w in _map_watches(kube)
                    ),
                    timeout=15,
                    what=f"a watch resumed from a bookmark at {newest} or later",
                )
            core.patch_namespaced_config_map("ct-map", NS, {"data": _map_data(2, 3)})
            wait_until(
                lambda: router.metric("gatewaypool_router_map_version") == 2,
                timeout=10,
                what="version 2 applied",
            )
            lists = _requested(router, "list")
        finally:
            router.stop()
        assert not router.events("map.watch_expired")
        assert lists == 1 == len(_map_lists(kube))


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
