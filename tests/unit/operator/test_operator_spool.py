"""``spec.router.spool``: read, rendered as the router StatefulSet, switched to, and shown.

The spool's spec fields and their defaults; the children a spooling pool
owns (the router StatefulSet with a claim per router, its headless Service,
the router's spool options, a grace period to drain), and that a pool
without a spool owns what it owned before; and the plan's rule for the
switch between the router Deployment and the StatefulSet: the old kind is
deleted only once the new one is Ready.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from gatewaypool.reports import SpoolSummary, build_report, dump_report
from gatewaypool_operator.children.desired import build_children, optional_children
from gatewaypool_operator.children.names import selector_labels
from gatewaypool_operator.children.router import (
    SPOOL_DIRECTORY,
    SPOOL_SHUTDOWN_GRACE_SECONDS,
    SPOOL_TERMINATION_GRACE_SECONDS,
    spool_max_bytes,
    statefulset,
)
from gatewaypool_operator.events import Reason
from gatewaypool_operator.passdata import ApplyResult, Observed
from gatewaypool_operator.plan import finish, plan
from gatewaypool_operator.poolstatus import compute_status
from gatewaypool_operator.spec.fields import SpecError
from gatewaypool_operator.spec.parse import parse_spec
from gatewaypool_operator.spec.types import PoolSpec, SpoolSpec
from gatewaypool_operator.spoolstatus import idle_claims

NAME, NS, UID = "ct", "radiology", "uid-of-ct"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
SPOOL: dict[str, Any] = {"size": "20Gi"}


def spec_with(spool: dict[str, Any] | None = None, **router: Any) -> dict[str, Any]:
    router_section: dict[str, Any] = dict(router)
    if spool is not None:
        router_section["spool"] = spool
    return {"replicas": 2, "buckets": 12, "gateway": {"image": "gw:1"}, "router": router_section}


def parse(raw: dict[str, Any]) -> PoolSpec:
    return parse_spec(raw, default_router_image="gatewaypool:1")


def children(raw: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    spec = parse(raw)
    return {
        (obj["kind"], obj["metadata"]["name"]): obj
        for obj in build_children(
            name=NAME, namespace=NS, spec=spec, map_data=None, gateway_replicas=spec.replicas
        )
    }


def arguments(command: list[str]) -> dict[str, str]:
    """The router's ``--spool-*`` and ``--shutdown-grace`` options and their values."""
    found = {}
    for index, word in enumerate(command):
        if word.startswith(("--spool-", "--shutdown-grace")):
            found[word] = command[index + 1]
    return found


# --- the spec -------------------------------------------------------------------------


def test_no_spool_by_default() -> None:
    assert parse(spec_with()).router.spool is None


def test_spool_defaults() -> None:
    assert parse(spec_with(SPOOL)).router.spool == SpoolSpec(
        size="20Gi", storage_class_name=None, when="GatewayUnavailable", retention_seconds=86400
    )


def test_spool_keeps_every_value() -> None:
    spool = {"size": "5Gi", "storageClassName": "local-nvme", "when": "Always"}
    parsed = parse(spec_with({**spool, "retentionSeconds": 3600})).router.spool
    assert parsed == SpoolSpec("5Gi", "local-nvme", "Always", 3600)


