"""How the real API server takes the router Service of every spec the operator accepts.

Every accepted combination of ``spec.router.service`` renders a Service the
real API server creates (a server-side dry run, in this dual-stack cluster),
and what the spec check refuses includes every one it would not.

A refused child, values the server drops and adding storage are in
``test_cluster_writes.py``, with the operator's other writes.
"""

from __future__ import annotations

from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from gatewaypool_operator.children.desired import build_children
from gatewaypool_operator.spec.fields import SpecError
from gatewaypool_operator.spec.parse import parse_spec
from support.realcluster import Cluster
from support.servicecombos import combinations


def test_every_accepted_router_service_is_created_by_the_real_api_server(
    cluster: Cluster, cluster_namespace: str
) -> None:
    core: Any = kubernetes.client.CoreV1Api(cluster.api())
    created = refused_by_spec = 0
    for router in combinations():
        try:
            spec = parse_spec(
                {"gateway": {"image": "gw:1"}, "router": router}, default_router_image="gp:1"
            )
        except SpecError:
            refused_by_spec += 1
            continue
        [service] = [
            child
            for child in build_children(
                name="ct", namespace=cluster_namespace, spec=spec, map_data=None, gateway_replicas=1
            )
            if child["kind"] == "Service" and child["metadata"]["name"] == "ct-router"
        ]
        try:
            core.create_namespaced_service(cluster_namespace, service, dry_run="All")
        except ApiException as exc:
            raise AssertionError(f"{router}: {exc.body}") from None
        created += 1
    assert created > 100 and refused_by_spec > 500, (created, refused_by_spec)
