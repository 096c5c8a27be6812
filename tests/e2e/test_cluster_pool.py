"""A pool on the real control plane, installed and used as a hospital would.

The chart is rendered by the real Helm engine and applied server-side; the
operator runs as the chart's Deployment with its ServiceAccount's token; the
real StatefulSet, Deployment and EndpointSlice controllers make the pods and
their addresses; the kubelet stand-in runs them as processes. Studies go to
the router Service's ClusterIP, as a modality's would.
"""

from __future__ import annotations

from pathlib import Path

import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from gatewaypool.contract import API_GROUP, API_VERSION, PLURAL
from gatewaypool_local.peers.dcmtk import storescu
from gatewaypool_local.peers.process import wait_until
from gatewaypool_local.synth import generate_study
from support.realcluster import Cluster
from support.realpool import gateway_spec, operated_pool, pool_body


def test_the_crd_refuses_autoscaling_without_targets(
    cluster: Cluster, cluster_namespace: str
) -> None:
    """The real API server validates custom resources against the CRD."""
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


def test_a_pool_runs_and_routes_on_the_real_control_plane(
    cluster: Cluster, cluster_namespace: str, tmp_path: Path
) -> None:
    with operated_pool(
        cluster, cluster_namespace, {"replicas": 2, "gateway": gateway_spec()}
    ) as pool:
        pool.wait_settled(2, 2, timeout=120)
        target = pool.router_service()
        studies = [
            generate_study(tmp_path / "data", study_index=i, instances=4, rows=8, columns=8)
            for i in range(6)
        ]
        for study in studies:
            result = storescu(target.host, target.port, study.files, called_ae=target.ae_title)
            assert result.returncode == 0, result.stdout + result.stderr
        sent = {uid for study in studies for uid in study.sop_instance_uids}
        wait_until(
            lambda: sent <= {sop for held in pool.stored().values() for sop in held},
            timeout=30,
            what="every instance stored",
        )
        holders = pool.gateways_of_studies()
    for study in studies:
        assert len(holders[study.study_uid]) == 1, (
            f"study {study.study_uid} split over {holders[study.study_uid]}"
        )