@pytest.mark.parametrize(
    ("spool", "field"),
    [
        ({}, "spec.router.spool.size"),
        ({"size": "0Gi"}, "spec.router.spool.size"),
        ({"size": "-1Gi"}, "spec.router.spool.size"),
        ({"size": "lots"}, "spec.router.spool.size"),
        ({"size": "1Gi", "storageClassName": "Fast_SSD"}, "spec.router.spool.storageClassName"),
        ({"size": "1Gi", "when": "Never"}, "spec.router.spool.when"),
        ({"size": "1Gi", "retentionSeconds": 59}, "spec.router.spool.retentionSeconds"),
        ({"size": "1Gi", "retentionSeconds": "1d"}, "spec.router.spool.retentionSeconds"),
        ({"size": "1Gi", "mountPath": "/spool"}, "spec.router.spool.mountPath"),
        ("20Gi", "spec.router.spool"),
    ],
)
def test_spool_refusals_name_the_field(spool: Any, field: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse(spec_with(spool))
    assert caught.value.field_path == field


# --- the children ------------------------------------------------------------------------


def test_without_spool_the_routers_are_a_deployment_as_before() -> None:
    owned = children(spec_with())
    assert ("Deployment", "ct-router") in owned
    assert ("StatefulSet", "ct-router") not in owned
    assert ("Service", "ct-router-pods") not in owned
    template = owned[("Deployment", "ct-router")]["spec"]["template"]
    assert "terminationGracePeriodSeconds" not in template["spec"]
    assert not arguments(template["spec"]["containers"][0]["command"])


def test_with_spool_the_routers_are_a_statefulset_with_a_claim_each() -> None:
    owned = children(spec_with({"size": "20Gi", "storageClassName": "fast"}, replicas=3))
    assert ("Deployment", "ct-router") not in owned
    routers = owned[("StatefulSet", "ct-router")]["spec"]
    assert routers["replicas"] == 3
    assert routers["serviceName"] == "ct-router-pods"
    assert routers["selector"] == {"matchLabels": selector_labels(NAME, "router")}
    [claim] = routers["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "spool"
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "20Gi"}},
        "storageClassName": "fast",
    }
    # A removed router's spool may hold acknowledged instances: its claim stays.
    assert routers["persistentVolumeClaimRetentionPolicy"] == {
        "whenScaled": "Retain",
        "whenDeleted": "Retain",
    }
    headless = owned[("Service", "ct-router-pods")]["spec"]
    assert headless["clusterIP"] == "None"
    assert headless["selector"] == selector_labels(NAME, "router")
    # Modalities keep sending to the router Service.
    assert owned[("Service", "ct-router")]["spec"]["selector"] == selector_labels(NAME, "router")


def test_the_claim_names_the_cluster_default_class_by_leaving_it_out() -> None:
    [claim] = statefulset(NAME, NS, parse(spec_with(SPOOL)))["spec"]["volumeClaimTemplates"]
    assert "storageClassName" not in claim["spec"]


def test_the_spooling_router_mounts_its_volume_and_is_told_about_it() -> None:
    spec = parse(spec_with({"size": "1Gi", "when": "Always", "retentionSeconds": 600}))
    pod = statefulset(NAME, NS, spec)["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert {"name": "spool", "mountPath": SPOOL_DIRECTORY} in container["volumeMounts"]
    assert arguments(container["command"]) == {
        "--spool-dir": SPOOL_DIRECTORY,
        "--spool-when": "Always",
        "--spool-max-bytes": str(1024**3 * 85 // 100),
        "--spool-retention": "600",
        "--shutdown-grace": str(SPOOL_SHUTDOWN_GRACE_SECONDS),
    }
    # The kubelet kills only after the router had its whole grace to drain.
    assert pod["terminationGracePeriodSeconds"] == SPOOL_TERMINATION_GRACE_SECONDS
    assert SPOOL_TERMINATION_GRACE_SECONDS > SPOOL_SHUTDOWN_GRACE_SECONDS
    # A fresh volume is root's: the router's group makes it writable.
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]


@pytest.mark.parametrize(
    ("size", "expected"),
    [("1Gi", 912680550), ("20Gi", 18253611008), ("100G", 85 * 10**9), ("1000Mi", 891289600)],
)
def test_the_router_fills_85_percent_of_its_volume(size: str, expected: int) -> None:
    assert spool_max_bytes(size) == expected


def test_both_router_kinds_share_the_pod_template_but_the_spool() -> None:
    deployment = children(spec_with())[("Deployment", "ct-router")]["spec"]["template"]
    spooling = children(spec_with(SPOOL))[("StatefulSet", "ct-router")]["spec"]["template"]
    assert deployment["metadata"] == spooling["metadata"]
    [plain], [spooled] = deployment["spec"]["containers"], spooling["spec"]["containers"]
    assert spooled["command"][: len(plain["command"])] == plain["command"]
    assert {k: v for k, v in spooled.items() if k not in ("command", "volumeMounts")} == {
        k: v for k, v in plain.items() if k not in ("command", "volumeMounts")
    }


def test_the_router_kind_the_spec_leaves_out_is_an_optional_child() -> None:
    optional = optional_children(NAME)
    for child in (("Deployment", "ct-router"), ("StatefulSet", "ct-router")):
        assert child in optional
    assert ("Service", "ct-router-pods") in optional


# --- the switch ------------------------------------------------------------------------------


def workload(kind: str, *, ready: int, generation: int = 1, seen: int = 1) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {
            "name": "ct-router",
            "generation": generation,
            "ownerReferences": [{"uid": UID, "controller": True}],
        },
        "status": {"observedGeneration": seen, "readyReplicas": ready},
    }


