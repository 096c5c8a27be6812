"""The pool's status block: counts from observations, and conditions decided by a table."""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewaypool.bucketmap import BucketMap, balanced_map
from gatewaypool.reports import build_report, dump_report
from gatewaypool.strict import format_time
from gatewaypool_operator.mapgateways import desired_gateways
from gatewaypool_operator.poolstatus import (
    HandoverSummary,
    compute_status,
    merge_patch,
    report_in_sync,
)
from gatewaypool_operator.spec.parse import parse_spec
from gatewaypool_operator.spec.types import PoolSpec

NAME = "ct-triage"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
EARLIER = "2026-03-01T11:00:00Z"
GENERATION = 4


def spec(replicas: int = 3, routers: int = 2) -> PoolSpec:
    return parse_spec(
        {"replicas": replicas, "gateway": {"image": "gw:1"}, "router": {"replicas": routers}},
        default_router_image="op:1",
    )


def bucket_map(count: int = 3, version: int = 7, buckets: int = 64) -> BucketMap:
    gateways = desired_gateways(name=NAME, namespace="ns", spec=spec(), count=count)
    return balanced_map(gateways, buckets=buckets, version=version)


def report(version: int) -> str:
    return dump_report(
        build_report(
            map_version=version,
            buckets=64,
            started_at=datetime(2026, 3, 1, 10, 0, 0, tzinfo=UTC),
            reported_at=datetime(2026, 3, 1, 11, 59, 0, tzinfo=UTC),
            ages={},
            open_associations={},
        )
    )


def observe(**overrides: Any) -> dict[str, Any]:
    """compute_status for a healthy pool of 3 gateways and 2 routers, with `overrides`."""
    arguments: dict[str, Any] = {
        "name": NAME,
        "spec": spec(),
        "generation": GENERATION,
        "statefulset_status": {"replicas": 3, "readyReplicas": 3},
        "bucket_map": bucket_map(),
        "router_reports": {"router-a": report(7), "router-b": report(7)},
        "live_router_pods": ["router-a", "router-b"],
        "spec_error": None,
        "previous_conditions": [],
        "now": NOW,
    } | overrides
    return compute_status(**arguments)


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def condition(
    kind: str, status: str, reason: str = "X", since: str = EARLIER, generation: int = GENERATION
) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": "",
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


# --- the fields --------------------------------------------------------------------


def test_healthy_pool_status() -> None:
    status = observe()
    current = bucket_map()
    assert {key: value for key, value in status.items() if key != "conditions"} == {
        "replicas": 3,
        "readyReplicas": 3,
        "selector": "app.kubernetes.io/instance=ct-triage,app.kubernetes.io/component=gateway",
        "observedGeneration": GENERATION,
        "mapVersion": 7,
        "routersInSync": 2,
        "routersTotal": 2,
        "routers": "2/2",
        "movingBuckets": 0,
        "handovers": {"completed": 0, "forced": 0},
        "excludedRouters": [],
        "bucketCounts": current.bucket_counts(),
    }
    assert status["bucketCounts"] == {
        "ct-triage-gw-0": 22,
        "ct-triage-gw-1": 21,
        "ct-triage-gw-2": 21,
    }
    assert conditions(status) == {
        "Ready": ("True", "AllGatewaysReady"),
        "Progressing": ("False", "UpToDate"),
        "Degraded": ("False", "AsExpected"),
    }


def test_every_field_is_present_without_anything_observed() -> None:
    """Written as a merge patch: an omitted field would keep a stale value."""
    status = observe(
        statefulset_status=None, bucket_map=None, router_reports={}, live_router_pods=[]
    )
    assert status["replicas"] == status["readyReplicas"] == 0
    assert status["mapVersion"] == 0
    assert (status["routersInSync"], status["routersTotal"], status["routers"]) == (0, 0, "0/0")
    assert (status["movingBuckets"], status["bucketCounts"]) == (0, {})


def test_routers_in_sync_counts_live_routers_on_the_current_version() -> None:
    status = observe(
        router_reports={
            "router-a": report(7),
            "router-b": report(6),  # behind
            "router-c": "not json",  # garbage counts as not in sync
            "router-d": json.dumps({"mapVersion": True}),
            "router-gone": report(7),  # pod deleted: its report is ignored
        },
        live_router_pods=["router-a", "router-b", "router-c", "router-d", "router-e"],
    )
    assert (status["routersInSync"], status["routersTotal"], status["routers"]) == (1, 5, "1/5")


