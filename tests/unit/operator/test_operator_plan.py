"""A reconcile pass's decisions, from plain observations: no API server, no cluster.

Each test builds an `Observed` from small dicts (the objects as the API
would return them), asks `plan` what the pass does and, where the writes'
results matter, `finish` what follows from them. The passes of a scale-down
are chained: each pass observes what the one before wrote, as the operator
would read it back.
"""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from gatewaypool.bucketmap import (
    BucketMap,
    Readiness,
    balanced_map,
    dump_map,
    parse_map,
    parse_readiness,
)
from gatewaypool.contract import MAP_KEY, READINESS_KEY
from gatewaypool.reports import build_report, dump_report
from gatewaypool_operator.apply import apply
from gatewaypool_operator.children.names import selector_labels
from gatewaypool_operator.conditions import ConditionReason
from gatewaypool_operator.events import Reason
from gatewaypool_operator.handover.state import STATE_KEY
from gatewaypool_operator.kubeapply import Applied, Cluster, ConflictError, RefusedError
from gatewaypool_operator.mapgateways import desired_gateways
from gatewaypool_operator.passdata import ApplyResult, Observed, Outcome, Plan, Prune, Write
from gatewaypool_operator.plan import ACCEPTED_SPEC_ANNOTATION, finish, plan
from gatewaypool_operator.spec.parse import parse_spec

NAME, NS, UID = "ct", "radiology", "uid-of-ct"
ROUTER_IMAGE = "gatewaypool:1"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
EARLIER = "2026-03-01T11:00:00Z"
SPEC: dict[str, Any] = {"replicas": 2, "buckets": 12, "gateway": {"image": "gw:1"}}
AUTOSCALING = {"maxReplicas": 4, "targets": {"studiesInFlight": 5}}

#: What a new pool's pass writes, in this order (what an object refers to first).
CHILDREN = [
    ("ServiceAccount", "ct-router"),
    ("Role", "ct-router"),
    ("RoleBinding", "ct-router"),
    ("ConfigMap", "ct-map"),
    ("Service", "ct-gw"),
    ("StatefulSet", "ct-gw"),
    ("NetworkPolicy", "ct-gw"),
    ("NetworkPolicy", "ct-router"),
    ("PodDisruptionBudget", "ct-gw"),
    ("Deployment", "ct-router"),
    ("PodDisruptionBudget", "ct-router"),
    ("Service", "ct-router"),
    ("ConfigMap", "ct-routers"),
]


# --- observations, as the API returns them ---------------------------------------------


def pool(
    spec: dict[str, Any] | None = None,
    *,
    status: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "gatewaypool.io/v1alpha1",
        "kind": "GatewayPool",
        "metadata": {
            "name": NAME,
            "namespace": NS,
            "uid": UID,
            "generation": 3,
            "annotations": annotations or {},
        },
        "spec": SPEC if spec is None else spec,
        "status": status or {},
    }


def gateway_pod(ordinal: int, *, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"ct-gw-{ordinal}",
            "labels": selector_labels(NAME, "gateway"),
            "creationTimestamp": EARLIER,
        },
        "spec": {
            "containers": [{"name": "gateway", "ports": [{"name": "dicom", "containerPort": 104}]}]
        },
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": EARLIER,
                }
            ]
        },
    }


def router_pod(name: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": selector_labels(NAME, "router"),
            "creationTimestamp": EARLIER,
        }
    }


def report(version: int, *, at: datetime | None = None) -> str:
    return dump_report(
        build_report(
            map_version=version,
            buckets=12,
            started_at=NOW - timedelta(hours=1),
            reported_at=NOW - timedelta(seconds=1) if at is None else at,
            ages={},
            open_associations={},
        )
    )


def published(gateways: int, *, version: int = 3) -> dict[str, Any]:
    """The ``ct-map`` ConfigMap with a balanced map over `gateways` gateways."""
    spec = parse_spec(SPEC, default_router_image=ROUTER_IMAGE)
    listed = desired_gateways(name=NAME, namespace=NS, spec=spec, count=gateways)
    bucket_map = balanced_map(listed, buckets=12, version=version)
    return {
        "metadata": {"name": "ct-map", "namespace": NS, "resourceVersion": "41"},
        "data": {MAP_KEY: dump_map(bucket_map)},
    }