def deletes(
    raw: dict[str, Any], live: dict[tuple[str, str], dict[str, Any]]
) -> set[tuple[str, str]]:
    body = {
        "apiVersion": "gatewaypool.io/v1alpha1",
        "kind": "GatewayPool",
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 2},
        "spec": raw,
        "status": {},
    }
    decided = plan(
        Observed(pool=body, optional_children=live), default_router_image="gatewaypool:1", now=NOW
    )
    return set(decided.deletes)


@pytest.mark.parametrize(
    ("ready", "generation", "seen", "deleted"),
    [
        (0, 1, 1, False),  # the StatefulSet's routers are not Ready yet
        (1, 1, 1, False),  # one of two
        (2, 2, 1, False),  # Ready, but of a spec its controller has not seen yet
        (2, 1, 1, True),
        (3, 1, 1, True),
    ],
)
def test_the_deployment_goes_once_the_statefulset_is_ready(
    ready: int, generation: int, seen: int, deleted: bool
) -> None:
    live = {
        ("Deployment", "ct-router"): workload("Deployment", ready=2),
        ("StatefulSet", "ct-router"): workload(
            "StatefulSet", ready=ready, generation=generation, seen=seen
        ),
    }
    assert (("Deployment", "ct-router") in deletes(spec_with(SPOOL), live)) is deleted


def test_a_waiting_replacement_keeps_the_pool_pending() -> None:
    """The old routers go on the first pass that sees the new ones Ready: the resync passes
    again within seconds, not at its usual interval."""
    body = {
        "apiVersion": "gatewaypool.io/v1alpha1",
        "kind": "GatewayPool",
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 2},
        "spec": spec_with(SPOOL),
        "status": {},
    }
    live = {
        ("Deployment", "ct-router"): workload("Deployment", ready=2),
        ("StatefulSet", "ct-router"): workload("StatefulSet", ready=1),
    }
    waiting = plan(
        Observed(pool=body, optional_children=live), default_router_image="gatewaypool:1", now=NOW
    )
    assert waiting.replacing
    assert finish(waiting, ApplyResult()).pending
    live[("StatefulSet", "ct-router")] = workload("StatefulSet", ready=2)
    done = plan(
        Observed(pool=body, optional_children=live), default_router_image="gatewaypool:1", now=NOW
    )
    assert not done.replacing
    assert ("Deployment", "ct-router") in done.deletes


def test_the_deployment_stays_while_the_statefulset_does_not_exist() -> None:
    live = {("Deployment", "ct-router"): workload("Deployment", ready=2)}
    assert ("Deployment", "ct-router") not in deletes(spec_with(SPOOL), live)


def test_the_statefulset_goes_once_the_deployment_is_ready_again() -> None:
    spool_gone = spec_with()
    statefulset_live = workload("StatefulSet", ready=2)
    headless = {"kind": "Service", "metadata": {"ownerReferences": [{"uid": UID}]}}
    live = {("StatefulSet", "ct-router"): statefulset_live, ("Service", "ct-router-pods"): headless}
    # The headless Service serves no traffic: it goes at once; the routers wait.
    assert deletes(spool_gone, live) == {("Service", "ct-router-pods")}
    live[("Deployment", "ct-router")] = workload("Deployment", ready=2)
    assert deletes(spool_gone, live) == {
        ("Service", "ct-router-pods"),
        ("StatefulSet", "ct-router"),
    }