def test_moving_buckets_are_counted() -> None:
    moving = dataclasses.replace(bucket_map(), moving={0: 1, 5: 0})
    status = observe(bucket_map=moving)
    assert status["movingBuckets"] == 2
    assert conditions(status)["Progressing"] == ("True", "HandingOverBuckets")


def test_statefulset_status_junk_counts_as_zero() -> None:
    status = observe(statefulset_status={"replicas": "3", "readyReplicas": None})
    assert status["replicas"] == status["readyReplicas"] == 0


# --- the conditions, by table ----------------------------------------------------------

R, P, D = "Ready", "Progressing", "Degraded"
CASES: list[tuple[str, dict[str, Any], dict[str, tuple[str, str]]]] = [
    (
        "healthy",
        {},
        {R: ("True", "AllGatewaysReady"), P: ("False", "UpToDate"), D: ("False", "AsExpected")},
    ),
    (
        "new pool, nothing exists yet",
        {"statefulset_status": None, "bucket_map": None, "router_reports": {}},
        {
            R: ("False", "MapNotPublished"),
            P: ("True", "ScalingGateways"),
            D: ("False", "AsExpected"),
        },
    ),
    (
        "gateways starting",
        {"statefulset_status": {"replicas": 3, "readyReplicas": 1}},
        {
            R: ("False", "GatewaysNotReady"),
            P: ("True", "ScalingGateways"),
            D: ("False", "AsExpected"),
        },
    ),
    (
        "scaling up: StatefulSet not grown yet",
        {"spec": spec(4), "bucket_map": bucket_map(4, 8)},
        {
            R: ("False", "GatewaysNotReady"),
            P: ("True", "ScalingGateways"),
            D: ("False", "AsExpected"),
        },
    ),
    (
        "scaling up: pods ready, map not yet updated",
        {"spec": spec(4), "statefulset_status": {"replicas": 4, "readyReplicas": 4}},
        {
            R: ("True", "AllGatewaysReady"),
            P: ("True", "ScalingGateways"),
            D: ("False", "AsExpected"),
        },
    ),
    (
        "scaling down: StatefulSet still larger",
        {
            "spec": spec(2),
            "bucket_map": bucket_map(2, 8),
            "router_reports": {"router-a": report(8), "router-b": report(8)},
        },
        {
            R: ("True", "AllGatewaysReady"),
            P: ("True", "ScalingGateways"),
            D: ("False", "AsExpected"),
        },
    ),
    (
        "a router behind",
        {"router_reports": {"router-a": report(7), "router-b": report(6)}},
        {
            R: ("True", "AllGatewaysReady"),
            P: ("True", "RoutersUpdating"),
            D: ("False", "AsExpected"),
        },
    ),
    (
        "fewer router pods than wanted",
        {"live_router_pods": ["router-a"]},
        {
            R: ("True", "AllGatewaysReady"),
            P: ("True", "RoutersUpdating"),
            D: ("False", "AsExpected"),
        },
    ),
    (
        "no router on the current map",
        {"router_reports": {"router-a": report(6)}},
        {
            R: ("False", "RoutersNotReady"),
            P: ("True", "RoutersUpdating"),
            D: ("False", "AsExpected"),
        },
    ),
    (
        "no router at all",
        {"router_reports": {}, "live_router_pods": []},
        {
            R: ("False", "RoutersNotReady"),
            P: ("True", "RoutersUpdating"),
            D: ("False", "AsExpected"),
        },
    ),
    (
        "scaled to zero",
        {"spec": spec(0), "statefulset_status": {"replicas": 0}},
        {R: ("False", "ScaledToZero"), P: ("False", "UpToDate"), D: ("False", "AsExpected")},
    ),
    (
        "new spec rejected, old one runs",
        {"spec_error": "spec.replicas: 5000 exceeds spec.buckets (4096)"},
        {R: ("True", "AllGatewaysReady"), P: ("False", "UpToDate"), D: ("True", "SpecRejected")},
    ),
    (
        "first spec rejected",
        {
            "spec": None,
            "spec_error": "spec.gateway.image: is required",
            "statefulset_status": None,
            "bucket_map": None,
        },
        {R: ("False", "SpecRejected"), P: ("False", "SpecRejected"), D: ("True", "SpecRejected")},
    ),
    (
        "gateway lost while ready at this generation",
        {
            "statefulset_status": {"replicas": 3, "readyReplicas": 2},
            "previous_conditions": [condition(R, "True")],
        },
        {
            R: ("False", "GatewaysNotReady"),
            P: ("True", "ScalingGateways"),
            D: ("True", "GatewaysUnavailable"),
        },
    ),
    (
        "gateways short after a spec change: still starting",
        {
            "statefulset_status": {"replicas": 3, "readyReplicas": 2},
            "previous_conditions": [condition(R, "True", generation=GENERATION - 1)],
        },
        {
            R: ("False", "GatewaysNotReady"),
            P: ("True", "ScalingGateways"),
            D: ("False", "AsExpected"),
        },
    ),
    (
        "gateways unavailable stays until they are back",
        {
            "statefulset_status": {"replicas": 3, "readyReplicas": 2},
            "previous_conditions": [
                condition(R, "False", generation=GENERATION - 1),
                condition(D, "True", "GatewaysUnavailable", generation=GENERATION - 1),
            ],
        },
        {
            R: ("False", "GatewaysNotReady"),
            P: ("True", "ScalingGateways"),
            D: ("True", "GatewaysUnavailable"),
        },
    ),
    (
        "gateways back: no longer degraded",
        {"previous_conditions": [condition(D, "True", "GatewaysUnavailable")]},
        {R: ("True", "AllGatewaysReady"), P: ("False", "UpToDate"), D: ("False", "AsExpected")},
    ),
    (
        "progressing past the deadline with gateways short",
        {
            "statefulset_status": {"replicas": 3, "readyReplicas": 0},
            "previous_conditions": [
                condition(P, "True", "ScalingGateways", format_time(NOW - timedelta(seconds=600)))
            ],
        },
        {
            R: ("False", "GatewaysNotReady"),
            P: ("True", "ScalingGateways"),
            D: ("True", "GatewaysUnavailable"),
        },
    ),
    (
        "progressing within the deadline",
        {
            "statefulset_status": {"replicas": 3, "readyReplicas": 0},
            "previous_conditions": [
                condition(P, "True", "ScalingGateways", format_time(NOW - timedelta(seconds=599)))
            ],
        },
        {
            R: ("False", "GatewaysNotReady"),
            P: ("True", "ScalingGateways"),
            D: ("False", "AsExpected"),
        },
    ),
    (
        "spec rejected beats gateways unavailable",
        {
            "spec_error": "spec.router.port: 0 is less than 1",
            "statefulset_status": {"replicas": 3, "readyReplicas": 2},
            "previous_conditions": [condition(R, "True")],
        },
        {
            R: ("False", "GatewaysNotReady"),
            P: ("True", "ScalingGateways"),
            D: ("True", "SpecRejected"),
        },
    ),
]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_conditions(overrides: dict[str, Any], expected: dict[str, tuple[str, str]]) -> None:
    status = observe(**overrides)
    assert conditions(status) == expected
    assert [c["type"] for c in status["conditions"]] == ["Ready", "Progressing", "Degraded"]
    for entry in status["conditions"]:
        assert set(entry) == {
            "type",
            "status",
            "reason",
            "message",
            "lastTransitionTime",
            "observedGeneration",
        }
        assert re.fullmatch(r"(?:[A-Z][a-z]+)+", entry["reason"]), entry["reason"]
        assert entry["message"]
        assert entry["observedGeneration"] == GENERATION