def statefulset(replicas: int, *, ready: int | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "ct-gw", "namespace": NS, "resourceVersion": "17"},
        "spec": {"replicas": replicas},
        "status": {"replicas": replicas, "readyReplicas": replicas if ready is None else ready},
    }


def owned(kind: str, name: str, *, uid: str = UID, status: Any = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "kind": kind,
        "metadata": {"name": name, "namespace": NS, "ownerReferences": [{"uid": uid}]},
    }
    if status is not None:
        obj["status"] = status
    return obj


def decide(observed: Observed, *, now: datetime = NOW) -> Plan:
    return plan(observed, default_router_image=ROUTER_IMAGE, now=now)


# --- reading a plan ---------------------------------------------------------------------


def targets(decided: Plan) -> list[tuple[str, str]]:
    return [(str(w.obj["kind"]), str(w.obj["metadata"]["name"])) for w in decided.writes]


def write_of(decided: Plan, kind: str, name: str) -> Write | None:
    found = [
        w for w in decided.writes if (w.obj["kind"], w.obj["metadata"]["name"]) == (kind, name)
    ]
    assert len(found) <= 1
    return found[0] if found else None


def sts_replicas(decided: Plan) -> int:
    write = write_of(decided, "StatefulSet", "ct-gw")
    assert write is not None
    return int(write.obj["spec"]["replicas"])


def map_written(decided: Plan) -> BucketMap | None:
    """The map the pass publishes (None: the ConfigMap is not written, or has no map)."""
    write = write_of(decided, "ConfigMap", "ct-map")
    data = (write.obj.get("data") or {}) if write is not None else {}
    return parse_map(data[MAP_KEY]) if MAP_KEY in data else None


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def reasons(decided: Plan) -> list[str]:
    return [event.reason for event in decided.events]


# --- a new pool -------------------------------------------------------------------------


def test_a_new_pool_creates_its_children_owned_by_it() -> None:
    decided = decide(Observed(pool()))

    assert targets(decided) == CHILDREN
    for write in decided.writes:
        assert [ref["uid"] for ref in write.obj["metadata"]["ownerReferences"]] == [UID]
        assert write.obj["metadata"]["namespace"] == NS
    assert decided.namespace == NS
    assert decided.prune is None and decided.deletes == ()
    assert decided.accepted_spec is not None and '"replicas":2' in decided.accepted_spec


def test_a_new_pool_has_no_map_until_a_gateway_is_ready() -> None:
    decided = decide(Observed(pool()))

    # Created empty, only if still absent: the first version must not overwrite another.
    map_write = write_of(decided, "ConfigMap", "ct-map")
    assert map_write == Write(map_write.obj, conditional=True, base=None, exclusive=True)
    assert not map_write.obj.get("data")
    assert sts_replicas(decided) == 2
    sts = write_of(decided, "StatefulSet", "ct-gw")
    assert sts is not None and sts.conditional and sts.base is None
    reports = write_of(decided, "ConfigMap", "ct-routers")
    assert reports is not None and reports.create_only and not reports.conditional
    assert decided.events == ()
    assert conditions(decided.status)["Ready"] == ("False", "MapNotPublished")
    assert decided.status["mapVersion"] == 0

    # The next pass: gateway 0 is Ready, 1 not yet: the first map lists both.
    observed = Observed(
        pool(),
        map_configmap={"metadata": {"name": "ct-map", "resourceVersion": "5"}, "data": {}},
        statefulset=statefulset(2, ready=1),
        gateway_pods=[gateway_pod(0), gateway_pod(1, ready=False)],
    )
    decided = decide(observed)
    first = map_written(decided)
    assert first is not None and first.version == 1 and len(first.gateways) == 2
    assert set(first.owners) == {0}  # only the Ready gateway takes buckets
    map_write = write_of(decided, "ConfigMap", "ct-map")
    assert map_write is not None and map_write.base is observed.map_configmap
    assert STATE_KEY in map_write.obj["data"]
    assert reasons(decided) == ["BucketMapPublished"]
    assert decided.status["mapVersion"] == 1