def test_a_router_workload_not_owned_by_the_pool_is_never_deleted() -> None:
    stranger = workload("Deployment", ready=2)
    stranger["metadata"]["ownerReferences"] = [{"uid": "someone-else"}]
    live = {
        ("Deployment", "ct-router"): stranger,
        ("StatefulSet", "ct-router"): workload("StatefulSet", ready=2),
    }
    assert not deletes(spec_with(SPOOL), live)


def test_the_router_statefulset_is_not_written_over_the_gateways_version() -> None:
    """Only the gateway StatefulSet's write is conditional on the one the pass read."""
    body = {
        "apiVersion": "gatewaypool.io/v1alpha1",
        "kind": "GatewayPool",
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 2},
        "spec": spec_with(SPOOL),
    }
    decided = plan(Observed(pool=body), default_router_image="gatewaypool:1", now=NOW)
    writes = {(w.obj["kind"], w.obj["metadata"]["name"]): w for w in decided.writes}
    assert writes[("StatefulSet", "ct-gw")].conditional
    assert not writes[("StatefulSet", "ct-router")].conditional


# --- the status ------------------------------------------------------------------------------


def spool_report(
    *, instances: int = 0, size: int = 0, oldest: float = 0.0, refused: int = 0, at: datetime = NOW
) -> str:
    return dump_report(
        build_report(
            map_version=1,
            buckets=12,
            started_at=at - timedelta(hours=1),
            reported_at=at,
            ages={},
            open_associations={},
            spool=SpoolSummary(
                instances=instances,
                bytes=size,
                oldest_seconds=oldest,
                refused=refused,
                buckets=frozenset({3}) if instances else frozenset(),
            ),
        )
    )


def status_of(
    reports: dict[str, str], *, spool: dict[str, Any] | None = SPOOL, live: tuple[str, ...] = ()
) -> dict[str, Any]:
    return compute_status(
        name=NAME,
        spec=parse(spec_with(spool)),
        generation=1,
        statefulset_status=None,
        bucket_map=None,
        router_reports=reports,
        live_router_pods=live or tuple(reports),
        spec_error=None,
        previous_conditions=[],
        now=NOW,
    )


def backlog_of(status: dict[str, Any]) -> dict[str, Any]:
    [condition] = [c for c in status["conditions"] if c["type"] == "SpoolBacklog"]
    return dict(condition)


def test_status_spool_sums_the_live_routers_reports() -> None:
    reports = {
        "ct-router-0": spool_report(instances=3, size=3000, oldest=61.5),
        "ct-router-1": spool_report(instances=2, size=500, oldest=10, refused=1),
        "ct-router-2": spool_report(instances=100, size=10**6, oldest=3600),  # its pod is gone
    }
    status = status_of(reports, live=("ct-router-0", "ct-router-1"))
    assert status["spool"] == {
        "instances": 5,
        "bytes": 3500,
        "refused": 1,
        "routers": 2,
        # A time, to the second: the status does not change with the clock alone.
        "oldestSince": "2026-03-01T11:58:58.000000Z",
    }


def test_no_status_spool_and_no_condition_without_a_spool() -> None:
    status = status_of({"ct-router-0": spool_report(instances=3, size=10)}, spool=None)
    assert "spool" not in status
    assert "SpoolBacklog" not in {c["type"] for c in status["conditions"]}


def test_an_empty_spool_is_no_backlog() -> None:
    status = status_of({"ct-router-0": spool_report()})
    assert "oldestSince" not in status["spool"]
    assert (backlog_of(status)["status"], backlog_of(status)["reason"]) == ("False", "SpoolEmpty")


def test_instances_within_the_limits_are_draining() -> None:
    status = status_of({"ct-router-0": spool_report(instances=4, size=4096, oldest=120)})
    assert (backlog_of(status)["status"], backlog_of(status)["reason"]) == (
        "False",
        "SpoolDraining",
    )


