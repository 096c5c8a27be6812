"""The HorizontalPodAutoscaler controller's arithmetic (autoscaling/v2), as data in and data out.

GatewayPool does not scale itself: Kubernetes' HPA controller does, on the
HPA the operator renders. Tests have no kube-controller-manager, so this
module plays its decision for what GatewayPool's HPA uses -- one ``Pods``
metric with an ``AverageValue`` target and an explicit ``behavior`` --
following the documented algorithm ("Horizontal Pod Autoscaling", sections
"Algorithm details" and "Configurable scaling behavior", kubernetes.io) and
the controller it describes (``pkg/controller/podautoscaler``:
``replica_calculator.go``, ``horizontal.go``):

1. The metric's recommendation. Pods of the scale target are grouped:
   deleted or ``Failed`` pods are ignored, ``Pending`` pods are not ready,
   pods without a value are missing, the rest are counted. The ratio is
   the counted pods' average over the target; within the tolerance (10 %)
   nothing changes, else ``ceil(ratio * counted pods)``. With missing pods
   the average is computed again, conservatively: a missing pod counts as
   exactly the target on a scale-down and as 0 on a scale-up; on a scale-up
   unready pods count as 0 too. If that lands within the tolerance or turns
   the direction round, nothing changes.
2. Stabilization. Every sync's recommendation is remembered with its time
   (and, on the first sync, the current replicas). The result is the
   current replicas, raised to the lowest recommendation within the
   scale-up window and lowered to the highest within the scale-down window:
   a scale-down happens only once every recommendation of its window asks
   for it.
3. Rate. Each policy allows, from the replicas at the start of its period
   (current replicas minus what the controller added plus what it removed
   in the last ``periodSeconds``), ``value`` pods or ``value`` percent
   more (or fewer); ``selectPolicy`` ``Max`` takes the policy allowing the
   biggest change, ``Min`` the smallest, ``Disabled`` none. The result is
   clamped to ``[minReplicas, maxReplicas]``.

Before all that, a target outside ``[minReplicas, maxReplicas]`` is brought
back at once, and one scaled to 0 is left alone (autoscaling disabled).

Times are plain seconds (a monotonic clock), passed in: nothing here reads a
clock or does I/O, so unit tests can drive every rule and hypothesis can
drive long histories.

Simplified against the real controller: only ``Pods`` metrics with an
``AverageValue`` target (anything else is refused by :func:`parse_hpa`), no
metric ``selector``, no behaviour-less HPAs (the older normalisation; the
operator always renders ``behavior``), no per-direction ``tolerance``
(alpha in Kubernetes 1.33; one tolerance for both), no conditions or
events, floats instead of milli-units.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from gatewaypool import quantity

#: ``--horizontal-pod-autoscaler-tolerance``'s default.
DEFAULT_TOLERANCE = 0.1
#: ``--horizontal-pod-autoscaler-sync-period``'s default, in seconds.
DEFAULT_SYNC_PERIOD = 15.0
#: The scale-down window the controller uses when behavior leaves it unset
#: (``--horizontal-pod-autoscaler-downscale-stabilization``).
DEFAULT_SCALE_DOWN_WINDOW = 300


class UnsupportedHPAError(ValueError):
    """The HPA asks for something this stand-in does not emulate."""


class NoMetricsError(Exception):
    """No usable metric value this sync: the controller leaves the replicas alone."""


@dataclass(frozen=True)
class Policy:
    """One ``HPAScalingPolicy``: ``value`` pods or percent per ``period`` seconds."""

    kind: str  # "Pods" or "Percent"
    value: int
    period: int


@dataclass(frozen=True)
class Rules:
    """One direction's ``HPAScalingRules``."""

    window: int  # stabilizationWindowSeconds
    select: str  # "Max", "Min" or "Disabled"
    policies: tuple[Policy, ...]