# --- gateway readiness, beside the map -------------------------------------------------


def map_data(decided: Plan) -> dict[str, str]:
    write = write_of(decided, "ConfigMap", "ct-map")
    assert write is not None
    return dict(write.obj["data"])


def readiness_written(decided: Plan) -> Readiness | None:
    """The readiness the pass writes beside the map (None: the ConfigMap is not written)."""
    write = write_of(decided, "ConfigMap", "ct-map")
    if write is None:
        return None
    return parse_readiness(write.obj["data"][READINESS_KEY])


def test_a_gateway_not_ready_is_marked_beside_the_map_with_no_new_version_or_event() -> None:
    """Readiness flaps publish no version and post no Event; only news is written."""
    spool = {**SPEC, "router": {"spool": {"size": "1Gi"}}}
    ready = Observed(
        pool(spool, status={"mapVersion": 3}),
        map_configmap=published(2),
        statefulset=statefulset(2),
        gateway_pods=[gateway_pod(0), gateway_pod(1)],
    )
    # An older operator's ConfigMap has no readiness.json: written once, all Ready.
    first = decide(ready)
    assert readiness_written(first) == Readiness()
    assert map_written(first) == parse_map(published(2)["data"][MAP_KEY])  # the same version
    assert reasons(first) == []
    data = map_data(first)
    settled = dataclasses.replace(ready, map_configmap={**published(2), "data": data})
    assert write_of(decide(settled), "ConfigMap", "ct-map") is None  # nothing new, no write
    assert not finish(decide(settled), ApplyResult()).pending

    # gw-1 fails its probe: marked, at the same map version, without an Event.
    down = dataclasses.replace(settled, gateway_pods=[gateway_pod(0), gateway_pod(1, ready=False)])
    marked = decide(down)
    assert readiness_written(marked) == Readiness(frozenset({"ct-gw-1"}))
    assert map_written(marked) == parse_map(data[MAP_KEY])
    assert reasons(marked) == [] and finish(marked, ApplyResult()).events == []
    # The status names it (absent when all are Ready); nothing else in it changes.
    status = marked.status
    assert status.pop("gatewaysNotReady") == ["ct-gw-1"]
    assert "gatewaysNotReady" not in decide(settled).status
    assert status == decide(settled).status
    # It owns buckets and routers spool for it: the pool is passed again soon.
    assert marked.owners_not_ready == ("ct-gw-1",)
    assert finish(marked, ApplyResult()).pending
    # A pod that is gone is not Ready either.
    assert readiness_written(
        decide(dataclasses.replace(settled, gateway_pods=[gateway_pod(0)]))
    ) == Readiness(frozenset({"ct-gw-1"}))

    # Back: marked Ready again, still the same version.
    back = dataclasses.replace(settled, map_configmap={**published(2), "data": map_data(marked)})
    again = decide(back)
    assert readiness_written(again) == Readiness()
    assert map_written(again) == parse_map(data[MAP_KEY]) and reasons(again) == []


def test_without_a_spool_a_gateway_not_ready_does_not_hurry_the_passes() -> None:
    observed = Observed(
        pool(status={"mapVersion": 3}),
        map_configmap=published(2),
        statefulset=statefulset(2),
        gateway_pods=[gateway_pod(0), gateway_pod(1, ready=False)],
    )
    decided = decide(observed)
    assert readiness_written(decided) == Readiness(frozenset({"ct-gw-1"}))
    assert decided.owners_not_ready == ()
    outcome: Outcome = finish(decided, ApplyResult())
    assert not outcome.pending


