"""A pool on the real control plane, installed and used as a hospital would.

The chart is rendered by the real Helm engine and applied server-side; the
operator runs as the chart's Deployment with its ServiceAccount's token; the
real StatefulSet, Deployment and EndpointSlice controllers make the pods and
their addresses; the kubelet stand-in runs them as processes. Studies go to
the router Service's ClusterIP, as a modality's would.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from gatewaypool.contract import API_GROUP, API_VERSION, PLURAL
from gatewaypool_local.peers import storescu, wait_until
from gatewaypool_local.synth import generate_study
from support.realcluster import Cluster

GATEWAY_IMAGE = "registry.example.org/test/pynetdicom-gateway:1"
GATEWAY_AE = "TRIAGE"


def gateway_spec() -> dict[str, Any]:
    """A gateway that keeps what it receives under /tmp/received (its emptyDir)."""
    return {
        "image": GATEWAY_IMAGE,
        "aeTitle": GATEWAY_AE,
        "port": 104,
        "args": ["--port", "104", "-aet", GATEWAY_AE, "-od", "/tmp/received", "--host", "0.0.0.0"],
    }


def pool_body(namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{API_GROUP}/{API_VERSION}",
        "kind": "GatewayPool",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def test_the_crd_refuses_autoscaling_without_targets(
    cluster: Cluster, cluster_namespace: str
) -> None:
    """The real API server validates custom resources against the CRD (the emulator did not)."""
    custom = kubernetes.client.CustomObjectsApi(cluster.api())
    spec = {"replicas": 1, "gateway": gateway_spec(), "autoscaling": {"maxReplicas": 3}}
    with pytest.raises(ApiException) as refused:
        custom.create_namespaced_custom_object(
            API_GROUP,
            API_VERSION,
            cluster_namespace,
            PLURAL,
            pool_body(cluster_namespace, "ct", spec),
        )
    assert refused.value.status == 422
    assert "targets" in str(refused.value.body)


def _status(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    custom = kubernetes.client.CustomObjectsApi(cluster.api())
    pool: Any = custom.get_namespaced_custom_object(API_GROUP, API_VERSION, namespace, PLURAL, name)
    return dict(pool.get("status") or {})


def _received(cluster: Cluster, namespace: str, prefix: str) -> dict[str, set[str]]:
    """Files each gateway pod stored, by pod name."""
    found: dict[str, set[str]] = {}
    for pod in cluster.kubelet.pods(namespace):
        if pod.name.startswith(prefix):
            folder = cluster.kubelet.volume(pod, "tmp") / "received"
            names = {p.name for p in folder.rglob("*.dcm")} if folder.exists() else set()
            found.setdefault(pod.name, set()).update(names)
    return found


def test_a_pool_runs_and_routes_on_the_real_control_plane(
    cluster: Cluster, cluster_namespace: str, tmp_path: Path
) -> None:
    ns = cluster_namespace
    installed = cluster.install(ns)
    try:
        custom = kubernetes.client.CustomObjectsApi(cluster.api())
        spec = {"replicas": 2, "gateway": gateway_spec()}
        custom.create_namespaced_custom_object(
            API_GROUP, API_VERSION, ns, PLURAL, pool_body(ns, "ct", spec)
        )
        wait_until(
            lambda: (
                _status(cluster, ns, "ct").get("readyReplicas") == 2
                and len(_status(cluster, ns, "ct").get("bucketCounts") or {}) == 2
            ),
            timeout=120,
            what="two gateways ready and owning buckets",
        )
        apps = kubernetes.client.AppsV1Api(cluster.api())
        wait_until(
            lambda: (
                (apps.read_namespaced_deployment("ct-router", ns).status.ready_replicas or 0) >= 1
            ),
            timeout=120,
            what="a router ready",
        )
        service = kubernetes.client.CoreV1Api(cluster.api()).read_namespaced_service(
            "ct-router", ns
        )
        address = service.spec.cluster_ip
        port = next(p.port for p in service.spec.ports if p.name == "dicom")
        studies = [
            generate_study(tmp_path / "data", study_index=i, instances=4, rows=8, columns=8)
            for i in range(6)
        ]
        for study in studies:
            result = storescu(address, port, study.files, called_ae="GATEWAYPOOL")
            assert result.returncode == 0, result.stdout + result.stderr
        sent = {f"{uid}.dcm" for study in studies for uid in study.sop_instance_uids}
        wait_until(
            lambda: sum(len(v) for v in _received(cluster, ns, "ct-gw-").values()) >= len(sent),
            timeout=30,
            what="every instance stored",
        )
        received = _received(cluster, ns, "ct-gw-")
        for study in studies:
            names = {f"{uid}.dcm" for uid in study.sop_instance_uids}
            holders = {pod for pod, held in received.items() if held & names}
            assert len(holders) == 1, f"study {study.study_uid} split over {holders}"
    finally:
        cluster.uninstall(installed)