@pytest.mark.parametrize(
    ("report", "reason"),
    [
        # retentionSeconds is 600 here
        (spool_report(instances=1, size=10, oldest=601), "RetentionExceeded"),
        (spool_report(instances=9, size=spool_max_bytes("1Gi") * 9 // 10), "SpoolFilling"),
        (spool_report(refused=2), "InstancesRefused"),
    ],
)
def test_a_backlog_past_a_limit_sets_the_condition(report: str, reason: str) -> None:
    status = status_of({"ct-router-0": report}, spool={"size": "1Gi", "retentionSeconds": 600})
    assert (backlog_of(status)["status"], backlog_of(status)["reason"]) == ("True", reason)


def test_an_instance_just_within_its_retention_is_no_backlog() -> None:
    report = spool_report(instances=1, size=10, oldest=599)
    status = status_of({"ct-router-0": report}, spool={"size": "1Gi", "retentionSeconds": 600})
    assert backlog_of(status)["status"] == "False"


def test_the_backlog_event_is_posted_when_the_condition_turns_true_only() -> None:
    report = spool_report(instances=1, size=10, oldest=90000)
    body = {
        "apiVersion": "gatewaypool.io/v1alpha1",
        "kind": "GatewayPool",
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 1},
        "spec": spec_with(SPOOL),
        "status": {},
    }
    pod = {"metadata": {"name": "ct-router-0", "labels": selector_labels(NAME, "router")}}
    reports = {"metadata": {"name": "ct-routers"}, "data": {"ct-router-0": report}}
    observed = Observed(pool=body, router_pods=[pod], reports_configmap=reports)
    first = plan(observed, default_router_image="gatewaypool:1", now=NOW)
    assert [e.reason for e in first.events if e.reason == Reason.SPOOL_BACKLOG] == [
        Reason.SPOOL_BACKLOG
    ]
    body["status"] = first.status
    again = plan(
        Observed(pool=body, router_pods=[pod], reports_configmap=reports),
        default_router_image="gatewaypool:1",
        now=NOW,
    )
    assert Reason.SPOOL_BACKLOG not in [e.reason for e in again.events]


def claim(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": selector_labels(NAME, "router")}}


def test_idle_claims_are_the_spool_claims_no_live_router_mounts() -> None:
    found = [claim(f"spool-ct-router-{i}") for i in (10, 0, 2, 1)] + [claim("other-ct-router-3")]
    assert idle_claims(found, "ct-router", ("ct-router-0", "ct-router-1")) == (
        "spool-ct-router-2",
        "spool-ct-router-10",
    )
    # Back on a Deployment, whose pods have other names: every claim is idle.
    assert len(idle_claims(found, "ct-router", ("ct-router-6d9f-abcde",))) == 4


def test_idle_claims_show_in_the_status_also_without_a_spool() -> None:
    common: dict[str, Any] = {
        "name": NAME,
        "generation": 1,
        "statefulset_status": None,
        "bucket_map": None,
        "router_reports": {},
        "live_router_pods": (),
        "spec_error": None,
        "previous_conditions": [],
        "now": NOW,
    }
    without = compute_status(
        spec=parse(spec_with()), idle_spool_claims=("spool-ct-router-0",), **common
    )
    assert without["spool"] == {"idleClaims": ["spool-ct-router-0"]}
    assert "SpoolBacklog" not in {c["type"] for c in without["conditions"]}
    assert "spool" not in compute_status(spec=parse(spec_with()), **common)
    spooling = compute_status(
        spec=parse(spec_with(SPOOL)), idle_spool_claims=("spool-ct-router-2",), **common
    )
    assert spooling["spool"]["idleClaims"] == ["spool-ct-router-2"]
    assert spooling["spool"]["instances"] == 0


def test_the_plan_names_the_idle_claims_from_what_it_observed() -> None:
    body = {
        "apiVersion": "gatewaypool.io/v1alpha1",
        "kind": "GatewayPool",
        "metadata": {"name": NAME, "namespace": NS, "uid": UID, "generation": 2},
        "spec": spec_with(SPOOL),
    }
    pod = {"metadata": {"name": "ct-router-0", "labels": selector_labels(NAME, "router")}}
    observed = Observed(
        pool=body,
        router_pods=[pod],
        router_claims=[claim("spool-ct-router-0"), claim("spool-ct-router-1")],
    )
    decided = plan(observed, default_router_image="gatewaypool:1", now=NOW)
    assert decided.status["spool"]["idleClaims"] == ["spool-ct-router-1"]
