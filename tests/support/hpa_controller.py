"""A stand-in for Kubernetes' HPA controller, run against the emulator and real routers.

Each sync period it does what kube-controller-manager's
horizontal-pod-autoscaler controller does for one HPA, through the same
doors, over HTTP:

- reads the ``autoscaling/v2`` HorizontalPodAutoscaler the operator
  rendered (so the test follows what the operator really renders: its
  min/max, metric, target and behavior), and its target's ``/scale``
  subresource (``spec.replicas``, ``status.selector``);
- lists the target's pods by that selector, and reads the Pods metric for
  them from a metrics source: here :class:`RouterMetricsAdapter`, which
  scrapes the routers' real ``/metrics`` and sums
  ``gatewaypool_router_studies_in_flight`` by ``gateway`` (the pod's name)
  across routers, as the chart's Prometheus Adapter rule does;
- decides with :mod:`support.hpa_algorithm` (the documented algorithm),
  writes ``spec.replicas`` through ``/scale`` when it changes, and writes
  the HPA's ``status`` (current and desired replicas, last scale time,
  current metrics).

The sync period is Kubernetes' ``--horizontal-pod-autoscaler-sync-period``,
15 s by default; tests compress it (a second or so) to stay short. The
behavior's windows and periods are the HPA's own, in real seconds.

Every sync is kept in :attr:`HPAController.syncs`, and any error (an HPA it
does not emulate, a failed request) in :attr:`HPAController.errors`, for the
test to assert on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from gatewaypool import quantity
from support.hpa_algorithm import (
    DEFAULT_SYNC_PERIOD,
    DEFAULT_TOLERANCE,
    Decision,
    Memory,
    Pod,
    UnsupportedHPAError,
    parse_hpa,
    reconcile,
)
from support.kubeemu import KubeEmulator

log = logging.getLogger(__name__)

HPA_GROUP, HPA_VERSION, HPA_PLURAL = "autoscaling", "v2", "horizontalpodautoscalers"
#: The scale targets this stand-in resolves (a real controller asks discovery).
SCALE_TARGETS = {("gatewaypool.io/v1alpha1", "GatewayPool"): "gatewaypools"}


class Scraped(Protocol):
    """What the adapter scrapes: a router and its ``/metrics`` (a ``RouterProcess``)."""

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """{(sample name, sorted labels): value}; OSError when it does not answer."""
        ...


class RouterMetricsAdapter:
    """The custom metrics API for pods, as Prometheus Adapter serves it from the routers.

    Only the rule the chart ships for the HPA's metric: per pod,
    ``sum by (namespace, gateway) (gatewaypool_router_studies_in_flight)``
    over every router replica, the label ``gateway`` naming the pod. A
    router that does not answer misses this scrape, as in Prometheus.
    """

    RULES: Mapping[str, str] = {
        "gatewaypool_studies_in_flight": "gatewaypool_router_studies_in_flight"
    }

    def __init__(self, routers: Callable[[], Sequence[Scraped]]) -> None:
        self._routers = routers
        #: The last answer, summed over every gateway: the pool's whole load.
        self.last_total = 0.0

    def pods_metric(self, name: str) -> dict[str, float]:
        """{pod name: value} of custom metric `name`."""
        series = self.RULES.get(name)
        if series is None:
            raise UnsupportedHPAError(f"no adapter rule for the Pods metric {name!r}")
        totals: dict[str, float] = defaultdict(float)
        for router in self._routers():
            try:
                samples = router.metrics()
            except OSError:
                continue
            for (sample, labels), value in samples.items():
                if sample == series:
                    totals[dict(labels)["gateway"]] += value
        self.last_total = sum(totals.values())
        return dict(totals)


@dataclass(frozen=True)
class Sync:
    """One sync: when (monotonic seconds), the replicas it found and what it decided."""

    time: float
    current: int
    decision: Decision
    wrote: bool  # spec.replicas written through /scale


class HPAController:
    """Plays the HPA controller for the HPA `name` in `namespace`, in a thread."""

    def __init__(
        self,
        kube: KubeEmulator,
        *,
        namespace: str,
        name: str,
        metrics: Callable[[str], Mapping[str, float]],
        sync_period: float = DEFAULT_SYNC_PERIOD,
        tolerance: float = DEFAULT_TOLERANCE,
    ) -> None:
        self.namespace = namespace
        self.name = name
        self.sync_period = sync_period
        self.syncs: list[Sync] = []
        self.errors: list[str] = []
        self._metrics = metrics
        self._tolerance = tolerance
        # Any: the client's helpers are untyped.
        self._api: Any = kube.api_client()
        self._custom = kubernetes.client.CustomObjectsApi(self._api)
        self._core = kubernetes.client.CoreV1Api(self._api)
        self._memory = Memory()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hpa-controller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> HPAController:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def _run(self) -> None:
        while True:
            try:
                self.sync()
            except Exception as exc:  # reported to the test, never silent
                log.exception("HPA sync failed")
                self.errors.append(repr(exc))
            if self._stop.wait(self.sync_period):
                return

    def sync(self) -> Sync | None:
        """One sync now; None while the HPA does not exist."""
        try:
            hpa = _plain(
                self._custom.get_namespaced_custom_object(
                    HPA_GROUP, HPA_VERSION, self.namespace, HPA_PLURAL, self.name
                )
            )
        except ApiException as exc:
            if exc.status != 404:
                raise
            self._memory = Memory()  # the controller forgets a deleted HPA
            return None
        spec = parse_hpa(hpa)
        target = hpa["spec"]["scaleTargetRef"]
        plural = SCALE_TARGETS.get((target.get("apiVersion"), target.get("kind")))
        if plural is None:
            raise UnsupportedHPAError(f"scale target {target!r} is not emulated")
        group, version = target["apiVersion"].split("/")
        scale = _plain(
            self._custom.get_namespaced_custom_object_scale(
                group, version, self.namespace, plural, target["name"]
            )
        )
        current = int((scale.get("spec") or {}).get("replicas") or 0)
        selector = (scale.get("status") or {}).get("selector") or ""
        now = time.monotonic()
        decision = reconcile(
            spec,
            self._memory,
            current=current,
            pods=self._pods(selector, self._metrics(spec.metric)) if selector else [],
            now=now,
            tolerance=self._tolerance,
        )
        self._memory = decision.memory
        wrote = decision.replicas != current
        if wrote:
            self._custom.patch_namespaced_custom_object_scale(
                group,
                version,
                self.namespace,
                plural,
                target["name"],
                {"spec": {"replicas": decision.replicas}},
            )
            self._memory = self._memory.after_scale(
                spec, previous=current, replicas=decision.replicas, now=now
            )
            log.info(
                "HPA %s: %d -> %d (%s)", self.name, current, decision.replicas, decision.reason
            )
        log.debug(
            "HPA %s: %d replicas, average %s of %d pods, metric asks %s: %d (%s)",
            self.name,
            current,
            decision.average,
            len(decision.pods),
            decision.metric_replicas,
            decision.replicas,
            decision.reason,
        )
        self._write_status(hpa, spec.metric, current, decision, wrote)
        sync = Sync(now, current, decision, wrote)
        self.syncs.append(sync)
        return sync

    def _pods(self, selector: str, values: Mapping[str, float]) -> list[Pod]:
        pods = self._core.list_namespaced_pod(self.namespace, label_selector=selector)
        items: list[dict[str, Any]] = self._api.sanitize_for_serialization(pods)["items"]
        return [
            Pod(
                name=item["metadata"]["name"],
                phase=str((item.get("status") or {}).get("phase") or "Pending"),
                deleted=bool(item["metadata"].get("deletionTimestamp")),
                value=values.get(item["metadata"]["name"]),
            )
            for item in items
        ]

    def _write_status(
        self, hpa: Mapping[str, Any], metric: str, current: int, decision: Decision, wrote: bool
    ) -> None:
        status: dict[str, Any] = {
            "currentReplicas": current,
            "desiredReplicas": decision.replicas,
            "currentMetrics": None,
        }
        if decision.average is not None:
            status["currentMetrics"] = [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": metric},
                        "current": {
                            "averageValue": quantity.canonical(f"{round(decision.average * 1000)}m")
                        },
                    },
                }
            ]
        if wrote:
            status["lastScaleTime"] = _now()
        status["conditions"] = _conditions(
            (hpa.get("status") or {}).get("conditions") or [], metric, decision, wrote
        )
        generation = (hpa.get("metadata") or {}).get("generation")
        if generation is not None:
            status["observedGeneration"] = generation
        before = hpa.get("status") or {}
        after = {k: v for k, v in {**before, **status}.items() if v is not None}
        if after == before:
            return  # as the controller does: no write when nothing changed
        self._custom.patch_namespaced_custom_object_status(
            HPA_GROUP, HPA_VERSION, self.namespace, HPA_PLURAL, self.name, {"status": status}
        )


def _plain(answer: object) -> dict[str, Any]:
    """A custom-objects answer (JSON decoded into plain data) as what it is."""
    if not isinstance(answer, dict):
        raise TypeError(f"expected a JSON object, got {type(answer).__name__}")
    return answer


_LIMITS = {
    "TooManyReplicas": "the desired replica count is more than the maximum replica count",
    "TooFewReplicas": "the desired replica count is less than the minimum replica count",
    "ScaleUpLimit": "the desired replica count is increasing faster than the maximum scale rate",
    "ScaleDownLimit": "the desired replica count is decreasing faster than the maximum scale rate",
}


def _conditions(
    previous: Sequence[Mapping[str, Any]], metric: str, decision: Decision, wrote: bool
) -> list[dict[str, Any]]:
    """AbleToScale, ScalingActive and ScalingLimited, worded as the controller words them.

    The operator reads the first two (False: the pool is Degraded, reason
    AutoscalerNotScaling), so the end-to-end test exercises that too.
    """
    if wrote:
        able = (
            "SucceededRescale",
            f"the HPA controller was able to update the target scale to {decision.replicas}",
        )
    elif decision.reason in {"ScaleDownStabilized", "ScaleUpStabilized"}:
        able = (
            decision.reason,
            "recent recommendations were different from the current one, "
            "applying the stabilized recommendation",
        )
    else:
        able = ("ReadyForNewScale", "recommended size matches current size")
    if decision.reason == "FailedGetPodsMetric":
        active = (
            "False",
            decision.reason,
            f"the HPA was unable to compute the replica count: no value of pods metric {metric}",
        )
    elif decision.reason == "ScalingDisabled":
        active = (
            "False",
            decision.reason,
            "scaling is disabled since the replica count of the target is zero",
        )
    else:
        active = (
            "True",
            "ValidMetricFound",
            f"the HPA was able to successfully calculate a replica count from pods metric {metric}",
        )
    limited = (
        ("True", decision.reason, _LIMITS[decision.reason])
        if decision.reason in _LIMITS
        else ("False", "DesiredWithinRange", "the desired count is within the acceptable range")
    )
    before = {c.get("type"): c for c in previous}
    conditions = []
    for kind, (status, reason, message) in (
        ("AbleToScale", ("True", *able)),
        ("ScalingActive", active),
        ("ScalingLimited", limited),
    ):
        old = before.get(kind) or {}
        since = old.get("lastTransitionTime") if old.get("status") == status else None
        conditions.append(
            {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastTransitionTime": since or _now(),
            }
        )
    return conditions


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
