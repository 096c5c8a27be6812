"""The HPA stand-in's arithmetic: each documented rule by example, then long random histories.

The end-to-end autoscaling test trusts this stand-in to behave like
Kubernetes' controller; these tests pin it to the documented algorithm
(replica count, tolerance, missing and unready pods, stabilization windows,
behavior policies, clamping) and check, over random metric histories, the
promises the pool relies on: replicas never leave ``[min, max]``, never fall
faster than the scale-down policy allows, and fall only below what every
recommendation of the window asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.hpa_algorithm import (
    HPASpec,
    Memory,
    Pod,
    Policy,
    Rules,
    UnsupportedHPAError,
    metric_replicas,
    parse_hpa,
    reconcile,
)

#: The behavior the operator renders (the shared contract of issue 10).
SCALE_UP = Rules(0, "Max", (Policy("Percent", 100, 15), Policy("Pods", 4, 15)))


def scale_down(window: int = 10, period: int = 3) -> Rules:
    return Rules(window, "Min", (Policy("Pods", 1, period),))


def spec(
    *,
    low: int = 1,
    high: int = 4,
    target: float = 2.0,
    up: Rules = SCALE_UP,
    down: Rules | None = None,
) -> HPASpec:
    return HPASpec(low, high, "gatewaypool_studies_in_flight", target, up, down or scale_down())


def running(*values: float | None) -> list[Pod]:
    return [Pod(f"ct-gw-{i}", "Running", value=v) for i, v in enumerate(values)]


def rendered_hpa(**behavior: Any) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "spec": {
            "scaleTargetRef": {"apiVersion": "gatewaypool.io/v1alpha1", "kind": "GatewayPool"},
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "gatewaypool_studies_in_flight"},
                        "target": {"type": "AverageValue", "averageValue": "1500m"},
                    },
                }
            ],
            "behavior": behavior,
        },
    }


# -- the metric's recommendation ---------------------------------------------------


def test_replicas_are_the_ratio_of_average_to_target_rounded_up() -> None:
    # The documented example: 200m against a 100m target doubles the pods.
    assert metric_replicas(running(0.2), current=1, target=0.1)[0] == 2
    assert metric_replicas(running(5, 4, 3), current=3, target=2)[0] == 6  # ceil(12 / 2)
    assert metric_replicas(running(1, 0, 0, 0), current=4, target=2)[0] == 1


def test_a_ratio_within_the_tolerance_changes_nothing() -> None:
    assert metric_replicas(running(2.1, 2.1), current=2, target=2)[0] == 2  # 1.05: within
    assert metric_replicas(running(2.3, 2.3), current=2, target=2)[0] == 3  # 1.15: outside
    assert metric_replicas(running(1.9, 1.9), current=2, target=2)[0] == 2
    assert metric_replicas(running(1.7, 1.7), current=2, target=2)[0] == 2  # ceil(1.7)


def test_a_missing_pod_counts_as_the_target_on_a_scale_down() -> None:
    # Counted alone: average 1 against 4 -> 1 pod. With the missing pod at
    # the target: (1 + 1 + 4) / 3 / 4 -> ceil(0.5 * 3) = 2.
    assert metric_replicas(running(1, 1, None), current=3, target=4)[0] == 2


def test_a_missing_pod_counts_as_zero_on_a_scale_up_and_may_cancel_it() -> None:
    # 2.3 against 2 asks for more; with the missing pod at 0 the average is
    # below the target: the direction would turn, so nothing changes.
    assert metric_replicas(running(2.3, None), current=2, target=2)[0] == 2
    assert metric_replicas(running(6, None), current=2, target=2)[0] == 3


def test_pending_pods_count_as_zero_on_a_scale_up_only() -> None:
    pending = Pod("ct-gw-1", "Pending")
    assert metric_replicas([*running(2.3), pending], current=2, target=2)[0] == 2
    assert metric_replicas([*running(9), pending], current=2, target=2)[0] == 5
    # Scaling down, a pending pod neither counts nor holds the others up.
    assert metric_replicas([*running(0.5), pending], current=2, target=2)[0] == 1


def test_deleted_and_failed_pods_are_ignored() -> None:
    pods = [
        *running(4),
        Pod("ct-gw-1", "Running", deleted=True, value=0),
        Pod("ct-gw-2", "Failed", value=0),
    ]
    assert metric_replicas(pods, current=3, target=2)[0] == 2


def test_without_any_value_the_controller_leaves_the_replicas_alone() -> None:
    decision = reconcile(spec(), Memory(), current=3, pods=[Pod("ct-gw-0", "Pending")], now=0)
    assert (decision.replicas, decision.reason) == (3, "FailedGetPodsMetric")
    assert reconcile(spec(), Memory(), current=3, pods=[], now=0).replicas == 3


# -- clamping, stabilization, rate -------------------------------------------------


def test_a_target_outside_min_max_is_brought_back_and_zero_means_disabled() -> None:
    assert reconcile(spec(), Memory(), current=9, pods=running(0), now=0).replicas == 4
    assert reconcile(spec(low=2), Memory(), current=1, pods=running(9), now=0).replicas == 2
    assert reconcile(spec(), Memory(), current=0, pods=[], now=0).replicas == 0
    assert reconcile(spec(), Memory(), current=4, pods=running(99, 99, 99, 99), now=0).replicas == 4
    assert reconcile(spec(), Memory(), current=1, pods=running(0), now=0).replicas == 1


def test_a_scale_down_waits_for_the_whole_window_then_goes_one_per_period() -> None:
    hpa = spec(down=scale_down(window=10, period=3))
    memory, current, seen = Memory(), 4, []
    for now in range(30):
        load = 8.0 if now < 2 else 0.0
        decision = reconcile(hpa, memory, current=current, pods=running(*[load] * current), now=now)
        memory = decision.memory.after_scale(
            hpa, previous=current, replicas=decision.replicas, now=now
        )
        current = decision.replicas
        seen.append(current)
    # High until t=1 (recommendation 4 at t=1), so nothing below 4 until t=11;
    # then one gateway every 3 s.
    assert seen[:11] == [4] * 11
    assert seen[11:21] == [3, 3, 3, 2, 2, 2, 1, 1, 1, 1]


def test_the_first_sync_remembers_the_current_replicas() -> None:
    # A controller that (re)starts on an idle pool of 4 does not drop it at once.
    decision = reconcile(spec(), Memory(), current=4, pods=running(0, 0, 0, 0), now=100)
    assert decision.replicas == 4
    assert decision.reason == "ScaleDownStabilized"
    assert decision.metric_replicas == 0


def test_scale_up_follows_the_policy_allowing_most_or_least() -> None:
    load = running(40)  # asks for 20 pods
    assert reconcile(spec(high=8), Memory(), current=1, pods=load, now=0).replicas == 5  # +4
    least = Rules(0, "Min", SCALE_UP.policies)
    assert reconcile(spec(high=8, up=least), Memory(), current=1, pods=load, now=0).replicas == 2
    off = Rules(0, "Disabled", SCALE_UP.policies)
    assert reconcile(spec(high=8, up=off), Memory(), current=1, pods=load, now=0).replicas == 1


def test_scale_up_counts_what_was_added_within_the_period() -> None:
    hpa = spec(high=20)
    memory = Memory().after_scale(hpa, previous=1, replicas=5, now=0)
    busy = running(*[40.0] * 5)
    assert reconcile(hpa, memory, current=5, pods=busy, now=10).replicas == 5  # period from 1
    assert reconcile(hpa, memory, current=5, pods=busy, now=15).replicas == 10  # expired: 5 * 2


def test_percent_policies_round_up_when_adding_and_truncate_when_removing() -> None:
    percent = (Policy("Percent", 50, 60),)
    hpa = spec(high=10, up=Rules(0, "Max", percent), down=Rules(0, "Max", percent))
    # 5 * 1.5 = 7.5 -> 8; 5 * 0.5 = 2.5 -> 2.
    assert reconcile(hpa, Memory(), current=5, pods=running(*[9.0] * 5), now=0).replicas == 8
    idle = running(*[0.0] * 5)
    assert reconcile(hpa, Memory(), current=5, pods=idle, now=0).replicas == 2


def test_parse_hpa_reads_what_the_operator_renders() -> None:
    parsed = parse_hpa(
        rendered_hpa(
            scaleUp={
                "stabilizationWindowSeconds": 0,
                "selectPolicy": "Max",
                "policies": [
                    {"type": "Percent", "value": 100, "periodSeconds": 15},
                    {"type": "Pods", "value": 4, "periodSeconds": 15},
                ],
            },
            scaleDown={
                "stabilizationWindowSeconds": 10,
                "selectPolicy": "Min",
                "policies": [{"type": "Pods", "value": 1, "periodSeconds": 3}],
            },
        )
    )
    assert parsed == HPASpec(1, 4, "gatewaypool_studies_in_flight", 1.5, SCALE_UP, scale_down())


def test_parse_hpa_fills_left_out_behavior_with_the_api_servers_defaults() -> None:
    parsed = parse_hpa(rendered_hpa(scaleDown={"stabilizationWindowSeconds": 60}))
    assert parsed.scale_up == Rules(0, "Max", (Policy("Pods", 4, 15), Policy("Percent", 100, 15)))
    assert parsed.scale_down == Rules(60, "Max", (Policy("Percent", 100, 15),))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda h: h["spec"]["metrics"].append({"type": "Resource"}), "Resource"),
        (lambda h: h["spec"].update(metrics=[]), "0 Pods metric"),
        (lambda h: h["spec"].pop("behavior"), "without behavior"),
        (
            lambda h: h["spec"]["metrics"][0]["pods"]["target"].update(type="Value"),
            "AverageValue",
        ),
        (
            lambda h: h["spec"]["metrics"][0]["pods"]["metric"].update(selector={"a": "b"}),
            "selector",
        ),
    ],
)
def test_parse_hpa_refuses_what_it_does_not_emulate(change: Any, message: str) -> None:
    hpa = rendered_hpa(scaleDown={})
    change(hpa)
    with pytest.raises(UnsupportedHPAError, match=message):
        parse_hpa(hpa)


# -- properties over random histories ----------------------------------------------

specs = st.builds(
    lambda low, extra, target, window, period, value, select: spec(
        low=low,
        high=low + extra,
        target=target,
        down=Rules(window, select, (Policy("Pods", value, period),)),
    ),
    st.integers(1, 3),
    st.integers(0, 6),
    st.sampled_from([0.5, 1.0, 2.0, 3.0]),
    st.integers(0, 40),
    st.integers(1, 15),
    st.integers(1, 2),
    st.sampled_from(["Min", "Max"]),
)
#: Phases of load, as a day has them: each (total load over all pods,
#: syncs, seconds between them, pods without a value, pods still Pending).
phases = st.lists(
    st.tuples(
        st.one_of(st.just(0.0), st.floats(0, 4), st.floats(0, 40)),
        st.integers(1, 12),
        st.sampled_from([0.5, 1.0, 3.0, 15.0]),
        st.integers(0, 2),
        st.integers(0, 1),
    ),
    min_size=1,
    max_size=8,
)


def simulate(
    hpa: HPASpec, start: int, history: Sequence[tuple[float, int, float, int, int]]
) -> list[tuple[float, int, int, int | None]]:
    """Run the controller: [(time, replicas before, replicas after, metric recommendation)]."""
    memory, current, now, runs = Memory(), start, 0.0, []
    for load, count, gap, missing, pending in history:
        for _ in range(count):
            now += gap
            pods = [
                Pod(f"ct-gw-{i}", "Pending")
                if i >= current - pending
                else Pod(f"ct-gw-{i}", "Running", value=None if i < missing else load / current)
                for i in range(current)
            ]
            decision = reconcile(hpa, memory, current=current, pods=pods, now=now)
            runs.append((now, current, decision.replicas, decision.metric_replicas))
            memory = decision.memory.after_scale(
                hpa, previous=current, replicas=decision.replicas, now=now
            )
            current = decision.replicas
    return runs


@given(specs, st.integers(1, 12), phases)
def test_replicas_never_leave_min_max(hpa: HPASpec, start: int, history: Any) -> None:
    runs = simulate(hpa, start, history)
    assert all(hpa.min_replicas <= after <= hpa.max_replicas for _, _, after, _ in runs)


@given(specs, st.integers(1, 8), phases)
def test_no_more_is_removed_per_period_than_the_policy_allows(
    hpa: HPASpec, start: int, history: Any
) -> None:
    start = min(max(start, hpa.min_replicas), hpa.max_replicas)
    runs = simulate(hpa, start, history)
    [policy] = hpa.scale_down.policies
    # Counted as the controller counts: at each scale-down, over the period
    # ending there (a scale-up within it raises what may be removed).
    for now, before, after, _ in runs:
        if after < before:
            changes = [(a - b) for t, b, a, _ in runs if now - policy.period < t <= now]
            assert -sum(changes) <= policy.value, (now, changes)


@given(specs, st.integers(1, 8), phases)
def test_a_scale_down_comes_only_after_its_window_asked_for_it(
    hpa: HPASpec, start: int, history: Any
) -> None:
    start = min(max(start, hpa.min_replicas), hpa.max_replicas)
    runs = simulate(hpa, start, history)
    # What the controller was asked at each sync (on the first, also to stay put).
    asked = [(runs[0][0], start)] + [(t, m) for t, _, _, m in runs if m is not None]
    for now, before, after, own in runs:
        if after < before:
            window = [m for t, m in asked if now - hpa.scale_down.window < t <= now]
            window += [] if own is None else [own]
            assert all(m <= after for m in window), (now, after, window)