# --- a refused spec ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "observed"),
    [
        ({"replicas": -1, "gateway": {"image": "gw:1"}}, {}),
        ({"replicas": 2, "buckets": 12}, {}),  # no gateway image
        # The bucket count is fixed once a map is published.
        ({**SPEC, "buckets": 16}, {"map_configmap": published(2)}),
    ],
    ids=["negative-replicas", "no-image", "bucket-count-changed"],
)
def test_a_refused_spec_leaves_the_pool_as_it_was(
    spec: dict[str, Any], observed: dict[str, Any]
) -> None:
    decided = decide(Observed(pool(spec), statefulset=statefulset(2), **observed))

    assert decided.writes == () and decided.prune is None and decided.deletes == ()
    assert decided.accepted_spec is None and decided.handover is None
    assert reasons(decided) == ["SpecRejected"]
    assert "the pool is left as it was" in decided.events[0].message
    assert conditions(decided.status)["Degraded"] == ("True", "SpecRejected")
    outcome = finish(decided, ApplyResult())
    assert outcome.status == decided.status and outcome.events == list(decided.events)
    assert outcome.applied == [] and outcome.plan is None and not outcome.pending


def test_a_refused_spec_reports_the_pool_on_its_last_accepted_spec() -> None:
    annotations = {ACCEPTED_SPEC_ANNOTATION: '{"replicas":2,"buckets":12,"gateway":{"image":"a"}}'}
    observed = Observed(
        pool({"replicas": -1}, annotations=annotations),
        map_configmap=published(2),
        statefulset=statefulset(2, ready=1),
    )
    decided = decide(observed)

    assert decided.writes == ()
    # Counted against the 2 gateways accepted before, not "no spec accepted yet".
    assert conditions(decided.status)["Ready"] == ("False", "GatewaysNotReady")
    assert conditions(decided.status)["Degraded"] == ("True", "SpecRejected")
    assert decided.status["mapVersion"] == 3


# --- scaling ----------------------------------------------------------------------------


def test_scale_up_grows_the_statefulset_at_once_and_moves_buckets_once_ready() -> None:
    spec = {**SPEC, "replicas": 3}
    observed = Observed(
        pool(spec, status={"mapVersion": 3}),
        map_configmap=published(2),
        statefulset=statefulset(2),
        gateway_pods=[gateway_pod(0), gateway_pod(1)],
    )
    decided = decide(observed)

    assert sts_replicas(decided) == 3
    sts = write_of(decided, "StatefulSet", "ct-gw")
    assert sts is not None and sts.conditional and sts.base is observed.statefulset
    listed = map_written(decided)
    # The new gateway is listed, but receives nothing before its pod is Ready.
    assert listed is not None and listed.version == 4 and len(listed.gateways) == 3
    assert not listed.moving and max(listed.owners) == 1

    ready = dataclasses.replace(
        observed,
        statefulset=statefulset(3),
        gateway_pods=[gateway_pod(0), gateway_pod(1), gateway_pod(2)],
    )
    decided = decide(ready)
    moving = map_written(decided)
    assert moving is not None and moving.version == 4
    assert set(moving.moving.values()) == {2} and len(moving.moving) == 4
    assert reasons(decided) == ["HandoverStarted"]
    assert decided.status["movingBuckets"] == 4
    assert conditions(decided.status)["Progressing"] == ("True", "HandingOverBuckets")


