"""The HPA stand-in's driver against the emulator: the doors a real HPA controller uses.

The end-to-end autoscaling test trusts the driver to read the HPA the
operator renders, count the pods the pool's ``/scale`` selector names, write
replicas through ``/scale`` and report on the HPA as Kubernetes does (the
operator reads the HPA's conditions). Here each of those is checked against
the emulator over HTTP, with the HPA built by the operator's own code and
metric values given directly; and the metrics adapter's sum over routers
with routers that answer fixed samples.
"""

from __future__ import annotations

from typing import Any

import pytest

from gatewaypool_operator.children import build_children, selector_labels, selector_string
from gatewaypool_operator.spec import parse_spec
from support.cluster import NS
from support.hpa_algorithm import UnsupportedHPAError
from support.hpa_controller import HPAController, RouterMetricsAdapter
from support.kubeemu import KubeEmulator

METRIC = "gatewaypool_studies_in_flight"
SERIES = "gatewaypool_router_studies_in_flight"


def pool_spec(**autoscaling: Any) -> dict[str, Any]:
    return {
        "replicas": 1,
        "buckets": 64,
        "gateway": {"image": "triage:1", "aeTitle": "TRIAGE"},
        "handover": {"quietSeconds": 2, "maxDrainSeconds": 10},
        "autoscaling": {
            "minReplicas": 1,
            "maxReplicas": 4,
            "targets": {"studiesInFlight": 3},
            "scaleDown": {"stabilizationSeconds": 10, "periodSeconds": 3},
            **autoscaling,
        },
    }


def make_pool(kube: KubeEmulator, spec: dict[str, Any], *, name: str = "ct") -> None:
    """The pool, its status.selector, and the HPA the operator renders for it."""
    kube.create(
        "GatewayPool",
        {
            "apiVersion": "gatewaypool.io/v1alpha1",
            "kind": "GatewayPool",
            "metadata": {"name": name, "namespace": NS},
            "spec": spec,
        },
    )
    kube.write_status(
        "gatewaypool.io",
        "v1alpha1",
        "gatewaypools",
        NS,
        name,
        status={"replicas": spec["replicas"], "selector": selector_string(name)},
    )
    parsed = parse_spec(spec, default_router_image="gatewaypool:test")
    [hpa] = [
        child
        for child in build_children(
            name=name, namespace=NS, spec=parsed, map_data=None, gateway_replicas=1
        )
        if child["kind"] == "HorizontalPodAutoscaler"
    ]
    kube.create("HorizontalPodAutoscaler", hpa)


def make_pod(kube: KubeEmulator, name: str, labels: dict[str, str], phase: str) -> None:
    kube.create("Pod", {"metadata": {"name": name, "namespace": NS, "labels": labels}})
    kube.write_status("", "v1", "pods", NS, name, status={"phase": phase})


def controller(kube: KubeEmulator, values: dict[str, float]) -> HPAController:
    return HPAController(kube, namespace=NS, name="ct", metrics=lambda _: values)


def conditions(kube: KubeEmulator) -> dict[str, tuple[str, str]]:
    hpa = kube.get("HorizontalPodAutoscaler", "ct", NS) or {}
    found = (hpa.get("status") or {}).get("conditions") or []
    return {c["type"]: (c["status"], c["reason"]) for c in found}


def test_a_sync_scales_through_the_scale_subresource_and_reports_on_the_hpa(
    kube: KubeEmulator,
) -> None:
    make_pool(kube, pool_spec())
    make_pod(kube, "ct-gw-0", selector_labels("ct", "gateway"), "Running")
    # Another pool's gateway and a router pod are not the pool's pods.
    make_pod(kube, "mr-gw-0", selector_labels("mr", "gateway"), "Running")
    make_pod(kube, "ct-router-0", selector_labels("ct", "router"), "Running")

    sync = controller(kube, {"ct-gw-0": 7, "mr-gw-0": 90, "ct-router-0": 90}).sync()

    assert sync is not None
    assert (sync.current, sync.decision.replicas, sync.wrote) == (1, 3, True)  # ceil(7 / 3)
    assert sync.decision.pods == {"ct-gw-0": 7}
    pool = kube.get("GatewayPool", "ct", NS) or {}
    assert pool["spec"]["replicas"] == 3
    status = (kube.get("HorizontalPodAutoscaler", "ct", NS) or {})["status"]
    assert (status["currentReplicas"], status["desiredReplicas"]) == (1, 3)
    assert status["lastScaleTime"]
    [current] = status["currentMetrics"]
    assert current["pods"]["metric"]["name"] == METRIC
    assert current["pods"]["current"]["averageValue"] == "7"
    assert conditions(kube) == {
        "AbleToScale": ("True", "SucceededRescale"),
        "ScalingActive": ("True", "ValidMetricFound"),
        "ScalingLimited": ("False", "DesiredWithinRange"),
    }


def test_without_values_it_leaves_the_pool_alone_and_says_it_cannot_scale(
    kube: KubeEmulator,
) -> None:
    make_pool(kube, pool_spec())
    make_pod(kube, "ct-gw-0", selector_labels("ct", "gateway"), "Running")

    sync = controller(kube, {}).sync()

    assert sync is not None and not sync.wrote
    assert (kube.get("GatewayPool", "ct", NS) or {})["spec"]["replicas"] == 1
    assert conditions(kube)["ScalingActive"] == ("False", "FailedGetPodsMetric")


def test_nothing_happens_without_an_hpa_and_an_hpa_it_cannot_emulate_is_refused(
    kube: KubeEmulator,
) -> None:
    assert controller(kube, {}).sync() is None
    cpu = pool_spec(targets={"cpuUtilization": 70})
    cpu["gateway"]["resources"] = {"requests": {"cpu": "500m"}}
    make_pool(kube, cpu)
    with pytest.raises(UnsupportedHPAError, match="Resource"):
        controller(kube, {}).sync()


class _Router:
    def __init__(self, samples: dict[str, float] | None) -> None:
        self._samples = samples

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        if self._samples is None:
            raise ConnectionRefusedError("router down")
        return {
            **{(SERIES, (("gateway", g),)): v for g, v in self._samples.items()},
            ("gatewaypool_router_map_version", ()): 7.0,
        }


def test_the_adapter_sums_each_gateways_series_over_the_routers_that_answer() -> None:
    routers = [_Router({"ct-gw-0": 2, "ct-gw-1": 0}), _Router(None), _Router({"ct-gw-0": 1})]
    adapter = RouterMetricsAdapter(lambda: routers)
    assert adapter.pods_metric(METRIC) == {"ct-gw-0": 3, "ct-gw-1": 0}
    assert adapter.last_total == 3
    with pytest.raises(UnsupportedHPAError, match="gatewaypool_bytes_per_second"):
        adapter.pods_metric("gatewaypool_bytes_per_second")