def test_spec_rejected_message_is_the_error() -> None:
    error = "spec.replicas: 5000 exceeds spec.buckets (4096)"
    degraded = observe(spec_error=error)["conditions"][2]
    assert degraded["message"] == error


def test_messages_give_the_numbers() -> None:
    status = observe(statefulset_status={"replicas": 3, "readyReplicas": 1})
    ready, progressing, _ = status["conditions"]
    assert "1 of 3 gateways ready" in ready["message"]
    assert "3 exist, 1 ready" in progressing["message"]


# --- transition times ---------------------------------------------------------------


def test_transition_time_is_kept_while_the_status_stays() -> None:
    previous = [condition(R, "True"), condition(P, "False"), condition(D, "False")]
    status = observe(previous_conditions=previous)
    assert [c["lastTransitionTime"] for c in status["conditions"]] == [EARLIER] * 3


def test_transition_time_is_kept_when_only_the_reason_changes() -> None:
    previous = [condition(P, "True", "ScalingGateways")]
    status = observe(
        router_reports={"router-a": report(7), "router-b": report(6)},
        previous_conditions=previous,
    )
    progressing = status["conditions"][1]
    assert (progressing["reason"], progressing["lastTransitionTime"]) == (
        "RoutersUpdating",
        EARLIER,
    )