def test_scale_down_keeps_the_leaving_gateway_until_its_buckets_moved() -> None:
    spec = {**SPEC, "replicas": 1}
    observed = Observed(
        pool(spec, status={"mapVersion": 3}),
        map_configmap=published(2),
        statefulset=statefulset(2),
        gateway_pods=[gateway_pod(0), gateway_pod(1)],
    )
    now = NOW
    seen: list[tuple[int, int | None, int, int, tuple[str, ...]]] = []
    for _ in range(4):
        decided = decide(observed, now=now)
        bucket_map = map_written(decided)
        replicas = sts_replicas(decided)
        seen.append(
            (
                replicas,
                bucket_map.version if bucket_map else None,
                len(bucket_map.gateways) if bucket_map else 0,
                len(bucket_map.moving) if bucket_map else 0,
                tuple(reasons(decided)),
            )
        )
        # The next pass reads back what this one wrote, quietSeconds later.
        map_write = write_of(decided, "ConfigMap", "ct-map")
        observed = dataclasses.replace(
            observed,
            pool=pool(spec, status=decided.status),
            map_configmap=(
                {"metadata": {"name": "ct-map"}, "data": map_write.obj["data"]}
                if map_write is not None
                else observed.map_configmap
            ),
            statefulset=statefulset(replicas),
            gateway_pods=[gateway_pod(o) for o in range(replicas)],
        )
        now += timedelta(seconds=31)

    assert seen == [
        # Buckets of gateway 1 start moving to 0; gateway 1 stays meanwhile.
        (2, 4, 2, 6, ("HandoverStarted",)),
        # Quiet on every router (there are none): published closing.
        (2, 5, 2, 6, ()),
        # Moved: the map lists gateway 0 alone, and the StatefulSet shrinks.
        (1, 6, 1, 0, ("HandoverCompleted",)),
        # Nothing new: the map is not written again.
        (1, None, 0, 0, ()),
    ]


def test_passes_during_a_handover_with_nothing_new_give_the_same_status() -> None:
    """The status holds no age: a pass that learns nothing leaves it as it was.

    The runner then writes no status, so the pool's resourceVersion stays and
    an autoscaler's ``/scale`` write at the version it read does not conflict.
    """
    spec = {**SPEC, "replicas": 1}
    observed = Observed(
        pool(spec, status={"mapVersion": 3}),
        map_configmap=published(2),
        statefulset=statefulset(2),
        gateway_pods=[gateway_pod(0), gateway_pod(1)],
        router_pods=[router_pod("ct-router-a")],
        reports_configmap={"metadata": {"name": "ct-routers"}, "data": {"ct-router-a": report(3)}},
    )
    started = decide(observed)
    map_write = write_of(started, "ConfigMap", "ct-map")
    assert map_write is not None and reasons(started) == ["HandoverStarted"]
    statuses = []
    for seconds in (1, 4, 9):
        # The router has not applied the new map yet (it reports the old one): the move waits.
        now = NOW + timedelta(seconds=seconds)
        waiting = dataclasses.replace(
            observed,
            pool=pool(spec, status=started.status),
            map_configmap={"metadata": {"name": "ct-map"}, "data": map_write.obj["data"]},
            reports_configmap={
                "metadata": {"name": "ct-routers"},
                "data": {"ct-router-a": report(3, at=now - timedelta(seconds=1))},
            },
        )
        decided = decide(waiting, now=now)
        assert write_of(decided, "ConfigMap", "ct-map") is None
        statuses.append(decided.status)
    assert statuses[0]["movingBuckets"] == 6
    assert statuses[0]["oldestMoveSince"] == "2026-03-01T12:00:00.000000Z"
    assert statuses == [started.status] * 3


def test_a_failed_router_pod_neither_holds_nor_forces_a_handover() -> None:
    """An evicted router (phase Failed) never reports: the handover goes on without it.

    Counted, it would have no report: the StatefulSet could never shrink, and
    its silence would force every move once it was excluded.
    """
    spec = {**SPEC, "replicas": 1}
    evicted = router_pod("ct-router-evicted") | {"status": {"phase": "Failed"}}
    observed = Observed(
        pool(spec, status={"mapVersion": 3}),
        map_configmap=published(2),
        statefulset=statefulset(2),
        gateway_pods=[gateway_pod(0), gateway_pod(1)],
        router_pods=[router_pod("ct-router-a"), evicted],
        reports_configmap={"metadata": {"name": "ct-routers"}, "data": {}},
    )
    now = NOW
    completed, forced = [], []
    for _ in range(4):
        decided = decide(observed, now=now)
        assert decided.handover is not None
        completed += decided.handover.completed
        forced += decided.handover.forced
        map_write = write_of(decided, "ConfigMap", "ct-map")
        map_configmap = (
            {"metadata": {"name": "ct-map"}, "data": map_write.obj["data"]}
            if map_write is not None
            else observed.map_configmap
        )
        version = parse_map(map_configmap["data"][MAP_KEY]).version
        replicas = sts_replicas(decided)
        now += timedelta(seconds=31)
        # The live router applied what was published and routed nothing since.
        reports = {
            "ct-router-a": dump_report(
                build_report(
                    map_version=version,
                    buckets=12,
                    started_at=NOW - timedelta(hours=1),
                    reported_at=now - timedelta(seconds=1),
                    ages={},
                    open_associations={},
                )
            )
        }
        observed = dataclasses.replace(
            observed,
            pool=pool(spec, status=decided.status),
            map_configmap=map_configmap,
            statefulset=statefulset(replicas),
            gateway_pods=[gateway_pod(o) for o in range(replicas)],
            reports_configmap={"metadata": {"name": "ct-routers"}, "data": reports},
        )
    assert len(completed) == 6 and forced == []
    # Once the live router applied the map without gateway 1, it goes.
    assert replicas == 1
    assert decided.status["routers"] == "1/1"
    assert decided.status["excludedRouters"] == []