#: The API server's defaults for a ``behavior`` that leaves a direction or field out.
SCALE_UP_DEFAULT = Rules(0, "Max", (Policy("Pods", 4, 15), Policy("Percent", 100, 15)))
SCALE_DOWN_DEFAULT = Rules(DEFAULT_SCALE_DOWN_WINDOW, "Max", (Policy("Percent", 100, 15),))


@dataclass(frozen=True)
class HPASpec:
    """What the controller reads from an HPA with one Pods metric."""

    min_replicas: int
    max_replicas: int
    metric: str
    target: float  # the metric's target average value per pod
    scale_up: Rules
    scale_down: Rules


@dataclass(frozen=True)
class Pod:
    """A pod of the scale target as the controller sees it in one sync."""

    name: str
    phase: str
    deleted: bool = False
    value: float | None = None  # the metric for this pod; None: the metrics API has none


@dataclass(frozen=True)
class ScaleEvent:
    """A change of replicas the controller made, ``change`` > 0, at ``time``."""

    time: float
    change: int


@dataclass(frozen=True)
class Memory:
    """What the controller keeps between syncs for one HPA (it is lost on restart)."""

    recommendations: tuple[tuple[float, int], ...] = ()
    scale_ups: tuple[ScaleEvent, ...] = ()
    scale_downs: tuple[ScaleEvent, ...] = ()

    def after_scale(self, spec: HPASpec, *, previous: int, replicas: int, now: float) -> Memory:
        """Record a change of replicas the controller wrote (and forget expired ones)."""
        longest = max(
            (p.period for r in (spec.scale_up, spec.scale_down) for p in r.policies), default=0
        )
        ups = tuple(e for e in self.scale_ups if e.time > now - longest)
        downs = tuple(e for e in self.scale_downs if e.time > now - longest)
        if replicas > previous:
            ups += (ScaleEvent(now, replicas - previous),)
        elif replicas < previous:
            downs += (ScaleEvent(now, previous - replicas),)
        return replace(self, scale_ups=ups, scale_downs=downs)


@dataclass(frozen=True)
class Decision:
    """One sync's outcome: the replicas to write and why."""

    replicas: int
    reason: str
    memory: Memory
    metric_replicas: int | None = None  # what the metric alone recommended
    average: float | None = None  # the counted pods' average metric value
    pods: dict[str, float] = field(default_factory=dict)  # the values counted


def parse_hpa(hpa: Mapping[str, Any]) -> HPASpec:
    """The spec of an ``autoscaling/v2`` HPA, refusing what is not emulated.

    Raises
    ------
    UnsupportedHPAError
        Not exactly one ``Pods`` metric with an ``AverageValue`` target, a
        metric selector, or no ``behavior``: the test would otherwise pass
        on an HPA the stand-in silently misreads.
    """
    spec = hpa.get("spec") or {}
    metrics = spec.get("metrics") or []
    pods_metrics = [m for m in metrics if m.get("type") == "Pods"]
    others = sorted({str(m.get("type")) for m in metrics if m.get("type") != "Pods"})
    if others or len(pods_metrics) != 1:
        raise UnsupportedHPAError(
            f"the HPA stand-in emulates exactly one Pods metric; this HPA has {len(pods_metrics)} "
            f"Pods metric(s) and {others or 'no'} other types"
        )
    pods = pods_metrics[0].get("pods") or {}
    metric = pods.get("metric") or {}
    target = pods.get("target") or {}
    if metric.get("selector"):
        raise UnsupportedHPAError(f"metric selectors are not emulated: {metric['selector']!r}")
    if target.get("type") != "AverageValue" or "averageValue" not in target:
        raise UnsupportedHPAError(f"Pods metrics need an AverageValue target, got {target!r}")
    behavior = spec.get("behavior")
    if behavior is None:
        raise UnsupportedHPAError(
            "an HPA without behavior uses the older normalisation: not emulated"
        )
    value, _ = quantity.parse(target["averageValue"])
    return HPASpec(
        min_replicas=int(spec.get("minReplicas", 1)),
        max_replicas=int(spec["maxReplicas"]),
        metric=str(metric["name"]),
        target=float(value),
        scale_up=_rules(behavior.get("scaleUp"), SCALE_UP_DEFAULT),
        scale_down=_rules(behavior.get("scaleDown"), SCALE_DOWN_DEFAULT),
    )


