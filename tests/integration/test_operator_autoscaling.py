"""spec.autoscaling with the real operator process: the HorizontalPodAutoscaler it keeps.

The operator runs as ``gatewaypool operator`` against the emulator. No HPA
controller runs here; the tests play its part where one is needed: writing
the pool's scale subresource (what an HPA does to scale), and writing the
HPA's status (what it reports when it cannot scale).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatewaypool.bucketmap import parse_map
from gatewaypool_local.peers import wait_until
from support.cluster import GROUP, NS, PLURAL, REPO, VERSION, custom
from support.kubeemu import KubeEmulator
from support.kubelet import GatewayKubelet
from support.operatorproc import OperatorProcess

CRD = REPO / "crds" / "gatewaypool.io_gatewaypools.yaml"
HPA = "HorizontalPodAutoscaler"


@pytest.fixture(autouse=True)
def kubelet(kube: KubeEmulator, tmp_path: Path) -> Iterator[GatewayKubelet]:
    """Gateway pods that start late and become Ready later (no processes: no traffic here)."""
    with GatewayKubelet(
        kube,
        tmp_path / "kubelet",
        namespace=NS,
        pool="ct",
        ae_title="TRIAGE",
        port=104,
        max_gateways=8,
        processes=False,
    ) as harness:
        yield harness
    assert not harness.errors


def create_pool(kube: KubeEmulator, *, replicas: int, autoscaling: dict[str, Any] | None) -> str:
    spec: dict[str, Any] = {
        "replicas": replicas,
        "buckets": 16,
        "gateway": {
            "image": "registry.example.org/ai-triage:2.1",
            "aeTitle": "TRIAGE",
            "resources": {"requests": {"cpu": "500m"}},
        },
        # No routers here: a move completes once the operator has waited this long.
        "handover": {"quietSeconds": 1, "maxDrainSeconds": 10},
    }
    if autoscaling is not None:
        spec["autoscaling"] = autoscaling
    created = custom(kube).create_namespaced_custom_object(
        GROUP,
        VERSION,
        NS,
        PLURAL,
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "GatewayPool",
            "metadata": {"name": "ct", "namespace": NS},
            "spec": spec,
        },
    )
    return str(created["metadata"]["uid"])


def patch_spec(kube: KubeEmulator, spec: dict[str, Any]) -> None:
    """A JSON merge patch of the spec, as ``kubectl patch --type merge`` sends."""
    custom(kube).patch_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, "ct", {"spec": spec})


def pool(kube: KubeEmulator) -> dict[str, Any]:
    found = kube.get("GatewayPool", "ct", NS)
    assert found is not None
    return found


def hpa_spec(kube: KubeEmulator) -> dict[str, Any] | None:
    hpa = kube.get(HPA, "ct", NS)
    return None if hpa is None else dict(hpa["spec"])


def metric_types(kube: KubeEmulator) -> list[str]:
    return [metric["type"] for metric in (hpa_spec(kube) or {}).get("metrics") or []]


def degraded(kube: KubeEmulator) -> tuple[str, str]:
    for condition in (pool(kube).get("status") or {}).get("conditions") or []:
        if condition["type"] == "Degraded":
            return condition["status"], condition["reason"]
    return "", ""


def test_the_autoscaler_follows_spec_autoscaling(
    kube: KubeEmulator, operator: OperatorProcess
) -> None:
    uid = create_pool(
        kube, replicas=2, autoscaling={"maxReplicas": 4, "targets": {"studiesInFlight": 4}}
    )
    wait_until(lambda: hpa_spec(kube) is not None, timeout=20, what="autoscaler created")
    hpa = kube.get(HPA, "ct", NS)
    assert hpa is not None
    [owner] = hpa["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("GatewayPool", "ct", uid)
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "GatewayPool",
        "name": "ct",
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 4)
    assert spec["metrics"][0]["pods"]["metric"]["name"] == "gatewaypool_studies_in_flight"
    # max(300, maxDrainSeconds 10)
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
    wait_until(
        lambda: (pool(kube).get("status") or {}).get("autoscaling") == "1-4",
        timeout=20,
        what="status.autoscaling",
    )

    # A wider range and a CPU target too: the autoscaler is brought in line.
    patch_spec(kube, {"autoscaling": {"maxReplicas": 6, "targets": {"cpuUtilization": 70}}})
    wait_until(
        lambda: (
            (hpa_spec(kube) or {}).get("maxReplicas") == 6
            and metric_types(kube) == ["Resource", "Pods"]
        ),
        timeout=20,
        what="autoscaler updated",
    )
    # A target dropped is a metric gone.
    patch_spec(kube, {"autoscaling": {"targets": {"studiesInFlight": None}}})
    wait_until(lambda: metric_types(kube) == ["Resource"], timeout=20, what="metric removed")
    hpa_after = kube.get(HPA, "ct", NS)
    assert hpa_after is not None and hpa_after["metadata"]["uid"] == hpa["metadata"]["uid"]
    wait_until(
        lambda: (pool(kube).get("status") or {}).get("autoscaling") == "1-6",
        timeout=20,
        what="status.autoscaling follows",
    )

    # The field gone: the autoscaler is deleted, spec.replicas stays as it was.
    patch_spec(kube, {"autoscaling": None})
    wait_until(lambda: kube.get(HPA, "ct", NS) is None, timeout=20, what="autoscaler deleted")
    wait_until(
        lambda: "autoscaling" not in (pool(kube).get("status") or {}),
        timeout=20,
        what="status.autoscaling gone",
    )
    assert pool(kube)["spec"]["replicas"] == 2
    wait_until(
        lambda: any(
            e.get("reason") == "ChildDeleted" and "HorizontalPodAutoscaler" in e.get("message", "")
            for e in kube.objects("v1/events", NS)
        ),
        timeout=20,
        what="ChildDeleted event",
    )


def test_an_autoscaler_the_pool_does_not_own_is_left_alone(
    kube: KubeEmulator, operator: OperatorProcess
) -> None:
    # Someone's own HPA aimed at the pool, named like it, before spec.autoscaling existed.
    target = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "GatewayPool", "name": "ct"}
    kube.create(
        "autoscaling/v2/horizontalpodautoscalers",
        {
            "metadata": {"name": "ct", "namespace": NS},
            "spec": {"scaleTargetRef": target, "maxReplicas": 3},
        },
        NS,
    )
    create_pool(kube, replicas=1, autoscaling=None)
    wait_until(
        lambda: kube.get("StatefulSet", "ct-gw", NS) is not None, timeout=20, what="children"
    )
    passes = operator.count("resync:")
    wait_until(lambda: operator.count("resync:") >= passes + 2, timeout=20, what="two passes")
    hpa = kube.get(HPA, "ct", NS)
    assert hpa is not None
    assert hpa["spec"]["maxReplicas"] == 3
    assert not hpa["metadata"].get("ownerReferences")


def test_scaling_through_the_scale_subresource_as_an_hpa_does(
    kube: KubeEmulator, operator: OperatorProcess
) -> None:
    create_pool(kube, replicas=1, autoscaling={"maxReplicas": 4, "targets": {"studiesInFlight": 4}})
    wait_until(lambda: kube.get(HPA, "ct", NS) is not None, timeout=20, what="autoscaler")

    # The HPA controller scales its target by writing the scale subresource.
    custom(kube).patch_namespaced_custom_object_scale(
        GROUP, VERSION, NS, PLURAL, "ct", {"spec": {"replicas": 3}}
    )
    scaled = pool(kube)
    assert scaled["spec"]["replicas"] == 3

    def settled() -> bool:
        configmap = kube.get("ConfigMap", "ct-map", NS) or {}
        text = (configmap.get("data") or {}).get("map.json")
        statefulset = kube.get("StatefulSet", "ct-gw", NS) or {}
        return (
            statefulset.get("spec", {}).get("replicas") == 3
            and text is not None
            and len(parse_map(text).gateways) == 3
        )

    wait_until(settled, timeout=30, what="three gateways in the map")
    # The operator follows spec.replicas and never writes it: after more passes
    # it holds what the scale write put there, at the same generation.
    passes = operator.count("resync:")
    wait_until(lambda: operator.count("resync:") >= passes + 2, timeout=20, what="two passes")
    after = pool(kube)
    assert after["spec"]["replicas"] == 3
    assert after["metadata"]["generation"] == scaled["metadata"]["generation"]
    scale = custom(kube).get_namespaced_custom_object_scale(GROUP, VERSION, NS, PLURAL, "ct")
    assert (scale["spec"]["replicas"], scale["status"]["replicas"]) == (3, 3)
    assert scale["status"]["selector"] == after["status"]["selector"]


def test_an_autoscaler_that_cannot_scale_degrades_the_pool(
    kube: KubeEmulator, operator: OperatorProcess
) -> None:
    create_pool(kube, replicas=1, autoscaling={"maxReplicas": 4, "targets": {"studiesInFlight": 4}})
    wait_until(lambda: kube.get(HPA, "ct", NS) is not None, timeout=20, what="autoscaler")
    # What an HPA controller reports when no adapter serves the routers' metric.
    kube.write_status(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        NS,
        "ct",
        status={
            "currentReplicas": 1,
            "desiredReplicas": 1,
            "conditions": [
                {
                    "type": "ScalingActive",
                    "status": "False",
                    "reason": "FailedGetPodsMetric",
                    "message": "unable to get metric gatewaypool_studies_in_flight",
                }
            ],
        },
    )
    wait_until(
        lambda: degraded(kube) == ("True", "AutoscalerNotScaling"),
        timeout=20,
        what="Degraded: AutoscalerNotScaling",
    )