# --- optional children ------------------------------------------------------------------


def test_optional_children_the_spec_drops_are_deleted_only_when_the_pool_owns_them() -> None:
    spec = {**SPEC, "networkPolicy": {"enabled": False}}
    observed = Observed(
        pool(spec),
        optional_children={
            ("NetworkPolicy", "ct-gw"): owned("NetworkPolicy", "ct-gw"),
            # Someone else's, of the same name: left alone.
            ("NetworkPolicy", "ct-router"): owned("NetworkPolicy", "ct-router", uid="other"),
            ("HorizontalPodAutoscaler", "ct"): owned("HorizontalPodAutoscaler", "ct"),
        },
    )
    decided = decide(observed)

    assert decided.deletes == (("NetworkPolicy", "ct-gw"), ("HorizontalPodAutoscaler", "ct"))
    assert not {kind for kind, _ in targets(decided)} & {"NetworkPolicy", "HorizontalPodAutoscaler"}


def test_optional_children_the_spec_wants_are_applied_not_deleted() -> None:
    spec = {**SPEC, "autoscaling": AUTOSCALING}
    not_scaling = {
        "conditions": [
            {"type": "ScalingActive", "status": "False", "reason": "FailedGetPodsMetric"}
        ]
    }
    observed = Observed(
        pool(spec),
        optional_children={
            ("NetworkPolicy", "ct-gw"): owned("NetworkPolicy", "ct-gw"),
            ("NetworkPolicy", "ct-router"): owned("NetworkPolicy", "ct-router"),
            ("HorizontalPodAutoscaler", "ct"): owned(
                "HorizontalPodAutoscaler", "ct", status=not_scaling
            ),
        },
    )
    decided = decide(observed)

    assert decided.deletes == ()
    assert targets(decided) == [*CHILDREN[:-1], ("HorizontalPodAutoscaler", "ct"), CHILDREN[-1]]
    # The autoscaler's own words reach the pool's status.
    assert conditions(decided.status)["Degraded"] == ("True", "AutoscalerNotScaling")
    assert decided.status["autoscaling"] == "1-4"


def test_a_new_pools_autoscaler_comes_once_the_status_has_the_selector_it_reads() -> None:
    # The real HPA controller reads the pool's /scale as soon as the HPA
    # exists: before status.selector it answers InvalidSelector, a Warning,
    # and the pool would be Degraded until its next sync.
    spec = {**SPEC, "autoscaling": AUTOSCALING}
    first = decide(Observed(pool(spec)))
    assert ("HorizontalPodAutoscaler", "ct") not in targets(first)
    assert first.deletes == ()
    selector = first.status["selector"]
    assert selector == "app.kubernetes.io/instance=ct,app.kubernetes.io/component=gateway"

    second = decide(Observed(pool(spec, status={"selector": selector})))
    assert ("HorizontalPodAutoscaler", "ct") in targets(second)


def test_nothing_is_deleted_that_does_not_exist() -> None:
    decided = decide(Observed(pool({**SPEC, "networkPolicy": {"enabled": False}})))
    assert decided.deletes == ()