def _rules(rules: Mapping[str, Any] | None, default: Rules) -> Rules:
    """Fill what a direction leaves out with the API server's defaults."""
    if rules is None:
        return default
    policies = rules.get("policies")
    for policy in policies or []:
        if policy.get("type") not in {"Pods", "Percent"}:
            raise UnsupportedHPAError(f"unknown scaling policy type {policy.get('type')!r}")
    select = rules.get("selectPolicy", default.select)
    if select not in {"Max", "Min", "Disabled"}:
        raise UnsupportedHPAError(f"unknown selectPolicy {select!r}")
    return Rules(
        window=int(rules.get("stabilizationWindowSeconds", default.window)),
        select=str(select),
        policies=default.policies
        if policies is None
        else tuple(Policy(p["type"], int(p["value"]), int(p["periodSeconds"])) for p in policies),
    )


# -- 1. the metric's recommendation ----------------------------------------------


def metric_replicas(
    pods: Sequence[Pod], *, current: int, target: float, tolerance: float = DEFAULT_TOLERANCE
) -> tuple[int, float, dict[str, float]]:
    """Replicas the Pods metric asks for, the average it saw, and the values it counted.

    Raises
    ------
    NoMetricsError
        No pods, or none with a value among those that count.
    """
    if not pods:
        raise NoMetricsError("no pods returned by selector while calculating replica count")
    counted: dict[str, float] = {}
    unready: list[str] = []
    missing: list[str] = []
    for pod in pods:
        if pod.deleted or pod.phase == "Failed":
            continue
        if pod.phase == "Pending":
            unready.append(pod.name)
        elif pod.value is None:
            missing.append(pod.name)
        else:
            counted[pod.name] = pod.value
    if not counted:
        raise NoMetricsError("did not receive metrics for targeted pods (pods might be unready)")
    average = sum(counted.values()) / len(counted)
    ratio = average / target

    def within(r: float) -> bool:
        return abs(1.0 - r) <= tolerance

    scale_up_with_unready = bool(unready) and ratio > 1.0
    if not scale_up_with_unready and not missing:
        if within(ratio):
            return current, average, counted
        return math.ceil(ratio * len(counted)), average, counted
    filled = dict(counted)
    for name in missing:
        filled[name] = target if ratio < 1.0 else 0.0
    if scale_up_with_unready:
        for name in unready:
            filled[name] = 0.0
    new_ratio = sum(filled.values()) / len(filled) / target
    if within(new_ratio) or (ratio < 1.0 < new_ratio) or (ratio > 1.0 > new_ratio):
        return current, average, counted
    replicas = math.ceil(new_ratio * len(filled))
    if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
        return current, average, counted
    return replicas, average, counted


# -- 2. stabilization -------------------------------------------------------------


def stabilize(
    memory: Memory, *, spec: HPASpec, current: int, desired: int, now: float
) -> tuple[int, Memory]:
    """The stabilized recommendation, and the memory with `desired` recorded."""
    up_cutoff = now - spec.scale_up.window
    down_cutoff = now - spec.scale_down.window
    up = down = desired
    for time, recommendation in memory.recommendations:
        if time > up_cutoff:
            up = min(up, recommendation)
        if time > down_cutoff:
            down = max(down, recommendation)
    stabilized = min(max(current, up), down)
    kept = tuple(
        (t, r) for t, r in memory.recommendations if not (t < up_cutoff and t < down_cutoff)
    )
    return stabilized, replace(memory, recommendations=(*kept, (now, desired)))


# -- 3. rate ----------------------------------------------------------------------


def _changed_within(events: Sequence[ScaleEvent], period: int, now: float) -> int:
    return sum(e.change for e in events if e.time > now - period)