def test_transition_time_is_now_when_the_status_changes() -> None:
    previous = [condition(R, "False"), condition(P, "True"), condition(D, "True")]
    status = observe(previous_conditions=previous)
    times = [c["lastTransitionTime"] for c in status["conditions"]]
    assert times == ["2026-03-01T12:00:00.000000Z"] * 3


def test_unreadable_previous_conditions_are_ignored() -> None:
    previous: list[Any] = [
        "junk",
        {"status": "True"},
        condition(R, "True", since="yesterday"),
        {"type": P, "status": "False", "lastTransitionTime": 5},
    ]
    status = observe(previous_conditions=previous)
    times = [c["lastTransitionTime"] for c in status["conditions"]]
    assert times == ["2026-03-01T12:00:00.000000Z"] * 3


def test_now_must_be_timezone_aware() -> None:
    with pytest.raises(ValueError, match="naive"):
        observe(now=datetime(2026, 3, 1, 12, 0, 0))


def test_status_is_a_function_of_its_arguments() -> None:
    assert observe() == observe()
    assert json.loads(json.dumps(observe())) == observe()


# --- router reports -------------------------------------------------------------------


def test_a_report_is_in_sync_only_on_the_exact_version() -> None:
    assert report_in_sync(report(7), 7)
    assert not report_in_sync(report(6), 7)
    assert not report_in_sync(None, 7)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "null",
        "[]",
        "7",
        '{"mapVersion": 7}',  # the old format, or a report cut short
        '{"mapVersion": "7", "buckets": 64}',
    ],
)
def test_unusable_router_reports_are_not_in_sync(text: str) -> None:
    assert not report_in_sync(text, 7)


def test_handover_progress_and_totals() -> None:
    status = observe(
        handover=HandoverSummary(
            oldest_move_since=NOW - timedelta(seconds=12.7),
            completed=40,
            forced=2,
            excluded_routers=("router-b",),
        )
    )
    assert status["oldestMoveSince"] == format_time(NOW - timedelta(seconds=12.7))
    assert status["handovers"] == {"completed": 40, "forced": 2}
    assert status["excludedRouters"] == ["router-b"]
    idle = observe()
    assert "oldestMoveSince" not in idle
    assert idle["handovers"] == {"completed": 0, "forced": 0}


# --- merge patch ------------------------------------------------------------------------


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies a merge patch (written from the RFC)."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge_patch(result.get(key), value)
    return result


def test_merge_patch_removes_gateways_gone_from_bucket_counts() -> None:
    old = observe()
    new = observe(spec=spec(2), bucket_map=bucket_map(2, 8))
    patch = merge_patch(old=old, new=new)
    assert patch["bucketCounts"]["ct-triage-gw-2"] is None
    assert apply_merge_patch(old, patch) == new