# --- the routers' reports ---------------------------------------------------------------


def test_reports_of_router_pods_that_are_gone_are_pruned() -> None:
    observed = Observed(
        pool(status={"mapVersion": 3}),
        map_configmap=published(2),
        statefulset=statefulset(2),
        gateway_pods=[gateway_pod(0), gateway_pod(1)],
        router_pods=[router_pod("ct-router-a")],
        reports_configmap={
            "metadata": {"name": "ct-routers"},
            "data": {"ct-router-a": report(3), "ct-router-gone": report(2)},
        },
    )
    decided = decide(observed)

    assert decided.prune == Prune("ct-routers", ("ct-router-gone",))
    # The report of the live router counts; the pruned one does not.
    assert decided.status["routers"] == "1/1"
    assert "HandoverPaused" in reasons(decided)

    live_only = dataclasses.replace(
        observed,
        reports_configmap={"metadata": {"name": "ct-routers"}, "data": {"ct-router-a": report(3)}},
    )
    assert decide(live_only).prune is None


# --- after the writes -------------------------------------------------------------------


def test_a_refused_write_degrades_the_pool_and_is_announced_once() -> None:
    observed = Observed(pool(), map_configmap=published(2), statefulset=statefulset(2))
    refusal = "StatefulSet ct-gw: spec.template: Invalid value"
    result = ApplyResult(refused=(refusal,))

    outcome = finish(decide(observed), result)
    assert conditions(outcome.status)["Degraded"] == ("True", ConditionReason.APPLY_REFUSED)
    assert [e.reason for e in outcome.events if e.type == "Warning"] == [Reason.APPLY_REFUSED]
    assert outcome.events[-1].message == f"the API server refused {refusal}"

    # The next pass, the pool already says so: Degraded still, no second Event.
    again = dataclasses.replace(observed, pool=pool(status=outcome.status))
    repeated = finish(decide(again), result)
    assert conditions(repeated.status)["Degraded"] == ("True", ConditionReason.APPLY_REFUSED)
    assert Reason.APPLY_REFUSED not in [e.reason for e in repeated.events]
    degraded = next(c for c in repeated.status["conditions"] if c["type"] == "Degraded")
    assert degraded["message"] == refusal

    # Another refusal is news.
    other = finish(decide(again), ApplyResult(refused=("Service ct-gw: forbidden",)))
    assert [e.reason for e in other.events] == [Reason.APPLY_REFUSED]

    # Accepted at last: no longer Degraded.
    healed = finish(decide(again), ApplyResult())
    assert conditions(healed.status)["Degraded"][0] == "False"


def test_events_say_what_the_writes_did_to_children() -> None:
    existing = decide(Observed(pool(), map_configmap=published(2), statefulset=statefulset(2)))
    applied = (
        Applied("ConfigMap", "ct-map", "patched", "data"),
        Applied("Service", "ct-gw", "created"),
        Applied("StatefulSet", "ct-gw", "recreated", "spec.volumeClaimTemplates"),
        Applied("Deployment", "ct-router", "patched", "spec.replicas"),
        Applied("Role", "ct-router", "unchanged"),
        Applied("NetworkPolicy", "ct-gw", "deleted"),
        Applied("Service", "ct-router", "recreated", ".spec.loadBalancerClass differs"),
    )
    outcome = finish(existing, ApplyResult(applied=applied))
    assert [(e.reason, e.message.split(":")[0]) for e in outcome.events] == [
        ("ChildRecreated", "Service ct-gw re-created"),
        (
            "ChildRecreated",
            "StatefulSet ct-gw deleted with its pods and volumes orphaned and created again",
        ),
        ("ChildUpdated", "Deployment ct-router brought in line"),
        ("ChildDeleted", "NetworkPolicy ct-gw deleted"),
        ("ChildRecreated", "Service ct-router deleted and created again"),
    ]
    # A Service has no pods to orphan; what modalities are configured with may change.
    assert outcome.events[-1].message.endswith(
        "(an immutable field); the addresses the API server allocated to it (cluster IP, "
        "node ports not fixed in the spec, load balancer address) may change"
    )
    assert outcome.applied == list(applied)

    # Everything of a new pool is created: nothing to announce.
    new = finish(
        decide(Observed(pool())), ApplyResult(applied=(Applied("Service", "ct-gw", "created"),))
    )
    assert new.events == []


