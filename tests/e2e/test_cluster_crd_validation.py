"""The real API server refuses, at ``kubectl apply``, every spec the operator would refuse.

Each pool of ``support.specfaults.FAULTS`` has one fault; a server-side dry
run (``dryRun=All``: validated, defaulted and admitted, never stored) with
strict field validation, as ``kubectl apply`` sends it, must answer 422 (400
for an unknown field) with the faulty field in the message. No operator
runs: the CRD alone must refuse them, so a user learns of the mistake at
once rather than from a SpecRejected condition later.
"""

from __future__ import annotations

import json
from typing import Any

import kubernetes.client
import pytest
from kubernetes.client.exceptions import ApiException

from gatewaypool.contract import API_GROUP, API_VERSION, PLURAL
from support.realcluster import Cluster
from support.specfaults import BASE_NAME, FAULTS, Fault


def dry_run_create(cluster: Cluster, body: dict[str, Any]) -> ApiException | None:
    """None if the API server would create `body`, else its refusal."""
    custom = kubernetes.client.CustomObjectsApi(cluster.api())
    try:
        custom.create_namespaced_custom_object(
            API_GROUP,
            API_VERSION,
            body["metadata"]["namespace"],
            PLURAL,
            body,
            dry_run="All",
            field_validation="Strict",
        )
    except ApiException as exc:
        return exc
    return None


def causes(refusal: ApiException) -> str:
    """The refusal's message and the fields it names, as one text."""
    status = json.loads(refusal.body)
    details = status.get("details") or {}
    names = [f"{c.get('field', '')}: {c.get('message', '')}" for c in details.get("causes", [])]
    return "\n".join([status.get("message", ""), *names])


def test_the_valid_base_pool_is_accepted(cluster: Cluster, cluster_namespace: str) -> None:
    # The table's faults are single: without them the pool is accepted.
    accepted = Fault("base", "", lambda spec: None).pool(cluster_namespace)
    assert accepted["metadata"]["name"] == BASE_NAME
    assert dry_run_create(cluster, accepted) is None


@pytest.mark.parametrize("fault", FAULTS, ids=lambda f: f.id)
def test_the_api_server_refuses_what_the_operator_refuses(
    cluster: Cluster, cluster_namespace: str, fault: Fault
) -> None:
    refusal = dry_run_create(cluster, fault.pool(cluster_namespace))
    assert refusal is not None, f"{fault.id}: accepted by the API server"
    text = causes(refusal)
    assert refusal.status == fault.status, text
    assert fault.field in text, text