def scale_up_limit(memory: Memory, rules: Rules, *, current: int, now: float) -> int:
    """The most replicas the scale-up policies allow now."""
    if rules.select == "Disabled":
        return current
    proposals = []
    for policy in rules.policies:
        start = (
            current
            - _changed_within(memory.scale_ups, policy.period, now)
            + _changed_within(memory.scale_downs, policy.period, now)
        )
        if policy.kind == "Pods":
            proposals.append(start + policy.value)
        else:
            proposals.append(math.ceil(start * (1 + policy.value / 100)))
    if not proposals:
        return current
    return min(proposals) if rules.select == "Min" else max(proposals)


def scale_down_limit(memory: Memory, rules: Rules, *, current: int, now: float) -> int:
    """The fewest replicas the scale-down policies allow now."""
    if rules.select == "Disabled":
        return current
    proposals = []
    for policy in rules.policies:
        start = (
            current
            - _changed_within(memory.scale_ups, policy.period, now)
            + _changed_within(memory.scale_downs, policy.period, now)
        )
        if policy.kind == "Pods":
            proposals.append(start - policy.value)
        else:
            proposals.append(int(start * (1 - policy.value / 100)))
    if not proposals:
        return current
    return max(proposals) if rules.select == "Min" else min(proposals)


def limit_rate(
    memory: Memory, spec: HPASpec, *, current: int, desired: int, now: float
) -> tuple[int, str]:
    """`desired` within the behavior's rate and ``[minReplicas, maxReplicas]``, and why."""
    if desired > current:
        ceiling = max(scale_up_limit(memory, spec.scale_up, current=current, now=now), current)
        if spec.max_replicas <= ceiling:
            return min(desired, spec.max_replicas), (
                "TooManyReplicas" if desired > spec.max_replicas else "DesiredWithinRange"
            )
        return min(desired, ceiling), (
            "ScaleUpLimit" if desired > ceiling else "DesiredWithinRange"
        )
    if desired < current:
        floor = min(scale_down_limit(memory, spec.scale_down, current=current, now=now), current)
        if spec.min_replicas >= floor:
            return max(desired, spec.min_replicas), (
                "TooFewReplicas" if desired < spec.min_replicas else "DesiredWithinRange"
            )
        return max(desired, floor), ("ScaleDownLimit" if desired < floor else "DesiredWithinRange")
    return desired, "DesiredWithinRange"


# -- one sync ---------------------------------------------------------------------


def reconcile(
    spec: HPASpec,
    memory: Memory,
    *,
    current: int,
    pods: Sequence[Pod],
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Decision:
    """One sync of one HPA: the replicas to write, given ``/scale``'s ``spec.replicas``.

    The returned memory has this sync's recommendation; once the write of a
    changed count succeeded, record it with :meth:`Memory.after_scale`.
    """
    if not memory.recommendations:
        # So that a (re)started controller does not scale down at once.
        memory = replace(memory, recommendations=((now, current),))
    if current == 0 and spec.min_replicas != 0:
        return Decision(0, "ScalingDisabled", memory)
    if current > spec.max_replicas:
        return Decision(spec.max_replicas, "TooManyReplicas", memory)
    if current < spec.min_replicas:
        return Decision(spec.min_replicas, "TooFewReplicas", memory)
    try:
        wanted, average, counted = metric_replicas(
            pods, current=current, target=spec.target, tolerance=tolerance
        )
    except NoMetricsError:
        return Decision(current, "FailedGetPodsMetric", memory)
    stabilized, memory = stabilize(memory, spec=spec, current=current, desired=wanted, now=now)
    replicas, reason = limit_rate(memory, spec, current=current, desired=stabilized, now=now)
    if stabilized != wanted and replicas == stabilized:
        reason = "ScaleDownStabilized" if wanted < stabilized else "ScaleUpStabilized"
    return Decision(replicas, reason, memory, wanted, average, counted)
