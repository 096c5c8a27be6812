"""``spec.router.spool`` on the real control plane: the routers' StatefulSet, claims, status.

The chart's operator runs a pool whose routers gain a spool and lose it
again: the real StatefulSet controller makes a claim per router, the real
PersistentVolume controller binds each to a volume of the test StorageClass
(:mod:`support.provisioner`), the real scheduler places the router pods only
then, and the kubelet stand-in mounts the volumes. The router Deployment
goes only once the StatefulSet's routers are Ready, and comes back before
the StatefulSet goes; a router scaled away keeps its claim. The pool's
``status.spool`` and ``SpoolBacklog`` come from the routers' own reports,
also while a gateway is down and a router's spool fills.
The scaling scenario with a gateway down is in
``test_cluster_spool_scaling.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from gatewaypool.bucketmap import parse_map, parse_readiness
from gatewaypool.contract import READINESS_KEY
from gatewaypool.hashing import study_bucket
from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.synth import generate_study
from gatewaypool_operator.children.router import SPOOL_DIRECTORY, spool_max_bytes
from support.provisioner import STORAGE_CLASS
from support.realcluster import Cluster
from support.realpool import RealPool, gateway_spec, operated_pool
from support.traffic import Traffic

POLL = 0.5
SPOOL: dict[str, Any] = {
    # 891289 bytes a router may spool: the test's study of 7 instances of 120 KB
    # fills one router's spool past 90% (SpoolBacklog) without filling it.
    "size": "1Mi",
    "storageClassName": STORAGE_CLASS,
    "retentionSeconds": 600,
}


def workload(pool: RealPool, kind: str) -> Any:
    """The router Deployment or StatefulSet ``ct-router``; None when there is none."""
    read = (
        pool.apps.read_namespaced_deployment
        if kind == "Deployment"
        else pool.apps.read_namespaced_stateful_set
    )
    try:
        return read(f"{pool.name}-router", pool.namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


def ready(found: Any, replicas: int) -> bool:
    return found is not None and (found.status.ready_replicas or 0) == replicas


def claims(pool: RealPool) -> dict[str, Any]:
    listed = pool.core.list_namespaced_persistent_volume_claim(pool.namespace)
    return {claim.metadata.name: claim for claim in listed.items}


def pool_events(pool: RealPool, reason: str) -> list[str]:
    listed = pool.core.list_namespaced_event(pool.namespace)
    return [str(e.message) for e in listed.items if e.reason == reason]


def condition(pool: RealPool, kind: str) -> dict[str, Any]:
    for found in pool.status().get("conditions") or []:
        if found["type"] == kind:
            return dict(found)
    return {}


def test_routers_gain_a_spool_keep_their_claims_and_lose_it_again(
    cluster: Cluster, cluster_namespace: str, tmp_path: Path
) -> None:
    spec = {
        "replicas": 2,
        "buckets": 64,
        "gateway": gateway_spec(),
        "router": {"replicas": 2},
        "handover": {"quietSeconds": 2, "maxDrainSeconds": 60},
    }
    with operated_pool(cluster, cluster_namespace, spec) as pool:
        pool.wait_settled(2, 2, timeout=120)
        deployment_uid = workload(pool, "Deployment").metadata.uid

        # Spool on: the StatefulSet starts beside the Deployment, which goes
        # only once both spooling routers are Ready.
        pool.patch_spec({"router": {"spool": SPOOL}})
        seen_both = False

        def switched() -> bool:
            nonlocal seen_both
            routers = workload(pool, "StatefulSet")
            deployment = workload(pool, "Deployment")
            if deployment is not None and routers is not None:
                # While both exist, the Deployment's routers stay Ready.
                seen_both = True
                assert ready(deployment, 2) or ready(routers, 2), "no router kind Ready"
            return deployment is None and ready(routers, 2)

        wait_until(switched, timeout=120, what="routers switched to the StatefulSet", interval=POLL)
        assert seen_both, "the Deployment went before the StatefulSet existed"
        # kopf posts Events from a queue, shortly after the pass that deleted it.
        wait_until(
            lambda: any(
                "Deployment ct-router deleted" in m for m in pool_events(pool, "ChildDeleted")
            ),
            timeout=30,
            what="the ChildDeleted Event of the Deployment",
            interval=POLL,
        )
        routers = workload(pool, "StatefulSet")
        assert routers.spec.persistent_volume_claim_retention_policy.when_scaled == "Retain"
        assert routers.spec.persistent_volume_claim_retention_policy.when_deleted == "Retain"
        found = claims(pool)
        assert sorted(found) == ["spool-ct-router-0", "spool-ct-router-1"]
        for claim in found.values():
            assert claim.status.phase == "Bound"
            assert claim.spec.storage_class_name == STORAGE_CLASS
            assert claim.spec.resources.requests["storage"] == "1Mi"
        [container] = routers.spec.template.spec.containers
        command = container.command
        assert command[command.index("--spool-dir") + 1] == SPOOL_DIRECTORY
        assert command[command.index("--spool-max-bytes") + 1] == str(spool_max_bytes("1Mi"))
        assert command[command.index("--spool-when") + 1] == "GatewayUnavailable"
        assert command[command.index("--spool-retention") + 1] == "600"
        # Each router mounts its own volume, which the provisioner's folder backs.
        router_pod = cluster.kubelet.pod(cluster_namespace, "ct-router-0")
        assert router_pod is not None
        assert (
            cluster.kubelet.volume(router_pod, "spool")
            .resolve()
            .is_relative_to(cluster.kubelet.provisioner.folder)
        )

        # The routers report their spools: the pool's status sums them.
        wait_until(
            lambda: (pool.status().get("spool") or {}).get("routers") == 2,
            timeout=60,
            what="status.spool from both routers' reports",
            interval=POLL,
        )
        assert pool.status()["spool"]["instances"] == 0
        assert condition(pool, "SpoolBacklog")["reason"] == "SpoolEmpty"
        spool_backlog_from_a_gateway_down(cluster, pool, tmp_path)
        pool.wait_settled(2, 2, timeout=60)

        # One router fewer: its pod goes, its claim (and what it may hold) stays.
        pool.patch_spec({"router": {"replicas": 1}})
        wait_until(
            lambda: (
                ready(workload(pool, "StatefulSet"), 1)
                and cluster.kubelet.pod(cluster_namespace, "ct-router-1") is not None
                and cluster.kubelet.pod(cluster_namespace, "ct-router-1").done
            ),
            timeout=150,
            what="router 1 gone",
            interval=POLL,
        )
        assert sorted(claims(pool)) == ["spool-ct-router-0", "spool-ct-router-1"]
        # ... and the pool's status names it, as no router reports what it holds.
        wait_until(
            lambda: pool.status()["spool"].get("idleClaims") == ["spool-ct-router-1"],
            timeout=30,
            what="status.spool.idleClaims",
            interval=POLL,
        )

        # Spool off: a Deployment again, and only then the StatefulSet goes.
        pool.patch_spec({"router": {"spool": None, "replicas": 2}})

        def back() -> bool:
            deployment = workload(pool, "Deployment")
            routers = workload(pool, "StatefulSet")
            if routers is None:
                assert ready(deployment, 2), "the StatefulSet went before the Deployment was Ready"
            return routers is None and ready(deployment, 2)

        wait_until(back, timeout=150, what="routers back on a Deployment", interval=POLL)
        assert workload(pool, "Deployment").metadata.uid != deployment_uid
        # Only the kept claims are left to show.
        wait_until(
            lambda: (
                pool.status().get("spool")
                == {"idleClaims": ["spool-ct-router-0", "spool-ct-router-1"]}
            ),
            timeout=30,
            what="status.spool: the idle claims only",
            interval=POLL,
        )
        assert not condition(pool, "SpoolBacklog")
        try:
            pool.core.read_namespaced_service("ct-router-pods", cluster_namespace)
        except ApiException as exc:
            assert exc.status == 404
        else:
            raise AssertionError("the routers' headless Service outlived the StatefulSet")
        # The claims outlive the StatefulSet: a spool coming back finds them.
        assert sorted(claims(pool)) == ["spool-ct-router-0", "spool-ct-router-1"]
        pool.wait_settled(2, 2, timeout=60)


def not_ready(pool: RealPool) -> set[str]:
    """The gateways the operator marks not Ready beside the map (``readiness.json``)."""
    found = pool.core.read_namespaced_config_map(f"{pool.name}-map", pool.namespace)
    text = (found.data or {}).get(READINESS_KEY)
    return set() if text is None else set(parse_readiness(text).not_ready)


def spool_backlog_from_a_gateway_down(cluster: Cluster, pool: RealPool, tmp_path: Path) -> None:
    """A gateway down: its study is acknowledged from a router's spool, which fills past
    90%, so SpoolBacklog turns True (SpoolFilling) with a Warning Event; the gateway back,
    the spool is forwarded to it and the condition clears."""
    study = generate_study(tmp_path, study_index=0, instances=7, rows=248, columns=240)
    bucket_map = parse_map(pool.map_text())
    owner = bucket_map.gateway_for(study_bucket(study.study_uid, bucket_map.buckets)).name
    cluster.kubelet.hold(pool.namespace, owner)
    # The operator marks the held pod not Ready beside the map, at the same version.
    wait_until(
        lambda: owner in not_ready(pool),
        timeout=30,
        what=f"readiness.json marks {owner} not Ready",
        interval=POLL,
    )
    assert parse_map(pool.map_text()).version == bucket_map.version
    wait_until(
        lambda: pool.status().get("gatewaysNotReady") == [owner],
        timeout=30,
        what="status.gatewaysNotReady names it",
        interval=POLL,
    )
    traffic = Traffic([pool.router_service()], [study], seed=0, senders=1, chunk=7)
    traffic.start()
    outcome = traffic.finish(drain=True)
    assert not outcome.failed and not outcome.unanswered, outcome.failed
    assert len(outcome.acknowledged) == 7, "not every instance acknowledged from the spool"
    wait_until(
        lambda: condition(pool, "SpoolBacklog").get("status") == "True",
        timeout=30,
        what="SpoolBacklog True",
        interval=POLL,
    )
    backlog = condition(pool, "SpoolBacklog")
    assert backlog["reason"] == "SpoolFilling", backlog
    status = pool.status()["spool"]
    assert status["instances"] == 7 and status["bytes"] > 0 and status["oldestSince"], status
    wait_until(
        lambda: bool(pool_events(pool, "SpoolBacklog")),
        timeout=30,
        what="the SpoolBacklog Warning Event",
        interval=POLL,
    )
    assert not pool.stored().get(owner), "the gateway got instances while down"
    cluster.kubelet.release(pool.namespace, owner)
    wait_until(
        lambda: not_ready(pool) == set(),
        timeout=60,
        what=f"readiness.json marks {owner} Ready again",
        interval=POLL,
    )
    wait_until(
        lambda: "gatewaysNotReady" not in pool.status(),
        timeout=30,
        what="status.gatewaysNotReady gone",
        interval=POLL,
    )
    wait_until(
        lambda: condition(pool, "SpoolBacklog").get("reason") == "SpoolEmpty",
        timeout=90,
        what="the spool forwarded",
        interval=POLL,
    )
    assert pool.status()["spool"]["instances"] == 0
    assert set(pool.stored()[owner]) == set(study.sop_instance_uids)


def test_a_pod_volume_of_a_claim_outlives_the_pod(cluster: Cluster, cluster_namespace: str) -> None:
    """The stand-ins' volumes: a claim of the test class is bound, its pod scheduled only
    then, and what the pod wrote is there for the next pod on that claim."""
    core: Any = kubernetes.client.CoreV1Api(cluster.api())
    claim = {
        "metadata": {"name": "data"},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "storageClassName": STORAGE_CLASS,
            "resources": {"requests": {"storage": "1Mi"}},
        },
    }
    core.create_namespaced_persistent_volume_claim(cluster_namespace, claim)

    def pod(name: str, script: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name},
            "spec": {
                "restartPolicy": "Never",
                "containers": [
                    {
                        "name": "main",
                        "image": "registry.example.org/test/busybox:1",
                        "command": ["sh", "-c", script],
                        "volumeMounts": [{"name": "data", "mountPath": "/var/lib/data"}],
                    }
                ],
                "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
            },
        }

    def phase(name: str) -> str:
        return str(core.read_namespaced_pod(name, cluster_namespace).status.phase)

    core.create_namespaced_pod(cluster_namespace, pod("writer", "echo kept > /var/lib/data/file"))
    wait_until(lambda: phase("writer") == "Succeeded", timeout=60, what="writer done")
    core.delete_namespaced_pod("writer", cluster_namespace)
    core.create_namespaced_pod(
        cluster_namespace, pod("reader", 'test "$(cat /var/lib/data/file)" = kept')
    )
    wait_until(lambda: phase("reader") in ("Succeeded", "Failed"), timeout=60, what="reader done")
    assert phase("reader") == "Succeeded"
    bound = core.read_namespaced_persistent_volume_claim("data", cluster_namespace)
    assert bound.status.phase == "Bound"