# --- the plan is a function -------------------------------------------------------------


def test_plan_is_deterministic_and_leaves_its_observations_alone() -> None:
    observed = Observed(
        pool({**SPEC, "replicas": 3}, status={"mapVersion": 3}),
        map_configmap=published(2),
        statefulset=statefulset(2),
        gateway_pods=[gateway_pod(0), gateway_pod(1), gateway_pod(2)],
        router_pods=[router_pod("ct-router-a")],
        reports_configmap={"metadata": {"name": "ct-routers"}, "data": {"x": report(1)}},
        optional_children={("NetworkPolicy", "ct-gw"): owned("NetworkPolicy", "ct-gw")},
    )
    before = copy.deepcopy(observed)
    assert decide(observed) == decide(observed)
    assert observed == before


def test_the_pool_needs_a_uid_for_its_children() -> None:
    body = pool()
    del body["metadata"]["uid"]
    with pytest.raises(ValueError, match="uid"):
        decide(Observed(body))


# --- the apply step, against a recording stand-in for the API ---------------------------


class _Recorder:
    """Takes `Cluster`'s writes and records them; refuses or conflicts on request.

    Only what `apply` calls: it reads nothing, the plan was made from reads.
    """

    def __init__(self, *, refuse: str = "", conflict: str = "") -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.refuse, self.conflict = refuse, conflict

    def apply(self, desired: dict[str, Any], **options: Any) -> Applied:
        kind, name = desired["kind"], desired["metadata"]["name"]
        self.calls.append(("apply", kind, name, tuple(sorted(options))))
        if kind == self.refuse:
            raise RefusedError(kind, name, "forbidden")
        if kind == self.conflict:
            raise ConflictError(f"{kind} {name} changed")
        return Applied(kind, name, "created")

    def merge_patch_data(self, kind: str, namespace: str, name: str, data: Any) -> bool:
        self.calls.append(("prune", kind, name, tuple(data.items())))
        return True

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        self.calls.append(("delete", kind, name))
        return name != "ct-router"  # already gone


def test_apply_writes_in_order_and_carries_on_past_a_refusal() -> None:
    decided = dataclasses.replace(
        decide(Observed(pool({**SPEC, "networkPolicy": {"enabled": False}}))),
        prune=Prune("ct-routers", ("ct-router-gone",)),
        deletes=(("NetworkPolicy", "ct-gw"), ("NetworkPolicy", "ct-router")),
    )
    cluster = _Recorder(refuse="Service")
    result = apply(cast(Cluster, cluster), decided)

    applies = [call for call in cluster.calls if call[0] == "apply"]
    assert [(kind, name) for _, kind, name, _ in applies] == targets(decided)
    options = {(kind, name): opts for _, kind, name, opts in applies}
    assert options["ConfigMap", "ct-map"] == ("base", "create_only", "exclusive")
    assert options["StatefulSet", "ct-gw"] == ("base", "create_only", "exclusive")
    assert options["Deployment", "ct-router"] == ("create_only", "exclusive")
    assert cluster.calls[len(applies) :] == [
        ("prune", "ConfigMap", "ct-routers", (("ct-router-gone", None),)),
        ("delete", "NetworkPolicy", "ct-gw"),
        ("delete", "NetworkPolicy", "ct-router"),
    ]
    assert result.refused == ("Service ct-gw: forbidden", "Service ct-router: forbidden")
    assert Applied("NetworkPolicy", "ct-gw", "deleted") in result.applied
    assert Applied("NetworkPolicy", "ct-router", "deleted") not in result.applied


def test_apply_ends_the_pass_on_a_conflict() -> None:
    decided = decide(Observed(pool()))
    with pytest.raises(ConflictError):
        apply(cast(Cluster, _Recorder(conflict="StatefulSet")), decided)