JSON_VALUES = st.recursive(
    st.integers(-3, 3) | st.text(max_size=3) | st.booleans(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=10,
)
DOCUMENTS = st.dictionaries(st.text(max_size=3), JSON_VALUES, max_size=4)


@given(old=DOCUMENTS, new=DOCUMENTS)
def test_merge_patch_turns_old_into_new(old: dict[str, Any], new: dict[str, Any]) -> None:
    assert apply_merge_patch(old, merge_patch(old=old, new=new)) == new


def test_merge_patch_from_nothing_is_the_document() -> None:
    assert merge_patch(old=None, new={"a": {"b": [1]}}) == {"a": {"b": [1]}}


# --- autoscaling -------------------------------------------------------------------


def autoscaled_spec(replicas: int = 3) -> PoolSpec:
    return parse_spec(
        {
            "replicas": replicas,
            "gateway": {"image": "gw:1"},
            "autoscaling": {
                "minReplicas": 2,
                "maxReplicas": 8,
                "targets": {"studiesInFlight": 4},
            },
        },
        default_router_image="op:1",
    )


def hpa_status(**conditions_by_type: tuple[str, str, str]) -> dict[str, Any]:
    """An autoscaling/v2 status with conditions given as type=(status, reason, message)."""
    return {
        "currentReplicas": 3,
        "desiredReplicas": 3,
        "conditions": [
            {"type": kind, "status": status, "reason": reason, "message": message}
            for kind, (status, reason, message) in conditions_by_type.items()
        ],
    }


HEALTHY_HPA = hpa_status(
    AbleToScale=("True", "ReadyForNewScale", "recommended size matches current size"),
    ScalingActive=("True", "ValidMetricFound", "the HPA was able to compute the replica count"),
    ScalingLimited=("True", "TooFewReplicas", "the desired replica count is less than min"),
)


def test_an_autoscaled_pool_shows_its_range() -> None:
    status = observe(spec=autoscaled_spec(), autoscaler_status=HEALTHY_HPA)
    assert status["autoscaling"] == "2-8"
    assert conditions(status)["Degraded"] == ("False", "AsExpected")


def test_a_pool_without_autoscaling_has_no_range_and_ignores_a_stray_autoscaler() -> None:
    stuck = hpa_status(ScalingActive=("False", "FailedGetPodsMetric", "no metrics"))
    status = observe(autoscaler_status=stuck)
    assert "autoscaling" not in status
    assert conditions(status)["Degraded"] == ("False", "AsExpected")
    # The merge patch deletes the field once autoscaling is gone.
    assert merge_patch(old={"autoscaling": "2-8"}, new=status)["autoscaling"] is None


@pytest.mark.parametrize(
    ("kind", "reason", "message"),
    [
        (
            "ScalingActive",
            "FailedGetPodsMetric",
            "unable to get metric gatewaypool_studies_in_flight: no metrics returned",
        ),
        ("ScalingActive", "FailedGetResourceMetric", "missing request for cpu"),
        ("AbleToScale", "FailedGetScale", "the HPA controller was unable to get the scale"),
    ],
)
def test_an_autoscaler_that_cannot_scale_degrades_the_pool(
    kind: str, reason: str, message: str
) -> None:
    stuck = hpa_status(**{kind: ("False", reason, message)})
    status = observe(spec=autoscaled_spec(), autoscaler_status=stuck)
    [degraded] = [c for c in status["conditions"] if c["type"] == "Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "AutoscalerNotScaling")
    assert degraded["message"] == (
        f"the HorizontalPodAutoscaler does not scale the pool: {kind} is False ({reason}): "
        f"{message}"
    )
    # The pool itself still routes: Ready says so.
    assert conditions(status)["Ready"] == ("True", "AllGatewaysReady")


@pytest.mark.parametrize("autoscaler_status", [None, {}, {"conditions": None}, HEALTHY_HPA])
def test_an_autoscaler_without_news_degrades_nothing(autoscaler_status: Any) -> None:
    status = observe(spec=autoscaled_spec(), autoscaler_status=autoscaler_status)
    assert conditions(status)["Degraded"] == ("False", "AsExpected")


def test_both_autoscaler_problems_are_told_and_a_refused_spec_comes_first() -> None:
    stuck = hpa_status(
        AbleToScale=("False", "FailedGetScale", ""),
        ScalingActive=("False", "ScalingDisabled", "scaling is disabled"),
    )
    status = observe(spec=autoscaled_spec(), autoscaler_status=stuck)
    [degraded] = [c for c in status["conditions"] if c["type"] == "Degraded"]
    assert degraded["message"].endswith(
        "AbleToScale is False (FailedGetScale); ScalingActive is False (ScalingDisabled): "
        "scaling is disabled"
    )
    refused = observe(spec=autoscaled_spec(), autoscaler_status=stuck, spec_error="spec.x: bad")
    assert conditions(refused)["Degraded"] == ("True", "SpecRejected")
